//! Turning any accepted Python object into a [`BorrowedTensor`] (SPEC §1 producer order):
//! DLPack, then Arrow (array, then stream), then the legacy copying path.

use pyo3::exceptions::PyBufferError;
use pyo3::intern;
use pyo3::prelude::*;

use crate::bridge::arrow_tensor::column_tensor;
use crate::bridge::borrowed::BorrowedTensor;
use crate::bridge::errors::validation;
use crate::bridge::ffi::from_python::{arrow, dlpack::import_dlpack, legacy};

/// A borrowed tensor and what it cost to get it.
pub struct Imported {
    /// The guard every engine read goes through.
    pub tensor: BorrowedTensor,
    /// Bytes copied to build it (0 on every zero-copy path).
    pub bytes_copied: usize,
    /// Why it had to be copied, when it was.
    pub copy_reason: Option<&'static str>,
}

impl Imported {
    fn borrowed(tensor: BorrowedTensor) -> Self {
        Imported { tensor, bytes_copied: 0, copy_reason: None }
    }
}

/// Borrow `obj`'s memory through the first protocol it speaks.
pub fn import_tensor(obj: &Bound<'_, PyAny>, layer: &str) -> PyResult<Imported> {
    let py = obj.py();
    if obj.hasattr(intern!(py, "__dlpack__"))? {
        return match import_dlpack(obj, layer) {
            Ok(t) => Ok(Imported::borrowed(t)),
            // numpy refuses DLPack for non-native byte order but still exports a buffer:
            // that is a copy the legacy path makes (and announces).
            Err(e) if is_buffer_refusal(py, &e) && legacy::accepts(obj) => copied(obj, layer),
            // pyarrow arrays speak DLPack only without nulls and for flat types: the Arrow
            // protocol then names the null row, or reads a fixed_size_list as 2-D.
            Err(e) if producer_refused(py, &e) && obj.hasattr(intern!(py, "__arrow_c_array__"))? => {
                import_arrow_array(obj, layer)
            }
            Err(e) => Err(e),
        };
    }
    if obj.hasattr(intern!(py, "__arrow_c_array__"))? {
        return import_arrow_array(obj, layer);
    }
    if obj.hasattr(intern!(py, "__arrow_c_stream__"))? {
        let (_field, chunks) = arrow::import_stream(obj, layer)?;
        let mut non_empty = chunks.into_iter().filter(|c| !c.data.is_empty());
        let (Some(col), None) = (non_empty.next(), non_empty.next()) else {
            return Err(validation(
                py,
                layer,
                "an Arrow stream that is not exactly one non-empty chunk".into(),
                "one contiguous array (a tensor is never assembled from pieces by copying)",
                "combine the chunks first (chunked_array.combine_chunks()), or pass each chunk",
            ));
        };
        return column_tensor(py, layer, &col, obj).map(Imported::borrowed);
    }
    if legacy::accepts(obj) {
        return copied(obj, layer);
    }
    Err(validation(
        py,
        layer,
        format!("an object of type {}", obj.get_type().name()?),
        "a tensor exposing __dlpack__ (numpy, torch, jax), an Arrow array (__arrow_c_array__), a buffer or a list of numbers",
        "pass a numpy array, a torch tensor or a pyarrow array, e.g. numpy.asarray(x, dtype=numpy.float32)",
    ))
}

fn import_arrow_array(obj: &Bound<'_, PyAny>, layer: &str) -> PyResult<Imported> {
    let col = arrow::import_array(obj, layer)?;
    column_tensor(obj.py(), layer, &col, obj).map(Imported::borrowed)
}

fn copied(obj: &Bound<'_, PyAny>, layer: &str) -> PyResult<Imported> {
    let m = legacy::materialise(obj, layer)?;
    Ok(Imported { tensor: m.tensor, bytes_copied: m.bytes_copied, copy_reason: Some(m.reason) })
}

/// The producer's own `__dlpack__` raised (the error carries its exception as the cause).
fn producer_refused(py: Python<'_>, err: &PyErr) -> bool {
    err.value(py).getattr("__cause__").is_ok_and(|c| !c.is_none())
}

/// The producer's `__dlpack__` raised a `BufferError` (numpy: non-native byte order).
fn is_buffer_refusal(py: Python<'_>, err: &PyErr) -> bool {
    err.value(py).getattr("__cause__").is_ok_and(|c| c.is_instance_of::<PyBufferError>())
}
