//! The scalar reference: docs/math.md written as literally as possible, one element at a time,
//! with no chunking, no fast rounding and no packing tricks. The fast engine is tested
//! against it bit for bit.

use super::layout::Layout;
use super::math::round_scale_up;
use super::pack::pack;
use super::quantized::{Quantized, Scales, SegmentLanes, StatsAcc, STAT_BLOCK};
use super::spec::QuantSpec;
use super::view::{DType, TensorView};
use crate::error::{Error, Result};
use half::{bf16, f16};

/// Quantize `view` the slow, obvious way.
pub fn quantize_reference(view: &TensorView<'_>, spec: &QuantSpec) -> Result<Quantized> {
    spec.validate()?;
    let values = read_row_major(view);
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { index: i, value: values[i] });
    }
    let (rows, cols) = view.rows_cols();
    let layout = Layout::new(rows, cols, spec.granularity);
    let n = values.len();

    // Element indices of each group, in scale order.
    let groups: Vec<Vec<usize>> = if layout.per_tensor {
        vec![(0..n).collect()]
    } else {
        let mut g = Vec::new();
        for r in 0..rows {
            for start in (0..cols).step_by(layout.group_len.max(1)) {
                g.push((r * cols + start..r * cols + (start + layout.group_len).min(cols)).collect());
            }
        }
        g
    };

    let bits = spec.bits as i32;
    let mut stored = vec![0u8; n];
    let mut scales = Vec::with_capacity(groups.len());
    let mut zps = Vec::with_capacity(groups.len());
    let mut acc = StatsAcc::default();
    for idx in &groups {
        let g: Vec<f32> = idx.iter().map(|&i| values[i]).collect();
        if spec.symmetric {
            let a = g.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let qmax = ((1 << (bits - 1)) - 1) as f32;
            let scale = spec_scale(a / qmax, spec).ok_or_else(scale_unrepresentable)?;
            let inv = 1.0f32 / scale;
            let mut restored = Vec::with_capacity(g.len());
            for (&i, &x) in idx.iter().zip(&g) {
                let q = (x * inv).round_ties_even().clamp(-qmax, qmax);
                stored[i] = if spec.pack { (q as i32 + (1 << (bits - 1))) as u8 } else { q as i8 as u8 };
                restored.push(q);
            }
            add_stats(&mut acc, &g, &restored, inv, scale, cols);
            scales.push(scale);
        } else {
            let mn = g.iter().fold(0.0f32, |m, &x| m.min(x));
            let mx = g.iter().fold(0.0f32, |m, &x| m.max(x));
            let qmax = ((1 << bits) - 1) as f32;
            let raw = (mx - mn) / qmax;
            if !raw.is_finite() {
                return Err(scale_unrepresentable());
            }
            let scale = spec_scale(raw, spec).ok_or_else(scale_unrepresentable)?;
            let zp = (-mn / scale).round_ties_even().clamp(0.0, qmax);
            let inv = 1.0f32 / scale;
            let mut restored = Vec::with_capacity(g.len());
            for (&i, &x) in idx.iter().zip(&g) {
                let q = ((x * inv).round_ties_even() + zp).clamp(0.0, qmax);
                stored[i] = q as u8;
                restored.push(q - zp);
            }
            add_stats(&mut acc, &g, &restored, inv, scale, cols);
            scales.push(scale);
            zps.push(zp as u8);
        }
    }
    Ok(Quantized {
        shape: view.shape().to_vec(),
        dtype: view.dtype(),
        spec: *spec,
        layout,
        codes: if spec.pack { pack(&stored, spec.bits) } else { stored },
        scales: Scales::from_f32(scales, spec.scale_dtype),
        zero_points: (!spec.symmetric).then_some(zps),
        stats: spec.stats.then(|| acc.finish(n)),
        gguf: None,
    })
}

/// The statistics of a group's values `xs`, whose code values less the zero point are
/// `ds`, one segment per row the group covers (docs/math.md: a group within a row;
/// per-tensor, each row), in blocks of `STAT_BLOCK`.
fn add_stats(acc: &mut StatsAcc, xs: &[f32], ds: &[f32], inv: f32, scale: f32, cols: usize) {
    for (x, d) in xs.chunks(cols.max(1)).zip(ds.chunks(cols.max(1))) {
        let mut lanes = SegmentLanes::default();
        for (xb, db) in x.chunks(STAT_BLOCK).zip(d.chunks(STAT_BLOCK)) {
            lanes.add(xb, db, inv, scale);
        }
        lanes.finish(acc, scale);
    }
}

/// `if scale == 0 (or subnormal): 1`, then rounded up to the scale dtype.
fn spec_scale(scale: f32, spec: &QuantSpec) -> Option<f32> {
    let scale = if scale == 0.0 || scale < f32::MIN_POSITIVE { 1.0 } else { scale };
    round_scale_up(scale, spec.scale_dtype)
}

fn scale_unrepresentable() -> Error {
    Error::validation("an unrepresentable scale", "a representable scale", "rescale the tensor")
}

/// Every element in row-major order, as float32, through the full multi-index.
pub fn read_row_major(view: &TensorView<'_>) -> Vec<f32> {
    let shape = view.shape().to_vec();
    let n = view.numel();
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..n {
        out.push(match view.dtype() {
            DType::F32 => view.typed::<f32>().unwrap().at(&index),
            DType::F16 => view.typed::<f16>().unwrap().at(&index),
            DType::BF16 => view.typed::<bf16>().unwrap().at(&index),
            DType::F64 => view.typed::<f64>().unwrap().at(&index),
        });
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}
