//! The legacy path (docs/trust-model.md (legacy path)): Python sequences of numbers and buffer-protocol objects.
//!
//! This is the only importer that copies. The values are materialised once, with the GIL
//! held, into an owned buffer that then enters the SAME [`BorrowedTensor`] guard as every
//! zero-copy import; the caller counts the copy (`bytes_copied`) and warns about it.

use half::f16;
use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyString, PyTuple};

use crate::foreign::borrowed::{BorrowedTensor, Owner, RawTensor};
use crate::foreign::import::Imported;
use crate::foreign::{BridgeError, BridgeResult};
use crate::quant::DType;

/// Values copied out of a Python object.
pub enum OwnedValues {
    /// From 'e' buffers.
    F16(Vec<f16>),
    /// From 'f' buffers.
    F32(Vec<f32>),
    /// From 'd' buffers and Python floats.
    F64(Vec<f64>),
}

impl OwnedValues {
    fn dtype(&self) -> DType {
        match self {
            OwnedValues::F16(_) => DType::F16,
            OwnedValues::F32(_) => DType::F32,
            OwnedValues::F64(_) => DType::F64,
        }
    }

    fn as_ptr(&self) -> *const u8 {
        match self {
            OwnedValues::F16(v) => v.as_ptr().cast(),
            OwnedValues::F32(v) => v.as_ptr().cast(),
            OwnedValues::F64(v) => v.as_ptr().cast(),
        }
    }

    fn nbytes(&self) -> usize {
        match self {
            OwnedValues::F16(v) => v.len() * 2,
            OwnedValues::F32(v) => v.len() * 4,
            OwnedValues::F64(v) => v.len() * 8,
        }
    }
}

/// Owns the copy; dropping it frees it.
pub struct OwnedOwner {
    _values: OwnedValues,
}

impl Owner for OwnedOwner {
    fn kind(&self) -> &'static str {
        "copy"
    }
}

fn wrap(values: OwnedValues, shape: Vec<i64>, reason: &'static str) -> BridgeResult<Imported> {
    let bytes_copied = values.nbytes();
    let raw = RawTensor {
        data: values.as_ptr(),
        dtype: values.dtype(),
        shape: &shape,
        strides: None,
        buffer: Some((values.as_ptr() as usize, bytes_copied)),
    };
    // The Vec's heap block does not move when the Vec is moved into the owner.
    let owner = Box::new(OwnedOwner { _values: values });
    // SAFETY: the owner holds the Vec whose heap block `raw` describes (row-major, exactly
    // `shape`), which nobody else can reach or write, until the guard drops.
    let tensor = unsafe { BorrowedTensor::new(&raw, owner) }?;
    Ok(Imported { tensor, bytes_copied, copy_reason: Some(reason) })
}

/// Whether `obj` is something the legacy path can take.
pub fn accepts(obj: &Bound<'_, PyAny>) -> bool {
    !obj.is_instance_of::<PyString>()
        && (obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() || PyUntypedBuffer::get(obj).is_ok())
}

/// Copy a buffer-protocol object or a (nested) sequence of numbers.
pub fn materialise(obj: &Bound<'_, PyAny>) -> BridgeResult<Imported> {
    let py = obj.py();
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        return materialise_sequence(obj);
    }
    if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() {
        return Err(BridgeError::refused(
            "raw bytes (a buffer of format 'B', uint8)",
            "float values",
            "pass numpy.frombuffer(data, dtype=numpy.float32) or an array.array('f', ...)",
        ));
    }
    let buffer = PyUntypedBuffer::get(obj)?;
    let result = materialise_buffer(&buffer);
    buffer.release(py);
    result
}

/// Element decoder of a struct-module format string: (dtype, byte-swapped).
fn buffer_format(format: &str) -> Option<(DType, bool)> {
    let (order, code) = match format.as_bytes() {
        [c] => (b'@', *c),
        [o, c] => (*o, *c),
        _ => return None,
    };
    let swapped = match order {
        b'@' | b'=' => false,
        b'<' => cfg!(target_endian = "big"),
        b'>' | b'!' => cfg!(target_endian = "little"),
        _ => return None,
    };
    let dtype = match code {
        b'e' => DType::F16,
        b'f' => DType::F32,
        b'd' => DType::F64,
        _ => return None,
    };
    Some((dtype, swapped))
}

fn materialise_buffer(buffer: &PyUntypedBuffer) -> BridgeResult<Imported> {
    let format = buffer.format().to_string_lossy().into_owned();
    let Some((dtype, swapped)) = buffer_format(&format) else {
        return Err(BridgeError::refused(
            format!("a buffer of format {format:?}"),
            "a buffer of float16 ('e'), float32 ('f') or float64 ('d') values",
            "convert first, e.g. numpy.asarray(x, dtype=numpy.float32)",
        ));
    };
    if buffer.item_size() != dtype.itemsize() || buffer.suboffsets().is_some() {
        return Err(BridgeError::refused(
            format!("a buffer of format {format:?} with item size {}", buffer.item_size()),
            "a plain strided buffer",
            "convert first, e.g. numpy.asarray(x, dtype=numpy.float32)",
        ));
    }
    let shape: Vec<i64> = if buffer.dimensions() == 0 { vec![] } else { buffer.shape().iter().map(|&d| d as i64).collect() };
    let values = match dtype {
        DType::F16 => OwnedValues::F16(gather(buffer, swapped, f16::from_ne_bytes)),
        DType::F32 => OwnedValues::F32(gather(buffer, swapped, f32::from_ne_bytes)),
        DType::F64 | DType::BF16 => OwnedValues::F64(gather(buffer, swapped, f64::from_ne_bytes)),
    };
    let reason = if swapped { "a byte-swapped buffer" } else { "a buffer-protocol object" };
    wrap(values, shape, reason)
}

/// Every item of `buffer` in row-major order, through its own strides, decoded by `decode`
/// from native-order bytes (`swapped` items are reversed first).
fn gather<T, const N: usize>(buffer: &PyUntypedBuffer, swapped: bool, decode: impl Fn([u8; N]) -> T) -> Vec<T> {
    let shape = buffer.shape();
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..n {
        let mut item = [0u8; N];
        // SAFETY: `get_ptr` returns the address of an in-bounds item of `item_size()` bytes,
        // checked equal to N by the caller, in a buffer held until `release`.
        unsafe { std::ptr::copy_nonoverlapping(buffer.get_ptr(&index).cast::<u8>(), item.as_mut_ptr(), N) };
        if swapped {
            item.reverse();
        }
        out.push(decode(item));
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

fn materialise_sequence(obj: &Bound<'_, PyAny>) -> BridgeResult<Imported> {
    let mut shape: Vec<i64> = Vec::new();
    let mut values: Vec<f64> = Vec::new();
    collect(obj, 0, &mut shape, &mut values).map_err(|found| {
        BridgeError::refused(
            found,
            "a (nested, rectangular) list of numbers",
            "pass a flat list of floats, equal-length nested lists, or a numpy array",
        )
    })?;
    wrap(OwnedValues::F64(values), shape, "a Python sequence")
}

/// Depth-first flattening that infers the shape from the first element at each depth.
fn collect(obj: &Bound<'_, PyAny>, depth: usize, shape: &mut Vec<i64>, out: &mut Vec<f64>) -> Result<(), String> {
    const MAX_DEPTH: usize = 32;
    let items: Vec<Bound<'_, PyAny>> = if let Ok(l) = obj.cast::<PyList>() {
        l.iter().collect()
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        t.iter().collect()
    } else {
        return Err(format!("a {} inside the sequence", obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()));
    };
    if depth >= MAX_DEPTH {
        return Err(format!("a sequence nested deeper than {MAX_DEPTH} levels"));
    }
    if shape.len() == depth {
        shape.push(items.len() as i64);
    } else if shape[depth] != items.len() as i64 {
        return Err(format!("a ragged sequence (lengths {} and {} at depth {depth})", shape[depth], items.len()));
    }
    let leaf_level = shape.len() == depth + 1 && items.first().is_none_or(|x| !(x.is_instance_of::<PyList>() || x.is_instance_of::<PyTuple>()));
    for item in &items {
        if leaf_level {
            if item.is_instance_of::<PyList>() || item.is_instance_of::<PyTuple>() || item.is_instance_of::<PyString>() {
                return Err("a ragged sequence (numbers and sequences mixed at one depth)".into());
            }
            out.push(item.extract::<f64>().map_err(|_| {
                format!("a {} where a number was expected", item.get_type().name().map(|n| n.to_string()).unwrap_or_default())
            })?);
        } else {
            collect(item, depth + 1, shape, out)?;
        }
    }
    Ok(())
}
