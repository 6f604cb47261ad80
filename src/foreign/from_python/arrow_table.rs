//! Arrow tables in (docs/formats.md): layers as rows of (`layer_name`, `weights`, `shape`),
//! each row borrowed in place through the guard.

use arrow_array::{Array, ArrayRef, StringArray};
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field, Fields};
use pyo3::intern;
use pyo3::prelude::*;

use crate::foreign::borrowed::BorrowedTensor;
use crate::foreign::from_python::arrow::{import_array, import_stream, ArrowColumn};
use crate::foreign::from_python::arrow_tensor::float_run;
use crate::foreign::{BridgeError, BridgeResult};
use crate::tables::{int_list_row, list_row};

/// `(layer name, what went wrong)` for every row that could not be borrowed.
pub type RowFailures = Vec<(String, BridgeError)>;

/// One row of an input table, borrowed.
pub struct TableLayer {
    /// `layer_name` of the row.
    pub name: String,
    /// The row's weights, in place.
    pub tensor: BorrowedTensor,
}

/// Read every record batch of a table-like object (stream first when `prefer_stream`).
fn record_batches(obj: &Bound<'_, PyAny>, prefer_stream: bool) -> BridgeResult<(Field, Vec<ArrowColumn>)> {
    let py = obj.py();
    let has_stream = obj.hasattr(intern!(py, "__arrow_c_stream__"))?;
    let has_array = obj.hasattr(intern!(py, "__arrow_c_array__"))?;
    if has_stream && (prefer_stream || !has_array) {
        return import_stream(obj);
    }
    if has_array {
        let col = import_array(obj)?;
        return Ok((col.field.clone(), vec![col]));
    }
    Err(BridgeError::refused(format!("an object of type {}", obj.get_type().name()?),
        "an Arrow table or record batch (__arrow_c_stream__ or __arrow_c_array__)",
        "pass a pyarrow.Table / RecordBatch or a polars DataFrame with columns layer_name, weights[, shape]",
    ))
}

fn column_index(fields: &Fields, name: &str, required: bool) -> BridgeResult<Option<usize>> {
    match fields.iter().position(|f| f.name() == name) {
        Some(i) => Ok(Some(i)),
        None if !required => Ok(None),
        // "Missing required column '…'" is the original system's wording, which its users match.
        None => Err(BridgeError::refused(
            format!(
                "the columns {:?} (Missing required column '{name}')",
                fields.iter().map(|f| f.name().as_str()).collect::<Vec<_>>()
            ),
            format!("a column named {name:?}"),
            "name the columns layer_name (utf8), weights (list of float) and optionally shape (list of int)",
        )),
    }
}

fn column_type_error(column: &str, dt: &DataType, expected: &str) -> BridgeError {
    BridgeError::refused(format!("column {column:?} of type {dt}"),
        expected,
        "cast the column first, e.g. table.cast(new_schema)",
    )
}

fn string_at(array: &ArrayRef, row: usize) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    let any = array.as_any();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        return Some(a.value(row).to_owned());
    }
    if let Some(a) = any.downcast_ref::<arrow_array::LargeStringArray>() {
        return Some(a.value(row).to_owned());
    }
    any.downcast_ref::<arrow_array::StringViewArray>().map(|a| a.value(row).to_owned())
}

/// Borrow every row of a §5 table. Rows that cannot be borrowed are returned as
/// `(name, reason)` failures.
pub fn table_layers(obj: &Bound<'_, PyAny>, prefer_stream: bool) -> BridgeResult<(Vec<TableLayer>, RowFailures)> {
    let (field, batches) = record_batches(obj, prefer_stream)?;
    let DataType::Struct(fields) = field.data_type() else {
        return Err(BridgeError::refused(format!("an Arrow array of type {}", field.data_type()),
            "a table or record batch (a struct of columns)",
            "pass a pyarrow.Table / RecordBatch with columns layer_name, weights[, shape]",
        ));
    };
    let name_col = column_index(fields, "layer_name", true)?.expect("required");
    let weights_col = column_index(fields, "weights", true)?.expect("required");
    let shape_col = column_index(fields, "shape", false)?;
    if !matches!(fields[name_col].data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        return Err(column_type_error("layer_name", fields[name_col].data_type(), "utf8 or large_utf8"));
    }
    let float_list = |dt: &DataType| match dt {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            matches!(f.data_type(), DataType::Float16 | DataType::Float32 | DataType::Float64)
        }
        _ => false,
    };
    if !float_list(fields[weights_col].data_type()) {
        return Err(column_type_error(
            "weights",
            fields[weights_col].data_type(),
            "list, large_list or fixed_size_list of float16, float32 or float64",
        ));
    }
    if let Some(s) = shape_col {
        let ok = match fields[s].data_type() {
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                matches!(f.data_type(), DataType::Int32 | DataType::Int64)
            }
            _ => false,
        };
        if !ok {
            return Err(column_type_error("shape", fields[s].data_type(), "list of int32 or int64"));
        }
    }
    let mut layers = Vec::new();
    let mut failures = Vec::new();
    let mut row_base = 0;
    for batch in &batches {
        let data = &batch.data;
        if data.null_count() > 0 {
            let row = (0..data.len()).find(|&r| data.is_null(r)).unwrap_or(0);
            failures.push((
                format!("row {}", row_base + row),
                BridgeError::refused("a null record", "a record with a layer_name and weights", "drop null rows first"),
            ));
        }
        // A struct's children carry their own offsets; the struct's offset applies on top.
        let offset = data.offset();
        let names = arrow_array::make_array(data.child_data()[name_col].clone());
        let weights = &data.child_data()[weights_col];
        let shapes = shape_col.map(|s| &data.child_data()[s]);
        for r in 0..data.len() {
            let row = row_base + r;
            let Some(name) = string_at(&names, offset + r) else {
                failures.push((
                    format!("row {row}"),
                    BridgeError::refused("a null layer_name", "a name for every row", "fill or drop the row first"),
                ));
                continue;
            };
            match table_row(obj, weights, shapes, offset + r, row) {
                Ok(tensor) => layers.push(TableLayer { name, tensor }),
                Err(e) => failures.push((name, e)),
            }
        }
        row_base += data.len();
    }
    Ok((layers, failures))
}

fn table_row(
    producer: &Bound<'_, PyAny>,
    weights: &ArrayData,
    shapes: Option<&ArrayData>,
    index: usize,
    row: usize,
) -> BridgeResult<BorrowedTensor> {
    if weights.is_null(index) {
        return Err(BridgeError::refused(format!("a null in row {row} of column \"weights\""),
            "no nulls",
            "drop or fill the row first",
        ));
    }
    let (start, len) = list_row(weights, index).expect("weights is a list type (checked)");
    let shape = match shapes {
        Some(s) if !s.is_null(index) => {
            let shape = int_list_row(s, index).expect("shape is a list of ints (checked)");
            let product = shape.iter().try_fold(1i64, |acc, &d| if d < 0 { None } else { acc.checked_mul(d) });
            if product != Some(len as i64) {
                return Err(BridgeError::refused(format!("shape {shape:?} for {len} weights in row {row}"),
                    "a shape whose product is the number of weights",
                    "fix the row's shape, or leave it null for a 1-D tensor",
                ));
            }
            shape
        }
        _ => vec![len as i64],
    };
    let child = &weights.child_data()[0];
    float_run(child, start, len, &shape, producer)
}
