//! Running engine work with the GIL released and panics contained.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;

use crate::error::{Error, Result};
use crate::python_api::errors::to_pyerr;

/// Run `work` detached from the interpreter. A panic becomes a `QuantizationError` instead
/// of unwinding into Python; an engine error becomes the right exception for `layer`.
pub fn detached<T, F>(py: Python<'_>, layer: Option<&str>, work: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    let outcome = py.detach(|| contain(work));
    outcome.map_err(|e| to_pyerr(py, e.into(), layer))
}

/// Run `work`, turning a panic into an [`Error::Internal`].
pub fn contain<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Internal(format!("a Rust panic was contained: {what}")))
    })
}
