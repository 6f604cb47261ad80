//! Arrow tables (SPEC §5): layers in as rows of (`layer_name`, `weights`, `shape`), each row
//! borrowed in place through the guard; results out as one Arrow record batch whose
//! `codes` column is a large_binary buffer the engine writes straight into.

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float16Array, Float32Array, Int32Array, Int64Array, LargeBinaryArray, ListArray,
    RecordBatch, StringArray, UInt16Array, UInt8Array,
};
use arrow_buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field, Fields, Schema};
use half::f16;
use pyo3::intern;
use pyo3::prelude::*;
use rayon::prelude::*;

use crate::bridge::arrow_tensor::{float_run, int_list_row, list_row};
use crate::bridge::batch::failure_message;
use crate::bridge::borrowed::BorrowedTensor;
use crate::bridge::errors::{validation, BatchQuantizationError};
use crate::bridge::ffi::from_python::arrow::{import_array, import_stream, ArrowColumn};
use crate::quant::{output_sizes, quantize_into, zeroed, Granularity, OutBuffers, QuantSpec, ScaleDtype, Stats};

/// Field metadata marking uint16 values as bfloat16 bit patterns (Arrow has no bfloat16).
pub const BF16_METADATA: (&str, &str) = ("quantbridge.dtype", "bfloat16");

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

/// The §5 output: per-layer buffers concatenated, ready to become a record batch.
pub struct TableParts {
    /// `layer_name` per row.
    pub names: Vec<String>,
    /// Every layer's codes, back to back.
    pub codes: Buffer,
    /// `codes` offsets (rows + 1).
    pub code_offsets: Vec<i64>,
    /// Every layer's scales, back to back, in their stored dtype.
    pub scales: Buffer,
    /// `scales` offsets (rows + 1), in elements.
    pub scale_offsets: Vec<i32>,
    /// Every layer's zero points (empty when symmetric).
    pub zero_points: Buffer,
    /// `zero_points` offsets (rows + 1).
    pub zp_offsets: Vec<i32>,
    /// Source shapes.
    pub shapes: Vec<Vec<usize>>,
    /// The spec every row shares.
    pub spec: QuantSpec,
}

fn scale_field(dtype: ScaleDtype) -> Field {
    match dtype {
        ScaleDtype::F32 => Field::new("item", DataType::Float32, false),
        ScaleDtype::F16 => Field::new("item", DataType::Float16, false),
        ScaleDtype::BF16 => Field::new("item", DataType::UInt16, false).with_metadata(
            [(BF16_METADATA.0.to_owned(), BF16_METADATA.1.to_owned())].into_iter().collect::<std::collections::HashMap<_, _>>(),
        ),
    }
}

/// The output schema (SPEC §5), with the spec as JSON in its metadata.
pub fn output_schema(spec: &QuantSpec) -> Schema {
    let list = |f: Field| DataType::List(Arc::new(f));
    let fields = vec![
        Field::new("layer_name", DataType::Utf8, false),
        Field::new("codes", DataType::LargeBinary, false),
        Field::new("scales", list(scale_field(spec.scale_dtype)), false),
        Field::new("zero_points", list(Field::new("item", DataType::UInt8, false)), true),
        Field::new("shape", list(Field::new("item", DataType::Int64, false)), false),
        Field::new("bits", DataType::UInt8, false),
        Field::new("group_size", DataType::Int32, true),
        Field::new("symmetric", DataType::Boolean, false),
    ];
    let metadata = [("quantbridge.spec".to_owned(), spec_json(spec))].into_iter().collect::<std::collections::HashMap<_, _>>();
    Schema::new(fields).with_metadata(metadata)
}

/// The spec as a small JSON object (also used by the file writers).
pub fn spec_json(spec: &QuantSpec) -> String {
    let (granularity, group) = match spec.granularity {
        Granularity::Group(g) => ("group", g.to_string()),
        Granularity::Channel => ("channel", "null".into()),
        Granularity::Tensor => ("tensor", "null".into()),
    };
    format!(
        "{{\"bits\": {}, \"group_size\": {group}, \"granularity\": \"{granularity}\", \"symmetric\": {}, \"scale_dtype\": \"{}\", \"packed\": {}}}",
        spec.bits,
        spec.symmetric,
        spec.scale_dtype.name(),
        spec.pack
    )
}

fn offsets_i32(v: Vec<i32>) -> OffsetBuffer<i32> {
    OffsetBuffer::new(ScalarBuffer::from(v))
}

impl TableParts {
    /// The record batch; every buffer is moved in, none is copied.
    pub fn into_batch(self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let schema = Arc::new(output_schema(&self.spec));
        let rows = self.names.len();
        let names: ArrayRef = Arc::new(StringArray::from(self.names));
        let codes: ArrayRef = Arc::new(LargeBinaryArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(self.code_offsets)),
            self.codes,
            None,
        )?);
        let n_scales = *self.scale_offsets.last().unwrap_or(&0) as usize;
        let scale_values: ArrayRef = match self.spec.scale_dtype {
            ScaleDtype::F32 => Arc::new(Float32Array::new(ScalarBuffer::new(self.scales, 0, n_scales), None)),
            ScaleDtype::F16 => Arc::new(Float16Array::new(ScalarBuffer::new(self.scales, 0, n_scales), None)),
            ScaleDtype::BF16 => Arc::new(UInt16Array::new(ScalarBuffer::new(self.scales, 0, n_scales), None)),
        };
        let scales: ArrayRef = Arc::new(ListArray::try_new(
            Arc::new(scale_field(self.spec.scale_dtype)),
            offsets_i32(self.scale_offsets),
            scale_values,
            None,
        )?);
        let n_zps = *self.zp_offsets.last().unwrap_or(&0) as usize;
        let zp_values: ArrayRef = Arc::new(UInt8Array::new(ScalarBuffer::new(self.zero_points, 0, n_zps), None));
        let zp_nulls = self.spec.symmetric.then(|| NullBuffer::new_null(rows));
        let zero_points: ArrayRef = Arc::new(ListArray::try_new(
            Arc::new(Field::new("item", DataType::UInt8, false)),
            offsets_i32(self.zp_offsets),
            zp_values,
            zp_nulls,
        )?);
        let mut shape_offsets = vec![0i32];
        let mut shape_values = Vec::new();
        for s in &self.shapes {
            shape_values.extend(s.iter().map(|&d| d as i64));
            shape_offsets.push(shape_values.len() as i32);
        }
        let shapes: ArrayRef = Arc::new(ListArray::try_new(
            Arc::new(Field::new("item", DataType::Int64, false)),
            offsets_i32(shape_offsets),
            Arc::new(Int64Array::from(shape_values)),
            None,
        )?);
        let bits: ArrayRef = Arc::new(UInt8Array::from(vec![self.spec.bits; rows]));
        let group = match self.spec.granularity {
            Granularity::Group(g) => Some(g as i32),
            _ => None,
        };
        let group_size: ArrayRef = Arc::new(Int32Array::from(vec![group; rows]));
        let symmetric: ArrayRef = Arc::new(BooleanArray::from(vec![self.spec.symmetric; rows]));
        RecordBatch::try_new(schema, vec![names, codes, scales, zero_points, shapes, bits, group_size, symmetric])
    }
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
    let scales = match spec.scale_dtype {
        ScaleDtype::F32 => Buffer::from_vec(scales),
        // Scales were rounded up to these dtypes already, so the conversion is exact.
        ScaleDtype::F16 => Buffer::from_vec(scales.iter().map(|&s| f16::from_f32(s)).collect::<Vec<_>>()),
        ScaleDtype::BF16 => {
            Buffer::from_vec(scales.iter().map(|&s| half::bf16::from_f32(s).to_bits()).collect::<Vec<u16>>())
        }
    };
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

/// The error for a table some of whose rows failed.
pub fn table_failures(py: Python<'_>, failures: &[(String, String)]) -> PyErr {
    let dict = pyo3::types::PyDict::new(py);
    for (name, reason) in failures {
        let _ = dict.set_item(name, reason);
    }
    match py.get_type::<BatchQuantizationError>().call1((failure_message(failures),)) {
        Ok(err) => {
            let _ = err.setattr("failures", dict);
            PyErr::from_value(err)
        }
        Err(e) => e,
    }
}
