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
quantizer = qb.Quantizer(bit_width=8 if bits != 8 else 2, group_size=group_size, symmetric=symmetric)
results = {
    'quantize': parts(qb.quantize(x, **spec)),
    'quantize(arrow)': parts(qb.quantize(CountedArray(pa.array(x.ravel())), **spec)) if x.ndim == 1 else None,
    'quantize_batch': parts(qb.quantize_batch({'w': x}, **spec)['w']),
    'Quantizer.quantize_numpy': parts(quantizer.quantize_numpy(x, bit_width=bits)),
    'Quantizer.quantize_batch': parts(quantizer.quantize_batch({'w': x}, bit_width=bits)['w']),
    'Quantizer.quantize_batch_with_progress': parts(quantizer.quantize_batch_with_progress({'w': x}, lambda n, f: None, bit_width=bits)['w']),
}
with warnings.catch_warnings():
    warnings.simplefilter('ignore', qb.PerformanceWarning)
    results['quantize(list)'] = parts(qb.quantize(x.tolist(), **spec))
    legacy = quantizer.quantize({'w': x.tolist()}, bit_width=bits)['w']
results['Quantizer.quantize'] = (legacy['quantized_data'], np.array(legacy['scales'], np.float32).tobytes(),
                                 None if symmetric else np.array(legacy['zero_points'], np.uint8).tobytes())
table = pa.table({'layer_name': ['w'], 'weights': pa.array([x.ravel()], pa.list_(pa.float32())),
                  'shape': pa.array([list(x.shape)], pa.list_(pa.int64()))})
for api, out in [('quantize_arrow', qb.quantize_arrow(table, **spec)),
                 ('Quantizer.quantize_arrow_batch', quantizer.quantize_arrow_batch(table.to_batches()[0], bit_width=bits))]:
    row = pa.table(out).to_pylist()[0]
    results[api] = (row['codes'], np.array(row['scales'], np.float32).tobytes(),
                    None if row['zero_points'] is None else bytes(row['zero_points']))
reference = results['quantize']
mismatches = [api for api, r in results.items() if r is not None and r != reference]
"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

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
