//! docs/testing.md, properties 1 and 5: the engine reads the producer's own memory.
//!
//! 1. For numpy arrays (through DLPack), whatever their layout and dtype, the address the
//!    guard hands the engine is the array's own data pointer, and no byte is copied.
//! 5. Arrow arrays (sliced, any float width) and Arrow table rows are read in place.

mod common;

use common::{cases, eval, run, with_python};
use proptest::prelude::*;
use pyo3::prelude::*;

const LAYOUTS: [&str; 6] = ["x", "x.T", "x[::2]", "x[:, ::-1]", "x[1:, 3:]", "np.broadcast_to(x[:1], x.shape)"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(24)))]

    #[test]
    fn numpy_inputs_are_read_in_place(
        rows in 2usize..24, cols in 4usize..160, layout in 0usize..LAYOUTS.len(),
        dtype in prop::sample::select(vec!["float32", "float16", "float64"]),
    ) {
        with_python(|py| {
            let ns = run(py, &format!(
                "x = np.random.default_rng({rows}).standard_normal(({rows}, {cols})).astype('{dtype}')\n\
                 v = {}\n\
                 qb.reset_metrics()\n\
                 kind, addr, nbytes = qb._native._borrow_info(v)\n\
                 q = qb.quantize(v, bits=4, group_size=32)\n\
                 from arrow_quant_v2 import ArrowQuantV2\n\
                 ArrowQuantV2().quantize_numpy(v, 'w')\n\
                 ArrowQuantV2().quantize_batch({{'w': v}})\n\
                 copied = qb.metrics()['bytes_copied']", LAYOUTS[layout]), None).unwrap();
            let kind: String = eval(py, &ns, "kind").unwrap().extract().unwrap();
            let addr: usize = eval(py, &ns, "addr").unwrap().extract().unwrap();
            let own: usize = eval(py, &ns, "v.__array_interface__['data'][0]").unwrap().extract().unwrap();
            let copied: u64 = eval(py, &ns, "copied").unwrap().extract().unwrap();
            prop_assert_eq!(kind, "dlpack");
            prop_assert_eq!(addr, own);
            prop_assert_eq!(copied, 0);
            Ok(())
        })?;
    }

    #[test]
    fn arrow_arrays_are_read_in_place(
        n in 1usize..4000, cut in 0usize..100,
        dtype in prop::sample::select(vec!["float16", "float32", "float64"]),
    ) {
        with_python(|py| {
            let offset = cut.min(n - 1);
            let ns = run(py, &format!(
                "a = pa.array(np.linspace(-2, 2, {n}).astype('{dtype}')).slice({offset})\n\
                 p = CountedArray(a)\n\
                 kind, addr, nbytes = qb._native._borrow_info(p)\n\
                 expected = a.buffers()[1].address + a.offset * np.dtype('{dtype}').itemsize\n\
                 qb.reset_metrics()\n\
                 t = pa.table({{'layer_name': ['a', 'b'], 'weights': pa.array([a.to_pylist(), a.to_pylist()[:1]], pa.list_(a.type))}})\n\
                 out = pa.table(qb.quantize_arrow(t, bits=8))\n\
                 copied = qb.metrics()['bytes_copied']\n\
                 gc.collect()"), None).unwrap();
            let kind: String = eval(py, &ns, "kind").unwrap().extract().unwrap();
            let addr: usize = eval(py, &ns, "addr").unwrap().extract().unwrap();
            let expected: usize = eval(py, &ns, "expected").unwrap().extract().unwrap();
            let released: usize = eval(py, &ns, "p.released").unwrap().extract().unwrap();
            let copied: u64 = eval(py, &ns, "copied").unwrap().extract().unwrap();
            prop_assert_eq!(kind, "arrow");
            prop_assert_eq!(addr, expected);
            prop_assert_eq!(released, 1);
            prop_assert_eq!(copied, 0);
            Ok(())
        })?;
    }
}
