//! Turning any accepted Python object into a [`BorrowedTensor`] (SPEC §1 producer order).

use pyo3::intern;
use pyo3::prelude::*;

use crate::bridge::borrowed::BorrowedTensor;
use crate::bridge::errors::validation;
use crate::bridge::ffi::from_python::dlpack::import_dlpack;

/// Borrow `obj`'s memory through the first protocol it speaks.
pub fn borrow_tensor(obj: &Bound<'_, PyAny>, layer: &str) -> PyResult<BorrowedTensor> {
    let py = obj.py();
    if obj.hasattr(intern!(py, "__dlpack__"))? {
        return import_dlpack(obj, layer);
    }
    Err(validation(
        py,
        layer,
        format!("an object of type {}", obj.get_type().name()?),
        "a tensor exposing __dlpack__ (numpy >= 1.22, torch, jax, cupy on host)",
        "pass a numpy array or a torch tensor, e.g. numpy.asarray(x, dtype=numpy.float32)",
    ))
}
