//! docs/testing.md, properties 3 and 7.
//!
//! 3. Bad input raises `ValidationError` (a `QuantizationError` and a `ValueError`) that
//!    names the layer, what was found, what was expected and the fix; a NaN/Inf error
//!    gives the flat row-major index of the first one.
//! 7. A failed call changes nothing: the input's bytes are unchanged, and a batch names
//!    EVERY failing layer with its reason.

mod common;

use common::{cases, eval, run, with_python};
use proptest::prelude::*;
use pyo3::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(32)))]

    #[test]
    fn first_non_finite_index_is_reported(
        rows in 1usize..20, cols in 1usize..70, hits in prop::collection::vec((0usize..1000, 0usize..3), 1..4),
        transpose in any::<bool>(),
    ) {
        with_python(|py| {
            let ns = common::namespace(py).unwrap();
            ns.set_item("hits", hits.clone()).unwrap();
            run(py, &format!(
                "x = np.random.default_rng({rows}).standard_normal(({rows}, {cols})).astype(np.float32)\n\
                 flat = x.reshape(-1)\n\
                 for pos, kind in hits:\n    flat[pos % flat.size] = [np.nan, np.inf, -np.inf][kind]\n\
                 v = x.T if {} else x\n\
                 snapshot = v.copy()\n\
                 expected = int(np.flatnonzero(~np.isfinite(v.reshape(-1)))[0])\n\
                 try:\n    qb.quantize(v, name='layer.w')\n    err = None\nexcept qb.ValidationError as e:\n    err = e\n\
                 unchanged = np.array_equal(snapshot, v, equal_nan=True)",
                if transpose { "True" } else { "False" }), Some(&ns)).unwrap();
            prop_assert!(eval(py, &ns, "err is not None and isinstance(err, ValueError)").unwrap().extract::<bool>().unwrap());
            let index: usize = eval(py, &ns, "err.index").unwrap().extract().unwrap();
            let expected: usize = eval(py, &ns, "expected").unwrap().extract().unwrap();
            prop_assert_eq!(index, expected);
            let msg: String = eval(py, &ns, "str(err)").unwrap().extract().unwrap();
            prop_assert!(msg.contains("layer 'layer.w'") && msg.contains(&format!("at index {expected}, flat row-major")) && msg.contains("contains NaN or Inf") && msg.contains("Fix:"), "{}", msg);
            prop_assert!(eval(py, &ns, "err.layer == 'layer.w' and bool(err.found) and bool(err.expected) and bool(err.fix)").unwrap().extract::<bool>().unwrap());
            prop_assert!(eval(py, &ns, "unchanged").unwrap().extract::<bool>().unwrap());
            Ok(())
        })?;
    }

    #[test]
    fn a_batch_names_every_failing_layer(bad in prop::collection::btree_set(0usize..12, 1..6), good in 0usize..6) {
        with_python(|py| {
            let ns = common::namespace(py).unwrap();
            ns.set_item("bad", bad.iter().copied().collect::<Vec<_>>()).unwrap();
            run(py, &format!(
                "kinds = [np.array([1.0, np.nan], np.float32), np.arange(4), np.array(1.0, np.float32), 'text']\n\
                 layers = {{f'good{{i}}': np.ones((4, 8), np.float32) for i in range({good})}}\n\
                 layers.update({{f'bad{{i}}': kinds[i % len(kinds)] for i in bad}})\n\
                 try:\n    qb.quantize_batch(layers)\n    err = None\nexcept qb.BatchQuantizationError as e:\n    err = e\n\
                 named = sorted(err.failures) if err else []\n\
                 in_message = all(f'bad{{i}}:' in str(err) for i in bad) if err else False\n\
                 from arrow_quant_v2 import ArrowQuantV2\n\
                 try:\n    ArrowQuantV2().quantize_batch(layers, 4)\n    compat_err = None\nexcept ValueError as e:\n    compat_err = e\n\
                 compat_named = sorted(compat_err.failures) if compat_err else []"), Some(&ns)).unwrap();
            let named: Vec<String> = eval(py, &ns, "named").unwrap().extract().unwrap();
            let mut expected: Vec<String> = bad.iter().map(|i| format!("bad{i}")).collect();
            expected.sort();
            prop_assert_eq!(named, expected.clone());
            prop_assert!(eval(py, &ns, "in_message").unwrap().extract::<bool>().unwrap());
            // The original system's call: the same failures, in the ValueError its users catch.
            let compat_named: Vec<String> = eval(py, &ns, "compat_named").unwrap().extract().unwrap();
            prop_assert_eq!(compat_named, expected);
            Ok(())
        })?;
    }
}

#[test]
fn malformed_arrow_gets_clear_errors_and_one_release() {
    with_python(|py| {
        let ns = run(
            py,
            "a = pa.array(np.arange(100, dtype=np.float32))\n\
             cases = [dict(n_buffers=1), dict(n_buffers=4), dict(n_children=1), dict(length=-5), dict(offset=-1),\n\
                      dict(null_buffer_index=1), dict(null_count=3), dict(length=10**15)]\n\
             outcomes = []\n\
             for kw in cases:\n    p = CountedArray(a, **kw)\n    try:\n        qb.quantize(p)\n        outcomes.append(('no error', kw, p.released))\n    except qb.ValidationError as e:\n        gc.collect()\n        outcomes.append(('ok' if 'Arrow' in str(e) or 'allocated' in str(e) else str(e), kw, p.released))\n\
             bad = [o for o in outcomes if o[0] != 'ok' or o[2] != 1]",
            None,
        )
        .unwrap();
        let bad: Vec<(String, Bound<'_, PyAny>, usize)> = eval(py, &ns, "bad").unwrap().extract().unwrap();
        assert!(bad.is_empty(), "{bad:?}");
    });
}
