//! Arrow arrays as tensors: a float array (or one row of a list column) enters the same
//! [`BorrowedTensor`] guard as a DLPack tensor, read in place, offset and all.

use arrow_data::ArrayData;
use arrow_schema::DataType;
use pyo3::prelude::*;

use crate::foreign::borrowed::{BorrowedTensor, Owner, RawTensor};
use crate::foreign::{BridgeError, BridgeResult};
use crate::foreign::from_python::arrow::ArrowColumn;
use crate::quant::DType;

/// Keeps an imported Arrow array alive: its buffers hold the producer's `ArrowArray`, whose
/// release callback runs once the last of them drops.
pub struct ArrowOwner {
    _values: ArrayData,
    _producer: Py<PyAny>,
}

impl Owner for ArrowOwner {
    fn kind(&self) -> &'static str {
        "arrow"
    }
}

/// The engine dtype of an Arrow value type.
pub fn float_dtype(dt: &DataType) -> Option<DType> {
    match dt {
        DataType::Float16 => Some(DType::F16),
        DataType::Float32 => Some(DType::F32),
        DataType::Float64 => Some(DType::F64),
        _ => None,
    }
}

fn dtype_error(dt: &DataType) -> BridgeError {
    // A table or record batch arrives as a struct of its columns: the fix is to pick the
    // column, or to quantize every row with quantize_arrow, not to cast.
    let fix = if let DataType::Struct(fields) = dt {
        let first = fields.first().map_or("weights", |f| f.name().as_str());
        format!(
            "a table is not one tensor: pass one column, e.g. qb.quantize(table[{first:?}]), or quantize the table's \
             rows (columns layer_name, weights[, shape]) with qb.quantize_arrow(table)"
        )
    } else {
        "cast first, e.g. pyarrow.compute.cast(array, pyarrow.float32())".to_owned()
    };
    BridgeError::refused(format!("Arrow values of type {dt}"), "float16, float32 or float64 values", fix)
}

fn first_null(data: &ArrayData, start: usize, len: usize) -> Option<usize> {
    let nulls = data.nulls()?;
    if nulls.null_count() == 0 {
        return None;
    }
    (start..start + len).find(|&i| nulls.is_null(i))
}

/// `len` float values of `values` from logical index `start`, viewed with `shape`.
pub fn float_run(
    values: &ArrayData,
    start: usize,
    len: usize,
    shape: &[i64],
    producer: &Bound<'_, PyAny>,
) -> BridgeResult<BorrowedTensor> {
    let dtype = float_dtype(values.data_type()).ok_or_else(|| dtype_error(values.data_type()))?;
    if let Some(i) = first_null(values, start, len) {
        return Err(BridgeError::refused(format!("a null at element {} of its values", i - start),
            "no nulls in weights",
            "fill or drop nulls first, e.g. pyarrow.compute.fill_null(values, 0.0)",
        ));
    }
    let buffer = values.buffers().first().ok_or_else(|| dtype_error(values.data_type()))?;
    let base = buffer.as_ptr();
    let first = (values.offset() + start) * dtype.itemsize();
    let data = if len == 0 { base } else { base.wrapping_add(first) };
    let raw = RawTensor { data, dtype, shape, strides: None, buffer: Some((base as usize, buffer.len())) };
    let owner = Box::new(ArrowOwner { _values: values.clone(), _producer: producer.clone().unbind() });
    // SAFETY: `owner` holds a clone of `values`, whose buffers keep the producer's ArrowArray
    // (and so its memory) alive until the guard drops; Arrow buffers are immutable; `buffer`
    // gives the real extent, which the guard checks every reachable element against.
    Ok(unsafe { BorrowedTensor::new(&raw, owner) }?)
}

/// A tensor from a whole Arrow column: float values are 1-D, `fixed_size_list<float>[k]`
/// is 2-D `(len, k)`.
pub fn column_tensor(col: &ArrowColumn, producer: &Bound<'_, PyAny>) -> BridgeResult<BorrowedTensor> {
    let data = &col.data;
    match data.data_type() {
        DataType::FixedSizeList(_, k) => {
            if let Some(row) = first_null(data, 0, data.len()) {
                return Err(null_row(row));
            }
            let k = *k as usize;
            let child = &data.child_data()[0];
            float_run(child, data.offset() * k, data.len() * k, &[data.len() as i64, k as i64], producer)
        }
        _ => {
            if let Some(row) = first_null(data, 0, data.len()) {
                return Err(null_row(row));
            }
            float_run(data, 0, data.len(), &[data.len() as i64], producer)
        }
    }
}

/// A `ValidationError` for a null in row `row`.
pub fn null_row(row: usize) -> BridgeError {
    BridgeError::refused(format!("a null in row {row}"),
        "no nulls",
        "fill or drop nulls first (pyarrow.compute.fill_null / drop_null)",
    )
}
