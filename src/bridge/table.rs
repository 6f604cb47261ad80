//! Arrow tables (SPEC §5): layers in as rows of (`layer_name`, `weights`, `shape`), each row
//! borrowed in place through the guard; results out as one Arrow record batch whose
//! `codes` column is a large_binary buffer the engine writes straight into.

use arrow_array::{Array, ArrayRef, StringArray};
use arrow_buffer::Buffer;
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field, Fields};
use pyo3::intern;
use pyo3::prelude::*;
use rayon::prelude::*;

use crate::arrow_table::{int_list_row, list_row, TableParts};
use crate::bridge::arrow_tensor::float_run;
use crate::bridge::borrowed::BorrowedTensor;
use crate::bridge::errors::validation;
use crate::bridge::ffi::from_python::arrow::{import_array, import_stream, ArrowColumn};
use crate::buffer_pool::zeroed;
use crate::quant::{output_sizes, quantize_into, OutBuffers, QuantSpec, Stats};

/// `(layer name, reason)` for every layer that failed.
pub type Failures = Vec<(String, String)>;

/// One row of an input table, borrowed.
pub struct TableLayer {
    /// `layer_name` of the row.
    pub name: String,
    /// The row's weights, in place.
    pub tensor: BorrowedTensor,
}

/// Read every record batch of a table-like object (stream first when `prefer_stream`).
fn record_batches(obj: &Bound<'_, PyAny>, prefer_stream: bool) -> PyResult<(Field, Vec<ArrowColumn>)> {
    let py = obj.py();
    let has_stream = obj.hasattr(intern!(py, "__arrow_c_stream__"))?;
    let has_array = obj.hasattr(intern!(py, "__arrow_c_array__"))?;
    if has_stream && (prefer_stream || !has_array) {
        return import_stream(obj, "table");
    }
    if has_array {
        let col = import_array(obj, "table")?;
        return Ok((col.field.clone(), vec![col]));
    }
    Err(validation(
        py,
        "table",
        format!("an object of type {}", obj.get_type().name()?),
        "an Arrow table or record batch (__arrow_c_stream__ or __arrow_c_array__)",
        "pass a pyarrow.Table / RecordBatch or a polars DataFrame with columns layer_name, weights[, shape]",
    ))
}

fn column_index(py: Python<'_>, fields: &Fields, name: &str, required: bool) -> PyResult<Option<usize>> {
    match fields.iter().position(|f| f.name() == name) {
        Some(i) => Ok(Some(i)),
        None if !required => Ok(None),
        None => Err(validation(
            py,
            "table",
            format!("columns {:?}", fields.iter().map(|f| f.name().as_str()).collect::<Vec<_>>()),
            &format!("a column named {name:?}"),
            "name the columns layer_name (utf8), weights (list of float) and optionally shape (list of int)",
        )),
    }
}

fn column_type_error(py: Python<'_>, column: &str, dt: &DataType, expected: &str) -> PyErr {
    validation(
        py,
        "table",
        format!("column {column:?} of type {dt}"),
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
pub fn table_layers(obj: &Bound<'_, PyAny>, prefer_stream: bool) -> PyResult<(Vec<TableLayer>, Failures)> {
    let py = obj.py();
    let (field, batches) = record_batches(obj, prefer_stream)?;
    let DataType::Struct(fields) = field.data_type() else {
        return Err(validation(
            py,
            "table",
            format!("an Arrow array of type {}", field.data_type()),
            "a table or record batch (a struct of columns)",
            "pass a pyarrow.Table / RecordBatch with columns layer_name, weights[, shape]",
        ));
    };
    let name_col = column_index(py, fields, "layer_name", true)?.expect("required");
    let weights_col = column_index(py, fields, "weights", true)?.expect("required");
    let shape_col = column_index(py, fields, "shape", false)?;
    if !matches!(fields[name_col].data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        return Err(column_type_error(py, "layer_name", fields[name_col].data_type(), "utf8 or large_utf8"));
    }
    let float_list = |dt: &DataType| match dt {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            matches!(f.data_type(), DataType::Float16 | DataType::Float32 | DataType::Float64)
        }
        _ => false,
    };
    if !float_list(fields[weights_col].data_type()) {
        return Err(column_type_error(
            py,
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
            return Err(column_type_error(py, "shape", fields[s].data_type(), "list of int32 or int64"));
        }
    }
    let mut layers = Vec::new();
    let mut failures = Vec::new();
    let mut row_base = 0;
    for batch in &batches {
        let data = &batch.data;
        if data.null_count() > 0 {
            let row = (0..data.len()).find(|&r| data.is_null(r)).unwrap_or(0);
            failures.push((format!("row {}", row_base + row), "the whole record is null".to_owned()));
        }
        // A struct's children carry their own offsets; the struct's offset applies on top.
        let offset = data.offset();
        let names = arrow_array::make_array(data.child_data()[name_col].clone());
        let weights = &data.child_data()[weights_col];
        let shapes = shape_col.map(|s| &data.child_data()[s]);
        for r in 0..data.len() {
            let row = row_base + r;
            let Some(name) = string_at(&names, offset + r) else {
                failures.push((format!("row {row}"), "layer_name is null".to_owned()));
                continue;
            };
            match table_row(py, obj, &name, weights, shapes, offset + r, row) {
                Ok(tensor) => layers.push(TableLayer { name, tensor }),
                Err(e) => failures.push((name, crate::bridge::batch::reason_of(py, &e))),
            }
        }
        row_base += data.len();
    }
    Ok((layers, failures))
}

fn table_row(
    py: Python<'_>,
    producer: &Bound<'_, PyAny>,
    name: &str,
    weights: &ArrayData,
    shapes: Option<&ArrayData>,
    index: usize,
    row: usize,
) -> PyResult<BorrowedTensor> {
    if weights.is_null(index) {
        return Err(validation(
            py,
            name,
            format!("a null in row {row} of column \"weights\""),
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
                return Err(validation(
                    py,
                    name,
                    format!("shape {shape:?} for {len} weights in row {row}"),
                    "a shape whose product is the number of weights",
                    "fix the row's shape, or leave it null for a 1-D tensor",
                ));
            }
            shape
        }
        _ => vec![len as i64],
    };
    let child = &weights.child_data()[0];
    float_run(py, name, child, start, len, &shape, producer)
}

/// Quantize borrowed rows straight into the table's concatenated buffers, in parallel
/// (call detached). Returns the parts, or every failing layer with its reason.
pub fn quantize_rows(
    layers: &[(String, crate::quant::TensorView<'_>)],
    spec: &QuantSpec,
) -> Result<(TableParts, Vec<Option<Stats>>), Failures> {
    let sizes: Vec<(usize, usize, usize)> = layers.iter().map(|(_, v)| output_sizes(v.shape(), spec)).collect();
    let mut code_offsets = vec![0i64];
    let (mut scale_total, mut zp_total) = (0i64, 0i64);
    let (mut scale_offsets, mut zp_offsets) = (vec![0i32], vec![0i32]);
    for &(c, s, z) in &sizes {
        code_offsets.push(code_offsets.last().unwrap() + c as i64);
        scale_total += s as i64;
        zp_total += z as i64;
        let (Ok(s), Ok(z)) = (i32::try_from(scale_total), i32::try_from(zp_total)) else {
            let reason = "more than 2^31 scales in one table (Arrow list offsets are int32); split the table";
            return Err(vec![("table".to_owned(), reason.to_owned())]);
        };
        scale_offsets.push(s);
        zp_offsets.push(z);
    }
    let alloc_failure = |e: crate::Error| vec![("table".to_owned(), e.to_string())];
    let mut codes = zeroed::<u8>(*code_offsets.last().unwrap() as usize).map_err(alloc_failure)?;
    let mut scales = zeroed::<f32>(*scale_offsets.last().unwrap() as usize).map_err(alloc_failure)?;
    let mut zps = zeroed::<u8>(*zp_offsets.last().unwrap() as usize).map_err(alloc_failure)?;
    let outcomes: Vec<_> = {
        let code_parts = split_sizes(&mut codes, sizes.iter().map(|s| s.0));
        let scale_parts = split_sizes(&mut scales, sizes.iter().map(|s| s.1));
        let zp_parts = split_sizes(&mut zps, sizes.iter().map(|s| s.2));
        layers
            .par_iter()
            .zip(code_parts)
            .zip(scale_parts)
            .zip(zp_parts)
            .map(|((((_, view), c), s), z)| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    quantize_into(view, spec, OutBuffers { codes: c, scales: s, zero_points: z })
                }))
                .unwrap_or_else(|_| Err(crate::Error::Internal("a Rust panic was contained".into())))
            })
            .collect()
    };
    let mut stats = Vec::with_capacity(layers.len());
    let mut failures = Vec::new();
    for ((name, _), outcome) in layers.iter().zip(outcomes) {
        match outcome {
            Ok(s) => stats.push(s),
            Err(e) => failures.push((name.clone(), e.to_string())),
        }
    }
    if !failures.is_empty() {
        return Err(failures);
    }
    let scales = crate::files::output::scale_buffer(scales, spec.scale_dtype);
    let parts = TableParts {
        names: layers.iter().map(|(n, _)| n.clone()).collect(),
        codes: Buffer::from_vec(codes),
        code_offsets,
        scales,
        scale_offsets,
        zero_points: Buffer::from_vec(zps),
        zp_offsets,
        shapes: layers.iter().map(|(_, v)| v.shape().to_vec()).collect(),
        spec: *spec,
        passthrough: false,
    };
    Ok((parts, stats))
}

fn split_sizes<T>(mut data: &mut [T], sizes: impl Iterator<Item = usize>) -> Vec<&mut [T]> {
    let mut parts = Vec::new();
    for n in sizes {
        let (head, tail) = std::mem::take(&mut data).split_at_mut(n);
        parts.push(head);
        data = tail;
    }
    parts
}
