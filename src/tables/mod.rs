//! The §5 table layout in Arrow (docs/formats.md), pure Rust: reading list rows of an
//! input table, quantizing rows into the output's buffers ([`quantize`]), and building
//! the output record batch. Shared by the Python surface and the file job.

mod legacy;
mod quantize;
pub use legacy::legacy_schema;
pub use quantize::{quantize_rows, FailedRows, Failures, QuantizedRows, TableFailure};

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Float16Array, Float32Array, Int32Array, Int64Array, LargeBinaryArray, ListArray,
    RecordBatch, StringArray, UInt16Array, UInt8Array,
};
use arrow_buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field, Schema};
use half::{bf16, f16};

use crate::quant::{Granularity, QuantSpec, ScaleDType};

/// Field metadata marking uint16 values as bfloat16 bit patterns (Arrow has no bfloat16).
pub const BF16_METADATA: (&str, &str) = ("quantbridge.dtype", "bfloat16");

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
    /// Rows are tensors passed through unchanged: `codes` holds their raw bytes, `bits` is
    /// 0, there are no scales and `zero_points` is null.
    pub passthrough: bool,
}

fn scale_field(dtype: ScaleDType) -> Field {
    match dtype {
        ScaleDType::F32 => Field::new("item", DataType::Float32, false),
        ScaleDType::F16 => Field::new("item", DataType::Float16, false),
        ScaleDType::BF16 => Field::new("item", DataType::UInt16, false).with_metadata(
            [(BF16_METADATA.0.to_owned(), BF16_METADATA.1.to_owned())].into_iter().collect::<std::collections::HashMap<_, _>>(),
        ),
    }
}

/// The output schema (docs/formats.md (Arrow tables)), with the spec as JSON in its metadata.
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

/// Scales as an Arrow buffer of their stored type (aligned for it).
pub fn scale_buffer(scales: Vec<f32>, dtype: ScaleDType) -> Buffer {
    match dtype {
        ScaleDType::F32 => Buffer::from_vec(scales),
        ScaleDType::F16 => Buffer::from_vec(scales.iter().map(|&s| f16::from_f32(s)).collect::<Vec<_>>()),
        ScaleDType::BF16 => Buffer::from_vec(scales.iter().map(|&s| bf16::from_f32(s).to_bits()).collect::<Vec<u16>>()),
    }
}

fn offsets_i32(v: Vec<i32>) -> OffsetBuffer<i32> {
    OffsetBuffer::new(ScalarBuffer::from(v))
}

/// The `shape` column: one list<int64> row per tensor, items described by `item`.
fn shape_list(shapes: &[Vec<usize>], item: Field) -> Result<ArrayRef, arrow_schema::ArrowError> {
    let mut offsets = vec![0i32];
    let mut values = Vec::new();
    for s in shapes {
        values.extend(s.iter().map(|&d| d as i64));
        offsets.push(values.len() as i32);
    }
    Ok(Arc::new(ListArray::try_new(Arc::new(item), offsets_i32(offsets), Arc::new(Int64Array::from(values)), None)?))
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
            ScaleDType::F32 => Arc::new(Float32Array::new(ScalarBuffer::new(self.scales, 0, n_scales), None)),
            ScaleDType::F16 => Arc::new(Float16Array::new(ScalarBuffer::new(self.scales, 0, n_scales), None)),
            ScaleDType::BF16 => Arc::new(UInt16Array::new(ScalarBuffer::new(self.scales, 0, n_scales), None)),
        };
        let scales: ArrayRef = Arc::new(ListArray::try_new(
            Arc::new(scale_field(self.spec.scale_dtype)),
            offsets_i32(self.scale_offsets),
            scale_values,
            None,
        )?);
        let n_zps = *self.zp_offsets.last().unwrap_or(&0) as usize;
        let zp_values: ArrayRef = Arc::new(UInt8Array::new(ScalarBuffer::new(self.zero_points, 0, n_zps), None));
        let zp_nulls = (self.spec.symmetric || self.passthrough).then(|| NullBuffer::new_null(rows));
        let zero_points: ArrayRef = Arc::new(ListArray::try_new(
            Arc::new(Field::new("item", DataType::UInt8, false)),
            offsets_i32(self.zp_offsets),
            zp_values,
            zp_nulls,
        )?);
        let shapes = shape_list(&self.shapes, Field::new("item", DataType::Int64, false))?;
        let bits: ArrayRef = Arc::new(UInt8Array::from(vec![if self.passthrough { 0 } else { self.spec.bits }; rows]));
        let group = match self.spec.granularity {
            Granularity::Group(g) if !self.passthrough => Some(g as i32),
            _ => None,
        };
        let group_size: ArrayRef = Arc::new(Int32Array::from(vec![group; rows]));
        let symmetric: ArrayRef = Arc::new(BooleanArray::from(vec![self.spec.symmetric; rows]));
        RecordBatch::try_new(schema, vec![names, codes, scales, zero_points, shapes, bits, group_size, symmetric])
    }
}

/// Start and length (in values of the child) of row `row` of a list-like column.
pub fn list_row(data: &ArrayData, row: usize) -> Option<(usize, usize)> {
    let i = data.offset() + row;
    match data.data_type() {
        DataType::List(_) => {
            let offsets = data.buffers()[0].typed_data::<i32>();
            let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
            Some((a, b - a))
        }
        DataType::LargeList(_) => {
            let offsets = data.buffers()[0].typed_data::<i64>();
            let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
            Some((a, b - a))
        }
        DataType::FixedSizeList(_, k) => Some((i * *k as usize, *k as usize)),
        _ => None,
    }
}

/// The integer values of row `row` of a `list<int32|int64>` column (a shape).
pub fn int_list_row(data: &ArrayData, row: usize) -> Option<Vec<i64>> {
    let (start, len) = list_row(data, row)?;
    let child = &data.child_data()[0];
    let at = child.offset() + start;
    match child.data_type() {
        DataType::Int32 => Some(child.buffers()[0].typed_data::<i32>()[at..at + len].iter().map(|&v| v as i64).collect()),
        DataType::Int64 => Some(child.buffers()[0].typed_data::<i64>()[at..at + len].to_vec()),
        _ => None,
    }
}
