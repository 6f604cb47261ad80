//! docs/testing.md, properties 8–11: lifetime, refcount, threads, cleanup.
//!
//! 8. The guard keeps the producer alive while Rust reads, and lets it go after: a
//!    producer the caller holds no reference to is freed once the call returns.
//!    (A view outliving its guard is a compile error: `BorrowedTensor::view` borrows it.)
//! 9. The producer's refcount returns to its value after every call, success or error.
//! 10. Threads calling concurrently on shared inputs get identical results.
//! 11. Every DLPack deleter and every Arrow release callback runs exactly once.

mod common;

use common::{cases, eval, run, with_python};
use proptest::prelude::*;
use pyo3::prelude::*;

/// Inputs (as Python expressions over `x`) and whether quantizing them fails.
const INPUTS: [(&str, bool); 8] = [
    ("x", false),
    ("x.T", false),
    ("pa.array(x.ravel())", false),
    ("CountedArray(pa.array(x.ravel()))", false),
    ("FakeProducer(x)", false),
    ("np.where(x > 0, np.nan, x)", true),
    ("x.astype(np.int32)", true),
    ("FakeProducer(x, shape=[-1, 2])", true),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(32)))]

    #[test]
    fn refcounts_and_cleanup_are_exact(input in 0usize..INPUTS.len(), rows in 1usize..12, cols in 1usize..80) {
        let (expr, fails) = INPUTS[input];
        with_python(|py| {
            let ns = run(py, &format!(
                "x = np.random.default_rng({rows}).standard_normal(({rows}, {cols})).astype(np.float32) + 0.5\n\
                 obj = {expr}\n\
                 before = sys.getrefcount(obj)\n\
                 failed = False\n\
                 try:\n    q = qb.quantize(obj, bits=4, group_size=16)\nexcept qb.QuantizationError:\n    failed = True\n\
                 after = sys.getrefcount(obj)\n\
                 gc.collect()\n\
                 cleanups = getattr(obj, 'deleted', getattr(obj, 'released', None))"), None).unwrap();
            let failed: bool = eval(py, &ns, "failed").unwrap().extract().unwrap();
            let before: isize = eval(py, &ns, "before").unwrap().extract().unwrap();
            let after: isize = eval(py, &ns, "after").unwrap().extract().unwrap();
            let cleanups: Option<usize> = eval(py, &ns, "cleanups").unwrap().extract().unwrap();
            prop_assert_eq!(failed, fails);
            prop_assert_eq!(before, after, "refcount of {} changed", expr);
            if let Some(n) = cleanups {
                prop_assert_eq!(n, 1, "{}: deleter/release ran {} times", expr, n);
            }
            Ok(())
        })?;
    }
}

#[test]
fn producer_lives_through_the_call_and_is_freed_after() {
    with_python(|py| {
        let ns = run(
            py,
            "import weakref\n\
             p = FakeProducer(np.arange(64, dtype=np.float32).reshape(4, 16))\n\
             ref = weakref.ref(p)\n\
             deletes = p._deletes\n\
             q = qb.quantize(p, bits=8, group_size=None)\n\
             del p\n\
             gc.collect()\n\
             alive = ref() is not None\n\
             restored = np.from_dlpack(q.dequantize())",
            None,
        )
        .unwrap();
        assert!(!eval(py, &ns, "alive").unwrap().extract::<bool>().unwrap());
        assert_eq!(eval(py, &ns, "deletes[0]").unwrap().extract::<usize>().unwrap(), 1);
        let close: bool =
            eval(py, &ns, "bool(np.abs(restored - np.arange(64).reshape(4, 16)).max() <= 0.5 * 63 / 255 + 1e-6)")
                .unwrap()
                .extract()
                .unwrap();
        assert!(close);
    });
}

#[test]
fn threads_get_identical_results() {
    with_python(|py| {
        let ns = run(
            py,
            "x = np.random.default_rng(7).standard_normal((64, 512)).astype(np.float32)\n\
             t = pa.array(x.ravel())\n\
             expected = qb.quantize(x).codes.tobytes()\n\
             expected_flat = qb.quantize(t).codes.tobytes()\n\
             bad = []\n\
             barrier = threading.Barrier(8)\n\
             def work(i):\n    barrier.wait()\n    for _ in range(40):\n        src = x if i % 2 else t\n        got = qb.quantize(src).codes.tobytes()\n        if got != (expected if i % 2 else expected_flat):\n            bad.append(i)\n\
             threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]\n\
             [th.start() for th in threads]\n\
             [th.join() for th in threads]",
            None,
        )
        .unwrap();
        let bad: Vec<usize> = eval(py, &ns, "bad").unwrap().extract().unwrap();
        assert!(bad.is_empty(), "threads {bad:?} saw different codes");
    });
}

#[test]
fn dropped_exports_and_batches_release_everything() {
    with_python(|py| {
        let ns = run(
            py,
            "gc.collect()\n\
             live = qb._native._live_exports()\n\
             producers = [FakeProducer(np.ones((2, 8), np.float32)) for _ in range(5)]\n\
             arrows = [CountedArray(pa.array(np.ones(16, np.float32))) for _ in range(5)]\n\
             layers = {f'p{i}': p for i, p in enumerate(producers)}\n\
             layers.update({f'a{i}': a for i, a in enumerate(arrows)})\n\
             layers['bad'] = FakeProducer(np.ones((2, 8), np.float32), dtype=(0, 32, 1))\n\
             with warnings.catch_warnings():\n    warnings.simplefilter('ignore')\n    r = qb.quantize_batch(layers, continue_on_error=True)\n\
             caps = [r['p0'].codes.__dlpack__(), r['p1'].scales.__dlpack__(max_version=(1, 0))]\n\
             del caps, r\n\
             gc.collect()\n\
             counts = [p.deleted for p in producers] + [a.released for a in arrows] + [layers['bad'].deleted]\n\
             leaked = qb._native._live_exports() - live",
            None,
        )
        .unwrap();
        let counts: Vec<usize> = eval(py, &ns, "counts").unwrap().extract().unwrap();
        assert!(counts.iter().all(|&c| c == 1), "deleter/release counts {counts:?}");
        assert_eq!(eval(py, &ns, "leaked").unwrap().extract::<isize>().unwrap(), 0);
    });
}
