//! Arrow producer: Rust-owned arrays and record batches as `arrow_schema` / `arrow_array`
//! and `arrow_array_stream` PyCapsules (the Arrow PyCapsule Interface).
//!
//! Each capsule owns a boxed arrow-rs FFI struct. A consumer moves the struct out and
//! marks it released; otherwise the capsule's destructor drops the box, and arrow-rs's
//! `Drop` calls the release callback. Either way the Rust buffers are freed exactly once.

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::ffi_stream::FFI_ArrowArrayStream;
use arrow_array::{Array, RecordBatch, RecordBatchIterator, StructArray};
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyTuple};

use crate::error::Error;
use crate::foreign::capsule_names::{ARROW_ARRAY, ARROW_ARRAY_STREAM, ARROW_SCHEMA};
use crate::foreign::{BridgeError, BridgeResult};

fn arrow_err(e: arrow_schema::ArrowError) -> BridgeError {
    Error::Internal(format!("Arrow export failed: {e}")).into()
}

/// `(schema capsule, array capsule)` for `data` described by `field`.
pub fn array_capsules<'py>(py: Python<'py>, field: &Field, data: &ArrayData) -> BridgeResult<Bound<'py, PyTuple>> {
    let schema = FFI_ArrowSchema::try_from(field).map_err(arrow_err)?;
    let array = FFI_ArrowArray::new(data);
    let schema = PyCapsule::new_with_value(py, schema, ARROW_SCHEMA)?;
    let array = PyCapsule::new_with_value(py, array, ARROW_ARRAY)?;
    Ok(PyTuple::new(py, [schema.into_any(), array.into_any()])?)
}

/// The field of a record batch seen as one struct array.
fn batch_field(batch: &RecordBatch) -> Field {
    Field::new("", DataType::Struct(batch.schema().fields().clone()), false)
}

/// A record batch as one struct array: `(schema capsule, array capsule)`; the schema
/// keeps the batch's metadata. A `requested_schema` must match it.
pub fn batch_capsules<'py>(
    py: Python<'py>,
    batch: &RecordBatch,
    requested: Option<&Bound<'py, PyAny>>,
) -> BridgeResult<Bound<'py, PyTuple>> {
    check_requested_schema(requested, &batch_field(batch))?;
    let schema = FFI_ArrowSchema::try_from(batch.schema().as_ref()).map_err(arrow_err)?;
    let data = StructArray::from(batch.clone()).into_data();
    let array = FFI_ArrowArray::new(&data);
    let schema = PyCapsule::new_with_value(py, schema, ARROW_SCHEMA)?;
    let array = PyCapsule::new_with_value(py, array, ARROW_ARRAY)?;
    Ok(PyTuple::new(py, [schema.into_any(), array.into_any()])?)
}

/// An `arrow_array_stream` capsule yielding `batch`. A `requested_schema` must match it.
pub fn stream_capsule<'py>(
    py: Python<'py>,
    batch: &RecordBatch,
    requested: Option<&Bound<'py, PyAny>>,
) -> BridgeResult<Bound<'py, PyCapsule>> {
    check_requested_schema(requested, &batch_field(batch))?;
    let reader = RecordBatchIterator::new([Ok(batch.clone())], batch.schema());
    let stream = FFI_ArrowArrayStream::new(Box::new(reader));
    Ok(PyCapsule::new_with_value(py, stream, ARROW_ARRAY_STREAM)?)
}

/// Whether `requested_schema` (a capsule or None) can be honoured: quantbridge exports its
/// own types only, and says so instead of silently ignoring a different request.
pub fn check_requested_schema(requested: Option<&Bound<'_, PyAny>>, ours: &Field) -> BridgeResult<()> {
    let Some(req) = requested else { return Ok(()) };
    if req.is_none() {
        return Ok(());
    }
    let cap = req.cast::<PyCapsule>().map_err(|_| {
        BridgeError::refused(
            format!("requested_schema of type {}", req.get_type().name().map(|n| n.to_string()).unwrap_or_default()),
            "an arrow_schema PyCapsule or None",
            "pass the consumer's schema capsule, or None",
        )
    })?;
    use pyo3::types::PyCapsuleMethods;
    let ptr = cap.pointer_checked(Some(ARROW_SCHEMA))?;
    // SAFETY: a valid "arrow_schema" capsule holds a live FFI_ArrowSchema owned by the capsule;
    // it is only borrowed for the conversion.
    let requested = Field::try_from(unsafe { &*ptr.as_ptr().cast::<FFI_ArrowSchema>() }).map_err(arrow_err)?;
    if requested.data_type() != ours.data_type() {
        return Err(BridgeError::refused(
            format!("a requested schema of type {}", requested.data_type()),
            format!("{} (quantbridge exports its own types and does not cast)", ours.data_type()),
            "request no schema (None) and cast the result afterwards, e.g. pyarrow.array(x).cast(...)",
        ));
    }
    Ok(())
}
