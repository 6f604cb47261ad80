//! The original system's result table (`arrow_quant_v2`, docs/compat.md): `layer_name`
//! (utf8), `quantized_data` (binary, one code per byte), `scales` and `zero_points`
//! (list<float32>, one zero point per scale), `shape` (list<int64>), `bit_width` (uint8).
//! Built from the same [`TableParts`] as the quantbridge table: the code and scale
//! buffers move in as they are; only the zero points are widened to float32.

use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, Float32Array, ListArray, RecordBatch, StringArray, UInt8Array};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Field, Schema};

use crate::quant::ScaleDType;
use crate::tables::TableParts;

fn float_list(values: Vec<f32>, offsets: Vec<i32>) -> Result<ArrayRef, ArrowError> {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    Ok(Arc::new(ListArray::try_new(item, OffsetBuffer::new(ScalarBuffer::from(offsets)), Arc::new(Float32Array::from(values)), None)?))
}

/// The original system's schema.
pub fn legacy_schema() -> Schema {
    let list = |dt: DataType| DataType::List(Arc::new(Field::new("item", dt, true)));
    Schema::new(vec![
        Field::new("layer_name", DataType::Utf8, false),
        Field::new("quantized_data", DataType::Binary, false),
        Field::new("scales", list(DataType::Float32), false),
        Field::new("zero_points", list(DataType::Float32), false),
        Field::new("shape", list(DataType::Int64), false),
        Field::new("bit_width", DataType::UInt8, false),
    ])
}

impl TableParts {
    /// The record batch in the original system's schema. Codes must be unpacked (one per
    /// byte, as the original stores them) and scales float32.
    pub fn into_legacy_batch(self) -> Result<RecordBatch, ArrowError> {
        if self.spec.pack || self.spec.scale_dtype != ScaleDType::F32 {
            return Err(ArrowError::InvalidArgumentError("the arrow_quant_v2 layout takes unpacked codes and float32 scales".into()));
        }
        let rows = self.names.len();
        let code_offsets = self
            .code_offsets
            .iter()
            .map(|&o| i32::try_from(o))
            .collect::<Result<Vec<i32>, _>>()
            .map_err(|_| ArrowError::InvalidArgumentError("more than 2 GiB of codes in one table: binary offsets are int32; use quantbridge.quantize_arrow (large_binary)".into()))?;
        let codes: ArrayRef = Arc::new(BinaryArray::try_new(OffsetBuffer::new(ScalarBuffer::from(code_offsets)), self.codes, None)?);
        let n_scales = *self.scale_offsets.last().unwrap_or(&0) as usize;
        let scale_values: ScalarBuffer<f32> = ScalarBuffer::new(self.scales, 0, n_scales);
        let item = Arc::new(Field::new("item", DataType::Float32, true));
        let scale_offsets = OffsetBuffer::new(ScalarBuffer::from(self.scale_offsets.clone()));
        let scales: ArrayRef = Arc::new(ListArray::try_new(item, scale_offsets, Arc::new(Float32Array::new(scale_values, None)), None)?);
        // One zero point per scale, so that `(code - zero_point) * scale` restores every
        // scheme: the integer zero point when asymmetric; for symmetric unpacked codes
        // (int8, centred on 0) zero.
        let zero_points: Vec<f32> = if self.spec.symmetric {
            vec![0.0; n_scales]
        } else {
            self.zero_points.as_slice()[..n_scales].iter().map(|&z| z as f32).collect()
        };
        let zero_points = float_list(zero_points, self.scale_offsets)?;
        let shapes = super::shape_list(&self.shapes, Field::new("item", DataType::Int64, true))?;
        let names: ArrayRef = Arc::new(StringArray::from(self.names));
        let bit_width: ArrayRef = Arc::new(UInt8Array::from(vec![self.spec.bits; rows]));
        RecordBatch::try_new(Arc::new(legacy_schema()), vec![names, codes, scales, zero_points, shapes, bit_width])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{quantize, ElemSlice, QuantSpec, TensorView};
    use crate::tables::{quantize_rows, FailedRows};
    use arrow_array::Array;

    fn per_tensor(bits: i64) -> QuantSpec {
        QuantSpec::from_options(bits, None, false, "tensor", "float32", false, false).unwrap()
    }

    #[test]
    fn skipped_rows_leave_the_kept_rows_intact_in_the_original_schema() {
        let a: Vec<f32> = (0..40).map(|i| i as f32 / 7.0 - 2.0).collect();
        let mut bad = vec![1f32; 24];
        bad[5] = f32::NAN;
        let c: Vec<f32> = (0..30).map(|i| (i * i) as f32 / 50.0).collect();
        let layers = vec![
            ("a".to_owned(), TensorView::contiguous(ElemSlice::F32(&a), vec![5, 8]).unwrap()),
            ("bad".to_owned(), TensorView::contiguous(ElemSlice::F32(&bad), vec![24]).unwrap()),
            ("c".to_owned(), TensorView::contiguous(ElemSlice::F32(&c), vec![30]).unwrap()),
        ];
        let spec = per_tensor(4);
        assert!(quantize_rows(&layers, &spec, FailedRows::Fail).is_err());
        let rows = quantize_rows(&layers, &spec, FailedRows::Skip).unwrap();
        assert_eq!(rows.skipped.len(), 1);
        assert_eq!(rows.skipped[0].0, "bad");
        let batch = rows.parts.into_legacy_batch().unwrap();
        assert_eq!(batch.schema().as_ref(), &legacy_schema());
        assert_eq!(batch.num_rows(), 2);
        let codes = batch.column(1).as_any().downcast_ref::<BinaryArray>().unwrap();
        let zps = batch.column(3).as_any().downcast_ref::<ListArray>().unwrap();
        for (row, (_, v)) in [&layers[0], &layers[2]].into_iter().enumerate() {
            let q = quantize(v, &spec).unwrap();
            assert_eq!(codes.value(row), &q.codes[..]);
            let zp = zps.value(row);
            let zp = zp.as_any().downcast_ref::<Float32Array>().unwrap();
            assert_eq!(zp.values().to_vec(), q.zero_points.unwrap().iter().map(|&z| z as f32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn packed_codes_are_refused() {
        let x = vec![1f32, 2.0, 3.0, 4.0];
        let layers = vec![("x".to_owned(), TensorView::contiguous(ElemSlice::F32(&x), vec![4]).unwrap())];
        let spec = QuantSpec::from_options(4, None, false, "tensor", "float32", true, false).unwrap();
        let rows = quantize_rows(&layers, &spec, FailedRows::Fail).unwrap();
        assert!(rows.parts.into_legacy_batch().is_err());
    }
}
