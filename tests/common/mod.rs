//! Shared set-up for the docs/testing.md property tests: one embedded interpreter per test binary
//! with `quantbridge` importable from this checkout (the native module is this crate, the
//! Python package is `python/quantbridge`), plus the ctypes fake producers of
//! `tests/python`.
#![allow(dead_code)]

use std::ffi::CString;
use std::sync::Once;

use pyo3::prelude::*;
use pyo3::types::PyDict;

static INIT: Once = Once::new();

/// Run `f` with the interpreter attached and quantbridge imported.
pub fn with_python<R>(f: impl FnOnce(Python<'_>) -> R) -> R {
    // Set up before attaching: a thread waiting on the Once while holding the GIL would
    // deadlock against the thread running the set-up (imports release and retake the GIL).
    INIT.call_once(|| Python::attach(|py| setup(py).expect("embedded interpreter set-up")));
    Python::attach(f)
}

fn setup(py: Python<'_>) -> PyResult<()> {
    let root = env!("CARGO_MANIFEST_DIR");
    let sys = py.import("sys")?;
    let path = sys.getattr("path")?;
    path.call_method1("insert", (0, format!("{root}/python")))?;
    path.call_method1("insert", (0, format!("{root}/tests/python")))?;
    let native = quantbridge::native_module(py);
    sys.getattr("modules")?.set_item("quantbridge._native", &native)?;
    py.import("quantbridge")?.setattr("_native", native)?;
    // Degradation warnings are timing-dependent; the tests that want them turn them on.
    run(py, "import quantbridge as qb; qb.configure_metrics(degradation_fraction=0.0)", None)?;
    Ok(())
}

/// Run Python statements in a namespace that has `qb`, `np`, `pa` and the fakes.
pub fn run<'py>(py: Python<'py>, code: &str, ns: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyDict>> {
    let ns = match ns {
        Some(ns) => ns.clone(),
        None => namespace(py)?,
    };
    let code = CString::new(code).expect("no NUL in test code");
    py.run(&code, Some(&ns), None)?;
    Ok(ns)
}

/// A namespace with the usual imports.
pub fn namespace(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let ns = PyDict::new(py);
    let prelude = c"import gc, sys, threading, warnings\nimport numpy as np\nimport pyarrow as pa\nimport quantbridge as qb\nfrom fake_dlpack import FakeProducer\nfrom fake_arrow import CountedArray\n";
    py.run(prelude, Some(&ns), None)?;
    Ok(ns)
}

/// Evaluate one Python expression in `ns`.
pub fn eval<'py>(py: Python<'py>, ns: &Bound<'py, PyDict>, expr: &str) -> PyResult<Bound<'py, PyAny>> {
    let code = CString::new(expr).expect("no NUL in test code");
    py.eval(&code, Some(ns), None)
}

/// Proptest cases: `PROPTEST_CASES` when set, else `default` (these tests cross into
/// Python, so their default is smaller than the engine's).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
