//! Turning any accepted Python object into a [`BorrowedTensor`], in the producer order of
//! `docs/trust-model.md`: DLPack, then Arrow (array, then stream), then the legacy copying
//! path.

use pyo3::exceptions::PyBufferError;
use pyo3::intern;
use pyo3::prelude::*;

use crate::foreign::borrowed::BorrowedTensor;
use crate::foreign::from_python::arrow_tensor::column_tensor;
use crate::foreign::from_python::dlpack::{import_dlpack, refuse_masked_values};
use crate::foreign::from_python::{arrow, legacy};
use crate::foreign::{BridgeError, BridgeResult};

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
pub fn import_tensor(obj: &Bound<'_, PyAny>) -> BridgeResult<Imported> {
    let py = obj.py();
    refuse_masked_values(obj)?;
    if obj.hasattr(intern!(py, "__dlpack__"))? {
        return match import_dlpack(obj) {
            Ok(t) => Ok(Imported::borrowed(t)),
            // numpy refuses DLPack for non-native byte order (a BufferError) but still
            // exports a buffer: that is a copy the legacy path makes (and announces).
            Err(BridgeError::ProducerRaised { cause, .. })
                if cause.is_instance_of::<PyBufferError>(py) && legacy::accepts(obj) =>
            {
                legacy::materialise(obj)
            }
            // pyarrow arrays speak DLPack only without nulls and for flat types: the Arrow
            // protocol then names the null row, or reads a fixed_size_list as 2-D.
            Err(BridgeError::ProducerRaised { .. }) if obj.hasattr(intern!(py, "__arrow_c_array__"))? => {
                import_arrow_array(obj)
            }
            Err(e) => Err(e),
        };
    }
    if obj.hasattr(intern!(py, "__arrow_c_array__"))? {
        return import_arrow_array(obj);
    }
    if obj.hasattr(intern!(py, "__arrow_c_stream__"))? {
        let (_field, chunks) = arrow::import_stream(obj)?;
        let mut non_empty = chunks.into_iter().filter(|c| !c.data.is_empty());
        let (Some(col), None) = (non_empty.next(), non_empty.next()) else {
            return Err(BridgeError::refused(
                "an Arrow stream that is not exactly one non-empty chunk",
                "one contiguous array (a tensor is never assembled from pieces by copying)",
                "combine the chunks first (chunked_array.combine_chunks()), or pass each chunk",
            ));
        };
        return column_tensor(&col, obj).map(Imported::borrowed);
    }
    if legacy::accepts(obj) {
        return legacy::materialise(obj);
    }
    Err(BridgeError::refused(
        format!("an object of type {}", obj.get_type().name()?),
        "a tensor exposing __dlpack__ (numpy, torch, jax), an Arrow array (__arrow_c_array__), a buffer or a list of numbers",
        "pass a numpy array, a torch tensor or a pyarrow array, e.g. numpy.asarray(x, dtype=numpy.float32)",
    ))
}

fn import_arrow_array(obj: &Bound<'_, PyAny>) -> BridgeResult<Imported> {
    let col = arrow::import_array(obj)?;
    column_tensor(&col, obj).map(Imported::borrowed)
}
