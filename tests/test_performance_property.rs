//! docs/testing.md, properties 12 and 13.
//!
//! 12. `metrics()` reports every call: calls per API, crossings, tensors, bytes in and out,
//!     and `bytes_copied` that is 0 on zero-copy paths and the copy's size on the legacy one.
//! 13. The `PerformanceWarning` for a call far below its API's moving average fires.

mod common;

use common::{cases, eval, run, with_python};
use proptest::prelude::*;
use pyo3::prelude::*;

/// Metrics are process-wide: the tests of this file must not interleave.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn metrics_count_every_call(sizes in prop::collection::vec(1usize..3000, 1..6), lists in 0usize..3) {
        let _serial = serial();
        with_python(|py| {
            let ns = common::namespace(py).unwrap();
            ns.set_item("sizes", sizes.clone()).unwrap();
            run(py, &format!(
                "qb.reset_metrics()\n\
                 arrays = [np.linspace(-1, 1, n, dtype=np.float32) for n in sizes]\n\
                 for a in arrays:\n    qb.quantize(a)\n\
                 qb.quantize_batch({{str(i): a for i, a in enumerate(arrays)}})\n\
                 with warnings.catch_warnings():\n    warnings.simplefilter('ignore')\n    for _ in range({lists}):\n        qb.quantize([0.5, -0.25, 1.0])\n\
                 m = qb.metrics()"), Some(&ns)).unwrap();
            let total: usize = sizes.iter().map(|n| n * 4).sum();
            let n = sizes.len();
            prop_assert_eq!(eval(py, &ns, "m['calls'].get('quantize')").unwrap().extract::<usize>().unwrap(), n + lists);
            prop_assert_eq!(eval(py, &ns, "m['calls'].get('quantize_batch')").unwrap().extract::<usize>().unwrap(), 1);
            prop_assert_eq!(eval(py, &ns, "m['boundary_crossings']").unwrap().extract::<usize>().unwrap(), n + 1 + lists);
            prop_assert_eq!(eval(py, &ns, "m['tensors']").unwrap().extract::<usize>().unwrap(), 2 * n + lists);
            prop_assert_eq!(eval(py, &ns, "m['input_bytes']").unwrap().extract::<usize>().unwrap(), 2 * total + lists * 24);
            prop_assert_eq!(eval(py, &ns, "m['bytes_copied']").unwrap().extract::<usize>().unwrap(), lists * 24);
            prop_assert!(eval(py, &ns, "m['output_bytes'] > 0 and m['quantize_seconds'] > 0 and m['throughput_gbps']['quantize']['last'] > 0").unwrap().extract::<bool>().unwrap());
            Ok(())
        })?;
    }
}

#[test]
fn degradation_warning_fires_for_a_slow_call() {
    let _serial = serial();
    with_python(|py| {
        let ns = run(
            py,
            "qb.reset_metrics()\n\
             old = qb.configure_metrics(degradation_fraction=0.5, min_bytes=1 << 20, min_samples=3)\n\
             fast = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)\n\
             for _ in range(5):\n    qb.quantize(fast)\n\
             slow = fast.tolist()\n\
             with warnings.catch_warnings(record=True) as caught:\n    warnings.simplefilter('always')\n    qb.quantize(slow)\n\
             messages = [str(w.message) for w in caught if issubclass(w.category, qb.PerformanceWarning)]\n\
             qb.configure_metrics(degradation_fraction=0.0)",
            None,
        )
        .unwrap();
        let messages: Vec<String> = eval(py, &ns, "messages").unwrap().extract().unwrap();
        assert!(messages.iter().any(|m| m.contains("moving average")), "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("copied")), "{messages:?}");
    });
}
