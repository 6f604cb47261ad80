//! Arrow C Data Interface consumer: `__arrow_c_array__` and `__arrow_c_stream__`.
//!
//! Protocol: take the `arrow_schema` / `arrow_array` (or `arrow_array_stream`) capsules,
//! check the raw C structs (buffer and child counts, lengths, null pointers) before
//! arrow-rs reads them, then *move* the array out of its capsule (leaving a released
//! struct behind, so the producer's capsule destructor does nothing) into arrow-rs
//! [`ArrayData`], whose buffers share one `Arc<FFI_ArrowArray>`: the release callback runs
//! exactly once, when the last buffer that points into the producer's memory is dropped.
//! Every error path before the move leaves the capsule owning the array, so its
//! destructor releases it, again exactly once.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::ffi_stream::FFI_ArrowArrayStream;
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyCapsuleMethods, PyTuple};

use crate::foreign::capsule_names::{ARROW_ARRAY, ARROW_ARRAY_STREAM, ARROW_SCHEMA};
use crate::foreign::{BridgeError, BridgeResult};

/// Most rows, offset or nesting depth we accept before doing arithmetic with them.
const MAX_LENGTH: i64 = i64::MAX / 64;
const MAX_DEPTH: usize = 64;

/// A validated Arrow array and the field that describes it.
pub struct ArrowColumn {
    /// Name, type and nullability.
    pub field: Field,
    /// The array; its buffers keep the producer's memory alive.
    pub data: ArrayData,
}

/// The C ABI of `struct ArrowArray` (arrow-rs keeps its fields private), used only to check
/// a producer's struct before arrow-rs trusts it.
#[repr(C)]
struct RawArrowArray {
    length: i64,
    null_count: i64,
    offset: i64,
    n_buffers: i64,
    n_children: i64,
    buffers: *const *const u8,
    children: *const *const RawArrowArray,
    dictionary: *const RawArrowArray,
    release: Option<unsafe extern "C" fn(*mut RawArrowArray)>,
    private_data: *mut u8,
}

// The mirror must have exactly the layout of arrow-rs's own `repr(C)` struct, or the casts
// from `FFI_ArrowArray` below would read the wrong fields.
const _: () = assert!(std::mem::size_of::<RawArrowArray>() == std::mem::size_of::<FFI_ArrowArray>());
const _: () = assert!(std::mem::align_of::<RawArrowArray>() == std::mem::align_of::<FFI_ArrowArray>());
const _: () = assert!(std::mem::size_of::<RawArrowArray>() == 80, "the C Data Interface's struct ArrowArray");

fn malformed(found: String) -> BridgeError {
    BridgeError::refused(
        found,
        "a well-formed Arrow array (C Data Interface)",
        "the producer exported a corrupt array; rebuild it (e.g. pyarrow.array(values, type=pyarrow.float32()))",
    )
}

fn producer_raised(method: &'static str, cause: PyErr) -> BridgeError {
    BridgeError::ProducerRaised {
        method,
        fix: "export a plain array (e.g. pyarrow.array(values)) or pass a numpy array",
        cause,
    }
}

/// Buffers (null bitmap included) and children the C Data Interface requires for `dt`;
/// `None` for types quantbridge never imports.
fn expected_counts(dt: &DataType) -> Option<(i64, i64)> {
    use DataType::*;
    Some(match dt {
        Null => (0, 0),
        Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float16 | Float32
        | Float64 | Date32 | Date64 | Time32(_) | Time64(_) | Timestamp(_, _) | Duration(_) | Interval(_)
        | Decimal32(_, _) | Decimal64(_, _) | Decimal128(_, _) | Decimal256(_, _) | FixedSizeBinary(_) => (2, 0),
        Utf8 | LargeUtf8 | Binary | LargeBinary => (3, 0),
        List(_) | LargeList(_) => (2, 1),
        FixedSizeList(_, _) => (1, 1),
        Struct(fields) => (1, fields.len() as i64),
        // Views: validity, views, any number of data buffers, then their sizes.
        Utf8View | BinaryView => (-1, 0),
        _ => return None,
    })
}

/// Check the raw struct tree against `dt` before arrow-rs reads it (arrow-rs asserts, and
/// computes buffer lengths from these numbers).
///
/// # Safety
///
/// `raw` points at a live `ArrowArray` that the producer has not released.
unsafe fn check_raw(raw: *const RawArrowArray, dt: &DataType, depth: usize) -> BridgeResult<()> {
    if depth > MAX_DEPTH {
        return Err(malformed(format!("an Arrow array nested deeper than {MAX_DEPTH} levels")));
    }
    // SAFETY: the caller guarantees `raw` is a live ArrowArray; we only read its header.
    let a = unsafe { &*raw };
    if a.release.is_none() {
        return Err(malformed("an Arrow array that was already released".into()));
    }
    for (what, v) in [("length", a.length), ("offset", a.offset)] {
        if !(0..=MAX_LENGTH).contains(&v) {
            return Err(malformed(format!("an Arrow array with {what} {v}")));
        }
    }
    if a.null_count < -1 || a.null_count > a.length {
        return Err(malformed(format!("null_count {} for {} rows", a.null_count, a.length)));
    }
    // Types quantbridge never reads (extra table columns) get only the checks above; the
    // columns it reads are type-checked where they are used.
    let Some((buffers, children)) = expected_counts(dt) else { return Ok(()) };
    let buffers_ok = if buffers < 0 { a.n_buffers >= 3 } else { a.n_buffers == buffers };
    let buffers = if buffers < 0 { a.n_buffers.min(2) } else { buffers };
    if !buffers_ok || a.n_children != children {
        return Err(malformed(format!(
                "an Arrow {dt} array with {} buffers and {} children (the format requires {buffers} and {children})",
                a.n_buffers, a.n_children
            ),
        ));
    }
    if buffers > 0 && a.buffers.is_null() {
        return Err(malformed(format!("an Arrow {dt} array whose buffer list is NULL")));
    }
    if !a.dictionary.is_null() {
        return Err(malformed(format!("an Arrow {dt} array carrying a dictionary")));
    }
    if a.length > 0 {
        // Data buffers (not the validity bitmap, which may be NULL without nulls) must exist.
        for i in 1..buffers {
            // SAFETY: `buffers` points at `n_buffers` pointers (checked non-null above).
            if unsafe { *a.buffers.add(i as usize) }.is_null() {
                return Err(malformed(format!("an Arrow {dt} array whose buffer {i} is NULL")));
            }
        }
        if a.null_count != 0 && buffers > 0 {
            // SAFETY: as above; buffer 0 is the validity bitmap.
            if unsafe { *a.buffers }.is_null() && a.null_count > 0 {
                return Err(malformed(format!("{} nulls but no validity bitmap", a.null_count)));
            }
        }
    }
    let child_types: Vec<&DataType> = match dt {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => vec![f.data_type()],
        DataType::Struct(fields) => fields.iter().map(|f| f.data_type()).collect(),
        _ => vec![],
    };
    if !child_types.is_empty() && a.children.is_null() {
        return Err(malformed(format!("an Arrow {dt} array whose child list is NULL")));
    }
    for (i, child_dt) in child_types.into_iter().enumerate() {
        // SAFETY: `children` points at `n_children` pointers (count and non-null checked above).
        let child = unsafe { *a.children.add(i) };
        if child.is_null() {
            return Err(malformed(format!("an Arrow {dt} array whose child {i} is NULL")));
        }
        // SAFETY: a live parent's children are live until the parent is released.
        unsafe { check_raw(child, child_dt, depth + 1)? };
    }
    Ok(())
}

/// Move a checked `FFI_ArrowArray` into arrow-rs and validate it fully (offsets inside
/// their child, buffer sizes, null counts).
fn import_checked(array: FFI_ArrowArray, field: Field) -> BridgeResult<ArrowColumn> {
    let dt = field.data_type().clone();
    // arrow-rs asserts on inconsistent input; `check_raw` rules those cases out, and a panic
    // that slips through is still contained instead of unwinding into the interpreter.
    let imported = catch_unwind(AssertUnwindSafe(move || {
        // SAFETY: the struct passed `check_raw` for `dt`, and ownership moved to us.
        let data = unsafe { arrow_array::ffi::from_ffi_and_data_type(array, dt) }?;
        data.validate_full()?;
        Ok::<_, arrow_schema::ArrowError>(data)
    }));
    match imported {
        Ok(Ok(data)) => Ok(ArrowColumn { field, data }),
        Ok(Err(e)) => Err(malformed(format!("an invalid Arrow array ({e})"))),
        Err(_) => Err(malformed("an Arrow array that arrow-rs could not read".into())),
    }
}

fn capsule<'py>(obj: &Bound<'py, PyAny>, name: &CStr) -> BridgeResult<Bound<'py, PyCapsule>> {
    let py = obj.py();
    let cap = obj.cast::<PyCapsule>().map_err(|_| {
        malformed(format!("a {} where a PyCapsule named {name:?} was expected", obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()))
    })?;
    if !cap.is_valid_checked(Some(name)) {
        // SAFETY: `cap` is a live capsule; PyCapsule_GetName returns its name or NULL.
        let found = unsafe { pyo3::ffi::PyCapsule_GetName(cap.as_ptr()) };
        let found = if found.is_null() {
            PyErr::take(py);
            "<unnamed>".to_string()
        } else {
            // SAFETY: capsule names are NUL-terminated strings owned by the capsule.
            unsafe { CStr::from_ptr(found) }.to_string_lossy().into_owned()
        };
        return Err(malformed(format!("a capsule named {found:?} where {name:?} was expected")));
    }
    Ok(cap.clone())
}

/// The schema in an `arrow_schema` capsule, as a field.
fn schema_field(cap: &Bound<'_, PyCapsule>) -> BridgeResult<Field> {
    let ptr = cap.pointer_checked(Some(ARROW_SCHEMA))?;
    let parsed = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: a valid "arrow_schema" capsule holds a live FFI_ArrowSchema that the
        // capsule owns; we only borrow it for the conversion.
        let schema = unsafe { &*ptr.as_ptr().cast::<FFI_ArrowSchema>() };
        Field::try_from(schema)
    }));
    match parsed {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(e)) => Err(malformed(format!("an unreadable Arrow schema ({e})"))),
        Err(_) => Err(malformed("an unreadable Arrow schema".into())),
    }
}

/// Import `obj.__arrow_c_array__()`.
pub fn import_array(obj: &Bound<'_, PyAny>) -> BridgeResult<ArrowColumn> {
    let py = obj.py();
    let pair = obj.call_method0(intern!(py, "__arrow_c_array__")).map_err(|e| producer_raised("__arrow_c_array__", e))?;
    let pair = pair.cast::<PyTuple>().map_err(|_| {
        malformed("__arrow_c_array__() returning something other than a (schema, array) tuple".into())
    })?;
    if pair.len() != 2 {
        return Err(malformed(format!("__arrow_c_array__() returning {} capsules instead of 2", pair.len())));
    }
    let schema_cap = capsule(&pair.get_item(0)?, ARROW_SCHEMA)?;
    let array_cap = capsule(&pair.get_item(1)?, ARROW_ARRAY)?;
    let field = schema_field(&schema_cap)?;
    let ptr = array_cap.pointer_checked(Some(ARROW_ARRAY))?.cast::<FFI_ArrowArray>();
    // SAFETY: a valid "arrow_array" capsule holds a live ArrowArray owned by the capsule;
    // RawArrowArray is its C layout.
    unsafe { check_raw(ptr.as_ptr().cast(), field.data_type(), 0)? };
    // SAFETY: the capsule owns a live FFI_ArrowArray; we take ownership and leave a released
    // (empty) struct, so the producer's capsule destructor will not release it again.
    let array = unsafe { std::ptr::replace(ptr.as_ptr(), FFI_ArrowArray::empty()) };
    import_checked(array, field)
}

/// A consumed `ArrowArrayStream`; dropping it releases the stream once (arrow-rs's Drop).
struct Stream(FFI_ArrowArrayStream);

impl Stream {
    fn last_error(&mut self) -> String {
        let Some(get_last_error) = self.0.get_last_error() else { return "no message".into() };
        // SAFETY: the callback is the producer's own, called on the stream it came from.
        let msg = unsafe { get_last_error(&mut self.0) };
        if msg.is_null() {
            "no message".into()
        } else {
            // SAFETY: a non-null error message is a NUL-terminated string owned by the stream.
            unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned()
        }
    }
}

/// Import `obj.__arrow_c_stream__()`: the stream's field and every chunk, validated.
pub fn import_stream(obj: &Bound<'_, PyAny>) -> BridgeResult<(Field, Vec<ArrowColumn>)> {
    let py = obj.py();
    let cap = obj.call_method0(intern!(py, "__arrow_c_stream__")).map_err(|e| producer_raised("__arrow_c_stream__", e))?;
    let cap = capsule(&cap, ARROW_ARRAY_STREAM)?;
    let ptr = cap.pointer_checked(Some(ARROW_ARRAY_STREAM))?.cast::<FFI_ArrowArrayStream>();
    // SAFETY: a valid "arrow_array_stream" capsule holds a live stream that it owns; we take
    // it over and leave a released one, so the capsule destructor does nothing.
    let mut stream = Stream(unsafe { std::ptr::replace(ptr.as_ptr(), FFI_ArrowArrayStream::empty()) });
    let (Some(get_schema), Some(get_next)) = (stream.0.get_schema(), stream.0.get_next()) else {
        return Err(malformed("an Arrow stream without get_schema/get_next callbacks".into()));
    };
    let mut schema = FFI_ArrowSchema::empty();
    // SAFETY: the producer's callback, on its own stream, writing into a struct we own.
    if unsafe { get_schema(&mut stream.0, &mut schema) } != 0 {
        let e = stream.last_error();
        return Err(malformed(format!("an Arrow stream whose get_schema failed: {e}")));
    }
    let field = Field::try_from(&schema).map_err(|e| malformed(format!("an unreadable Arrow schema ({e})")))?;
    drop(schema);
    let mut chunks = Vec::new();
    loop {
        let mut array = FFI_ArrowArray::empty();
        // SAFETY: as for get_schema; `array` is ours and starts released.
        if unsafe { get_next(&mut stream.0, &mut array) } != 0 {
            let e = stream.last_error();
            return Err(malformed(format!("an Arrow stream whose get_next failed: {e}")));
        }
        if array.is_released() {
            break; // end of stream
        }
        // SAFETY: `array` is a live ArrowArray the producer just handed us; RawArrowArray is
        // its C layout. On error `array` drops here and is released once.
        unsafe { check_raw((&array as *const FFI_ArrowArray).cast(), field.data_type(), 0)? };
        chunks.push(import_checked(array, field.clone())?);
    }
    Ok((field, chunks))
}
