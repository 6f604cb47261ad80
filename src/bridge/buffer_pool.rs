//! `quantbridge.configure_buffer_pool()`: the Python face of [`crate::buffer_pool`].

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::buffer_pool;

/// Set the cap on bytes of freed results kept for reuse (0 turns reuse off); setting it
/// also frees what is kept now. Returns `{"max_bytes", "kept_bytes"}` in force.
#[pyfunction]
#[pyo3(signature = (*, max_bytes=None))]
pub fn configure_buffer_pool(py: Python<'_>, max_bytes: Option<usize>) -> PyResult<Bound<'_, PyDict>> {
    let limit = match max_bytes {
        Some(b) => {
            buffer_pool::set_limit(b);
            b
        }
        None => buffer_pool::limit(),
    };
    let d = PyDict::new(py);
    d.set_item("max_bytes", limit)?;
    d.set_item("kept_bytes", buffer_pool::kept_bytes())?;
    Ok(d)
}
