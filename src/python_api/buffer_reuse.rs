//! `quantbridge.configure_buffer_pool()`: the cap on the result memory kept for reuse
//! ([`crate::foreign::storage::RESULT_POOL`]).

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::foreign::storage::RESULT_POOL;

/// Read or set the cap on memory of freed results kept for reuse.
///
/// A freed multi-MiB result (its last numpy / torch / Arrow reference gone) is kept and
/// handed to the next result of a close size, so that result does not fault in fresh
/// pages (docs/decisions.md). A buffer still exported is never reused.
///
/// Args:
///     max_bytes: the new cap (0 turns reuse off); setting it frees what is kept now.
///         None only reads the settings.
///
/// Returns:
///     dict: ``{"max_bytes", "kept_bytes"}`` in force.
#[pyfunction]
#[pyo3(signature = (*, max_bytes=None))]
pub fn configure_buffer_pool(py: Python<'_>, max_bytes: Option<usize>) -> PyResult<Bound<'_, PyDict>> {
    if let Some(b) = max_bytes {
        RESULT_POOL.set_limit(b);
    }
    let d = PyDict::new(py);
    d.set_item("max_bytes", RESULT_POOL.limit())?;
    d.set_item("kept_bytes", RESULT_POOL.kept_bytes())?;
    Ok(d)
}
