//! Turning any accepted Python object into a [`BorrowedTensor`], in the producer order of
//! `docs/trust-model.md`: DLPack, then Arrow (array, then stream), then the legacy copying
//! path.

use pyo3::exceptions::PyBufferError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::foreign::borrowed::BorrowedTensor;
use crate::foreign::from_python::arrow_tensor::column_tensor;
use crate::foreign::from_python::dlpack::{import_dlpack, loaded_type};
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

/// Refuse a numpy masked array with masked elements: DLPack and the buffer protocol export
/// its data alone, so the masked values (whatever they hold) would be quantized as valid.
/// Arrow nulls are refused the same way.
fn refuse_masked_values(obj: &Bound<'_, PyAny>) -> BridgeResult<()> {
    static NDARRAY: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static MASKED_ARRAY: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let py = obj.py();
    // Only a subclass of ndarray can be a masked array: plain arrays and every other
    // producer pass with a type comparison (numpy.ma is not even loaded in most programs).
    let Some(ndarray) = loaded_type(py, &NDARRAY, intern!(py, "numpy"), intern!(py, "ndarray")) else {
        return Ok(());
    };
    let class = obj.get_type();
    if class.is(ndarray) || !class.is_subclass(ndarray)? {
        return Ok(());
    }
    let Some(masked_array) = loaded_type(py, &MASKED_ARRAY, intern!(py, "numpy.ma"), intern!(py, "MaskedArray")) else {
        return Ok(());
    };
    if !obj.is_instance(masked_array)? {
        return Ok(());
    }
    let masked: usize = obj.getattr(intern!(py, "mask"))?.call_method0(intern!(py, "sum"))?.extract()?;
    if masked > 0 {
        return Err(BridgeError::refused(format!("a numpy masked array with {masked} masked value(s)"),
            "no masked values (DLPack carries no mask, so they would be quantized as valid)",
            "fill them (x.filled(value)), or pass x.data to quantize what the masked slots hold",
        ));
    }
    Ok(())
}

fn import_arrow_array(obj: &Bound<'_, PyAny>) -> BridgeResult<Imported> {
    let col = arrow::import_array(obj)?;
    column_tensor(&col, obj).map(Imported::borrowed)
}
