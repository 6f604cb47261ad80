//! docs/testing.md, property 4: every API gives bit-identical codes, scales and zero points for
//! the same tensor and spec — and they equal the pure Rust engine's.

mod common;

use common::{cases, eval, run, with_python};
use proptest::prelude::*;
use pyo3::prelude::*;
use quantbridge::quant::{quantize, ElemSlice, QuantSpec, TensorView};

/// Python that quantizes `x` through every API and collects (codes, scales, zero points)
/// as bytes per API.
const ALL_APIS: &str = r#"
spec = dict(bits=bits, group_size=group_size, symmetric=symmetric, scale_dtype='float32')
def parts(q):
    return (q.codes.tobytes(), q.scales.tobytes(), None if q.zero_points is None else q.zero_points.tobytes())
results = {
    'quantize': parts(qb.quantize(x, **spec)),
    'quantize(arrow)': parts(qb.quantize(CountedArray(pa.array(x.ravel())), **spec)) if x.ndim == 1 else None,
    'quantize_batch': parts(qb.quantize_batch({'w': x}, **spec)['w']),
}
with warnings.catch_warnings():
    warnings.simplefilter('ignore', qb.PerformanceWarning)
    results['quantize(list)'] = parts(qb.quantize(x.tolist(), **spec))
table = pa.table({'layer_name': ['w'], 'weights': pa.array([x.ravel()], pa.list_(pa.float32())),
                  'shape': pa.array([list(x.shape)], pa.list_(pa.int64()))})
for api, out in [('quantize_arrow', qb.quantize_arrow(table, **spec)),
                 ('quantize_arrow_batch', qb.quantize_arrow_batch(table.to_batches()[0], **spec))]:
    row = pa.table(out).to_pylist()[0]
    results[api] = (row['codes'], np.array(row['scales'], np.float32).tobytes(),
                    None if row['zero_points'] is None else bytes(row['zero_points']))
reference = results['quantize']
mismatches = [api for api, r in results.items() if r is not None and r != reference]
"#;

/// The original system's calls (docs/compat.md), as its users write them: each must give
/// the engine's per-tensor, unpacked result (collected as bytes per API).
const COMPAT_APIS: &str = r#"
from arrow_quant_v2 import ArrowQuantV2
aq = ArrowQuantV2(mode='diffusion')
def legacy(r):
    return (bytes(r['quantized_data']), np.array(r['scales'], np.float32).tobytes(), np.array(r['zero_points'], np.uint8).tobytes())
def arrow_row(out):
    row = pa.table(out).to_pylist()[0] if not isinstance(out, pa.RecordBatch) else out.to_pylist()[0]
    return (row['quantized_data'], np.array(row['scales'], np.float32).tobytes(), np.array(row['zero_points'], np.uint8).tobytes())
def numpy_dict(r):
    return (r['quantized_data'].tobytes(), r['scales'].tobytes(), r['zero_points'].astype(np.uint8).tobytes())
q = qb.quantize(x, bits=bits, granularity='tensor', pack=False)
reference = (q.codes.tobytes(), q.scales.tobytes(), q.zero_points.tobytes())
table = pa.table({'layer_name': ['w'], 'weights': pa.array([x.ravel()], pa.list_(pa.float32())),
                  'shape': pa.array([list(x.shape)], pa.list_(pa.int64()))})
results = {
    'quantize_batch': legacy(aq.quantize_batch({'w': x}, bits)['w']),
    'quantize_batch(continue_on_error)': legacy(aq.quantize_batch({'w': x}, bits, continue_on_error=True)['w']),
    'quantize_batch_with_progress': legacy(aq.quantize_batch_with_progress({'w': x}, bits, lambda n, f: None)['w']),
    'quantize_numpy': numpy_dict(aq.quantize_numpy(x, 'w', bit_width=bits)),
    'quantize_numpy_2d': numpy_dict(aq.quantize_numpy_2d(x, 'w', bits)) if x.ndim == 2 else None,
    'quantize_arrow': arrow_row(aq.quantize_arrow(table, bits)),
    'quantize_arrow_batch': arrow_row(aq.quantize_arrow_batch(table.to_batches()[0], bit_width=bits)),
    'quantize_batch_arrow': arrow_row(aq.quantize_batch_arrow(table, bits, None)),
}
with warnings.catch_warnings():
    warnings.simplefilter('ignore', qb.PerformanceWarning)
    results['quantize(list)'] = legacy(aq.quantize({'w': x.tolist()}, bit_width=bits)['w'])
mismatches = [api for api, r in results.items() if r is not None and r != reference]
"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn the_original_systems_calls_give_the_engines_per_tensor_result(
        shape in prop::collection::vec(1usize..40, 1..3),
        bits in prop::sample::select(vec![2u8, 4, 8]),
        seed in 0u64..1000,
    ) {
        with_python(|py| {
            let ns = common::namespace(py).unwrap();
            ns.set_item("bits", bits).unwrap();
            ns.set_item("shape", shape.clone()).unwrap();
            run(py, &format!("x = np.random.default_rng({seed}).standard_normal(shape).astype(np.float32) * 3"), Some(&ns)).unwrap();
            run(py, COMPAT_APIS, Some(&ns)).unwrap();
            let mismatches: Vec<String> = eval(py, &ns, "mismatches").unwrap().extract().unwrap();
            prop_assert!(mismatches.is_empty(), "compat calls differing from quantize(granularity='tensor', pack=False): {:?}", mismatches);

            // ... which is the pure Rust engine's.
            let values: Vec<f32> = eval(py, &ns, "x.ravel().tolist()").unwrap().extract().unwrap();
            let view = TensorView::contiguous(ElemSlice::F32(&values), shape.clone()).unwrap();
            let spec = QuantSpec::from_options(bits as i64, None, false, "tensor", "float32", false, false).unwrap();
            let q = quantize(&view, &spec).unwrap();
            let codes: Vec<u8> = eval(py, &ns, "reference[0]").unwrap().extract().unwrap();
            prop_assert_eq!(&q.codes, &codes);
            let zero_points: Vec<u8> = eval(py, &ns, "reference[2]").unwrap().extract().unwrap();
            prop_assert_eq!(q.zero_points.as_deref(), Some(&zero_points[..]));
            Ok(())
        })?;
    }

    #[test]
    fn every_api_is_bit_identical(
        shape in prop::collection::vec(1usize..40, 1..3),
        bits in prop::sample::select(vec![2u8, 4, 8]),
        symmetric in any::<bool>(),
        group in prop::option::of(1i64..64),
        seed in 0u64..1000,
    ) {
        with_python(|py| {
            let ns = common::namespace(py).unwrap();
            ns.set_item("bits", bits).unwrap();
            ns.set_item("symmetric", symmetric).unwrap();
            ns.set_item("group_size", group).unwrap();
            ns.set_item("shape", shape.clone()).unwrap();
            run(py, &format!("x = np.random.default_rng({seed}).standard_normal(shape).astype(np.float32) * 3"), Some(&ns)).unwrap();
            run(py, ALL_APIS, Some(&ns)).unwrap();
            let mismatches: Vec<String> = eval(py, &ns, "mismatches").unwrap().extract().unwrap();
            prop_assert!(mismatches.is_empty(), "APIs differing from quantize(): {:?}", mismatches);

            // The pure Rust engine on the same values gives the same codes and scales.
            let values: Vec<f32> = eval(py, &ns, "x.ravel().tolist()").unwrap().extract().unwrap();
            let view = TensorView::contiguous(ElemSlice::F32(&values), shape.clone()).unwrap();
            let spec = QuantSpec::from_options(bits as i64, group, symmetric, "group", "float32", true, false).unwrap();
            let q = quantize(&view, &spec).unwrap();
            let codes: Vec<u8> = eval(py, &ns, "reference[0]").unwrap().extract().unwrap();
            prop_assert_eq!(&q.codes, &codes);
            let scales: Vec<f32> = eval(py, &ns, "np.frombuffer(reference[1], np.float32).tolist()").unwrap().extract().unwrap();
            prop_assert_eq!((0..q.scales.len()).map(|i| q.scales.get(i)).collect::<Vec<_>>(), scales);
            Ok(())
        })?;
    }
}
