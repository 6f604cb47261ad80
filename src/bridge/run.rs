//! Running engine work with the GIL released and panics contained.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;

use crate::bridge::errors::LayerError;
use crate::error::{Error, Result};

/// Run `work` detached from the interpreter. A panic becomes a `QuantizationError` instead
/// of unwinding into Python; an engine error becomes the right exception for `layer`.
pub fn detached<T, F>(py: Python<'_>, layer: &str, work: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    let outcome = py.detach(|| catch_unwind(AssertUnwindSafe(work)));
    let result = outcome.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Internal(format!("a Rust panic was contained: {what}")))
    });
    result.map_err(|e| LayerError::new(layer, e).into_pyerr(py))
}
