//! The result of quantization, and dequantization back to float32.

use half::{bf16, f16};
use rayon::prelude::*;

use super::layout::{split_at_cuts, Layout};
use super::math::GroupParams;
use super::pack::get_code;
use super::spec::{QuantSpec, ScaleDtype};
use super::view::DType;

/// Scales in their storage dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum Scales {
    /// float32 scales.
    F32(Vec<f32>),
    /// float16 scales (rounded up).
    F16(Vec<f16>),
    /// bfloat16 scales (rounded up).
    BF16(Vec<bf16>),
}

impl Scales {
    /// Store float32 scales (already rounded to `dtype`, so the conversion is exact).
    pub fn from_f32(values: Vec<f32>, dtype: ScaleDtype) -> Self {
        match dtype {
            ScaleDtype::F32 => Scales::F32(values),
            ScaleDtype::F16 => Scales::F16(values.iter().map(|&s| f16::from_f32(s)).collect()),
            ScaleDtype::BF16 => Scales::BF16(values.iter().map(|&s| bf16::from_f32(s)).collect()),
        }
    }

    /// Scale number `i` as float32.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Scales::F32(v) => v[i],
            Scales::F16(v) => v[i].to_f32(),
            Scales::BF16(v) => v[i].to_f32(),
        }
    }

    /// Number of scales.
    pub fn len(&self) -> usize {
        match self {
            Scales::F32(v) => v.len(),
            Scales::F16(v) => v.len(),
            Scales::BF16(v) => v.len(),
        }
    }

    /// True when there is no scale.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the scales take.
    pub fn nbytes(&self) -> usize {
        match self {
            Scales::F32(v) => v.len() * 4,
            Scales::F16(v) => v.len() * 2,
            Scales::BF16(v) => v.len() * 2,
        }
    }
}

/// Error statistics of a quantization (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Mean squared error.
    pub mse: f64,
    /// Largest |x - x'|.
    pub max_abs_error: f64,
    /// 10·log10(Σx² / Σ(x−x')²); +inf when the error is zero.
    pub sqnr_db: f64,
}

/// Running sums behind [`Stats`], combined in a fixed order so results never depend on
/// the thread count.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatsAcc {
    /// Σ(x − x')².
    pub sum_sq_err: f64,
    /// Σx².
    pub sum_sq: f64,
    /// max |x − x'|.
    pub max_abs: f32,
}

impl StatsAcc {
    /// Account for one element and its dequantized value.
    #[inline(always)]
    pub fn add(&mut self, x: f32, dequantized: f32) {
        let err = (x - dequantized).abs();
        self.sum_sq_err += (err as f64) * (err as f64);
        self.sum_sq += (x as f64) * (x as f64);
        self.max_abs = self.max_abs.max(err);
    }

    /// Fold another chunk's sums into this one.
    pub fn merge(&mut self, other: &StatsAcc) {
        self.sum_sq_err += other.sum_sq_err;
        self.sum_sq += other.sum_sq;
        self.max_abs = self.max_abs.max(other.max_abs);
    }

    /// The statistics of `n` elements.
    pub fn finish(&self, n: usize) -> Stats {
        let mse = if n == 0 { 0.0 } else { self.sum_sq_err / n as f64 };
        let sqnr_db = if self.sum_sq_err == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (self.sum_sq / self.sum_sq_err).log10()
        };
        Stats { mse, max_abs_error: self.max_abs as f64, sqnr_db }
    }
}

/// A quantized tensor: codes, scales, zero points and what produced them.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    /// Shape of the source tensor.
    pub shape: Vec<usize>,
    /// dtype of the source tensor.
    pub dtype: DType,
    /// The spec it was quantized with.
    pub spec: QuantSpec,
    /// Rows, columns and groups.
    pub layout: Layout,
    /// The code stream (packed, or one byte per code; int8 bit patterns for unpacked symmetric).
    pub codes: Vec<u8>,
    /// One scale per group, shape [`Layout::scales_shape`].
    pub scales: Scales,
    /// One zero point per group (asymmetric only).
    pub zero_points: Option<Vec<u8>>,
    /// Error statistics, when asked for.
    pub stats: Option<Stats>,
}

impl Quantized {
    /// Bytes of codes, scales and zero points together.
    pub fn nbytes(&self) -> usize {
        self.codes.len() + self.scales.nbytes() + self.zero_points.as_ref().map_or(0, Vec::len)
    }

    /// Source bytes divided by [`Self::nbytes`].
    pub fn compression_ratio(&self) -> f64 {
        let source = self.layout.numel() * self.dtype.itemsize();
        source as f64 / self.nbytes().max(1) as f64
    }

    /// The encode/decode parameters of group `g`, rebuilt from what is stored.
    pub fn group(&self, g: usize) -> GroupParams {
        let scale = self.scales.get(g);
        let bits = self.spec.bits;
        let (zp, lo, hi, offset) = if self.spec.symmetric {
            let qmax = ((1i32 << (bits - 1)) - 1) as f32;
            (0.0, -qmax, qmax, if self.spec.pack { 1 << (bits - 1) } else { 0 })
        } else {
            let zp = self.zero_points.as_ref().map_or(0.0, |z| z[g] as f32);
            (zp, 0.0, self.spec.max_code() as f32, 0)
        };
        GroupParams { scale, inv: 1.0 / scale, zp, lo, hi, offset }
    }

    /// The code value (before the storage offset) of element `e`.
    #[inline]
    fn code_value(&self, e: usize, offset: i32) -> f32 {
        if self.spec.pack {
            (get_code(&self.codes, self.spec.bits, e) as i32 - offset) as f32
        } else if self.spec.symmetric {
            self.codes[e] as i8 as f32
        } else {
            self.codes[e] as f32
        }
    }

    /// `(q - zp) * scale` for every element, row-major, in float32.
    pub fn dequantize(&self) -> Vec<f32> {
        let n = self.layout.numel();
        let mut out = vec![0.0f32; n];
        let bounds = self.layout.chunk_bounds();
        let pieces = split_at_cuts(&mut out, &bounds[1..bounds.len() - 1]);
        let work = |(start, piece): (usize, &mut [f32])| {
            let mut current: Option<(usize, GroupParams)> = None;
            for (k, slot) in piece.iter_mut().enumerate() {
                let e = start + k;
                let g = self.layout.group_of(e);
                let params = match current {
                    Some((cg, p)) if cg == g => p,
                    _ => {
                        let p = self.group(g);
                        current = Some((g, p));
                        p
                    }
                };
                *slot = params.decode_value(self.code_value(e, params.offset));
            }
        };
        if pieces.len() == 1 {
            pieces.into_iter().map(|p| (0, p)).for_each(work);
        } else {
            bounds.par_iter().copied().zip(pieces).for_each(work);
        }
        out
    }
}
