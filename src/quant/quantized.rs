//! The result of quantization, and dequantization back to float32.

use half::{bf16, f16};

use super::layout::{split_at_cuts, Layout};
use super::math::GroupParams;
use super::pack::get_code;
use super::spec::{QuantSpec, ScaleDType};
use super::view::DType;
use super::alloc::Allocator;
use super::simd::Avx2;
use crate::error::Result;

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
    pub fn from_f32(values: Vec<f32>, dtype: ScaleDType) -> Self {
        match dtype {
            ScaleDType::F32 => Scales::F32(values),
            ScaleDType::F16 => Scales::F16(values.iter().map(|&s| f16::from_f32(s)).collect()),
            ScaleDType::BF16 => Scales::BF16(values.iter().map(|&s| bf16::from_f32(s)).collect()),
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
        self.len() * self.dtype().itemsize()
    }

    /// The stored dtype.
    pub fn dtype(&self) -> ScaleDType {
        match self {
            Scales::F32(_) => ScaleDType::F32,
            Scales::F16(_) => ScaleDType::F16,
            Scales::BF16(_) => ScaleDType::BF16,
        }
    }
}

/// Error statistics of a quantization (docs/formats.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Mean squared error.
    pub mse: f64,
    /// Largest |x - x'|.
    pub max_abs_error: f64,
    /// 10·log10(Σx² / Σ(x−x')²); +inf when the error is zero.
    pub sqnr_db: f64,
}

/// Lanes of one segment's sums (docs/math.md, statistics): a segment (a group's elements
/// within one row) comes in blocks of at most [`STAT_BLOCK`] elements; element `j` of a
/// block goes to lane `j % 8`, whose squares (in units of the scale) are summed in float32
/// over the block and then added to the lane's float64 sum, so the loop vectorizes. When
/// the segment ends the lanes are folded pairwise ([`fold_lanes`]) and scaled by `scale²`
/// into a [`StatsAcc`]. A fixed order, the same in every kernel build and in the scalar
/// reference.
#[derive(Debug, Clone, Copy, Default)]
pub struct SegmentLanes {
    sq_err: [f64; STAT_LANES],
    sq: [f64; STAT_LANES],
    max_abs: [f32; STAT_LANES],
}

/// Lanes of [`SegmentLanes`].
pub const STAT_LANES: usize = 8;

/// One block's float32 sums per lane (see [`SegmentLanes`]). The squares are of values
/// in units of the group's scale (`x·inv`, and `|x·inv − (q − zp)|` for the error), which
/// stay below ~2^16 whatever the tensor's magnitude, so float32 sums cannot overflow.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockSums {
    /// Σ|x·inv − (q − zp)|² per lane.
    pub sq_err: [f32; STAT_LANES],
    /// Σ(x·inv)² per lane.
    pub sq: [f32; STAT_LANES],
    /// max |x − (q − zp)·scale| per lane (exact, in the tensor's units).
    pub max_abs: [f32; STAT_LANES],
}

impl BlockSums {
    /// Element `x`, whose code value less the zero point is `d` (`q − zp`), into lane `k`.
    #[inline(always)]
    pub fn lane(&mut self, k: usize, x: f32, d: f32, inv: f32, scale: f32) {
        let v = x * inv;
        let e = (v - d).abs();
        self.sq_err[k] += e * e;
        self.sq[k] += v * v;
        let err = (x - d * scale).abs();
        self.max_abs[k] = if err > self.max_abs[k] { err } else { self.max_abs[k] };
    }
}

/// Largest block [`SegmentLanes::add`] takes.
pub const STAT_BLOCK: usize = 64;

impl SegmentLanes {
    /// Account for one block of values `xs` whose code values less the zero point are
    /// `ds` (at most [`STAT_BLOCK`] elements; the segment's blocks come in order, each but
    /// the last full), in a group of scale `scale` (`inv` = 1/scale as the encoder has it).
    #[inline(always)]
    pub fn add(&mut self, xs: &[f32], ds: &[f32], inv: f32, scale: f32) {
        debug_assert!(xs.len() <= STAT_BLOCK && xs.len() == ds.len());
        let mut block = BlockSums::default();
        for (j, (&x, &d)) in xs.iter().zip(ds).enumerate() {
            block.lane(j % STAT_LANES, x, d, inv, scale);
        }
        self.add_block(&block);
    }

    /// Add one block's float32 lane sums.
    #[inline(always)]
    pub fn add_block(&mut self, block: &BlockSums) {
        for k in 0..STAT_LANES {
            self.sq_err[k] += block.sq_err[k] as f64;
            self.sq[k] += block.sq[k] as f64;
            self.max_abs[k] = if block.max_abs[k] > self.max_abs[k] { block.max_abs[k] } else { self.max_abs[k] };
        }
    }

    /// Fold the lanes into `acc` ([`fold_lanes`]), back in the tensor's units (× `scale²`,
    /// in float64): the segment is done.
    #[inline(always)]
    pub fn finish(self, acc: &mut StatsAcc, scale: f32) {
        let max_abs = self.max_abs.iter().fold(0f32, |m, &x| if x > m { x } else { m });
        acc.add_segment(fold_lanes(&self.sq_err), fold_lanes(&self.sq), max_abs, scale);
    }
}

/// A segment's eight float64 lane sums as one: `((l0 + l4) + (l2 + l6)) + ((l1 + l5) +
/// (l3 + l7))`, the order in which 512-bit registers halve (docs/math.md, statistics).
#[inline(always)]
pub fn fold_lanes(lanes: &[f64; STAT_LANES]) -> f64 {
    let s = [lanes[0] + lanes[4], lanes[1] + lanes[5], lanes[2] + lanes[6], lanes[3] + lanes[7]];
    (s[0] + s[2]) + (s[1] + s[3])
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

    /// Account for a run of elements `xs` and their dequantized values `ys`: element `k`
    /// into float64 lane `k % 8`, the lanes folded as [`fold_lanes`] folds them when the
    /// run is done. A fixed order (so fixed bits) whose eight chains run as vectors
    /// ([`Avx2::add_run_lanes`] when `cpu` is given), where one [`Self::add`] per element
    /// waits on the previous one.
    #[inline(always)]
    pub fn add_run(&mut self, xs: &[f32], ys: &[f32], cpu: Option<Avx2>) {
        debug_assert_eq!(xs.len(), ys.len());
        let (mut sq_err, mut sq, mut max_abs) = ([0f64; STAT_LANES], [0f64; STAT_LANES], [0f32; STAT_LANES]);
        let taken = match cpu {
            #[cfg(target_arch = "x86_64")]
            Some(cpu) => cpu.add_run_lanes(xs, ys, &mut sq_err, &mut sq, &mut max_abs),
            _ => 0,
        };
        for (i, (&x, &y)) in xs.iter().zip(ys).enumerate().skip(taken) {
            let k = i % STAT_LANES;
            let err = (x - y).abs();
            sq_err[k] += (err as f64) * (err as f64);
            sq[k] += (x as f64) * (x as f64);
            // Compare-and-select (as in `min_max`): NaN-free inputs.
            max_abs[k] = if err > max_abs[k] { err } else { max_abs[k] };
        }
        self.sum_sq_err += fold_lanes(&sq_err);
        self.sum_sq += fold_lanes(&sq);
        self.max_abs = max_abs.iter().fold(self.max_abs, |m, &x| if x > m { x } else { m });
    }

    /// Fold another chunk's sums into this one.
    pub fn merge(&mut self, other: &StatsAcc) {
        self.sum_sq_err += other.sum_sq_err;
        self.sum_sq += other.sum_sq;
        self.max_abs = self.max_abs.max(other.max_abs);
    }

    /// Account for one finished segment: its folded lane sums (in units of the scale) and
    /// its largest error.
    #[inline(always)]
    pub fn add_segment(&mut self, sq_err: f64, sq: f64, max_abs: f32, scale: f32) {
        let scale2 = (scale as f64) * (scale as f64);
        self.sum_sq_err += sq_err * scale2;
        self.sum_sq += sq * scale2;
        self.max_abs = self.max_abs.max(max_abs);
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
    /// A GGUF block type: then `codes` are its blocks, row after row, `scales` is empty and
    /// `spec` only describes them (bits per code, block size as the group).
    pub gguf: Option<super::gguf::GgufType>,
}

impl Quantized {
    /// Hand the result's vectors to `alloc` for reuse.
    pub fn recycle(self, alloc: &dyn Allocator) {
        alloc.recycle_bytes(self.codes);
        if let Scales::F32(scales) = self.scales {
            alloc.recycle_floats(scales);
        }
        if let Some(zero_points) = self.zero_points {
            alloc.recycle_bytes(zero_points);
        }
    }

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

    /// `(q - zp) * scale` for every element, row-major, in float32: runs of one group at a
    /// time, whole bytes unpacked in blocks (branch-free, so it vectorizes), chunks in
    /// parallel. Bit-identical to [`Self::dequantize_reference`].
    /// Dequantize with the default engine ([`super::Engine::dequantize`]).
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        super::Engine::default().dequantize(self)
    }

    /// Dequantize into `out` (of `numel` values, all overwritten) with the kernel build
    /// `cpu` allows.
    pub(crate) fn dequantize_into(&self, mut out: Vec<f32>, cpu: Option<Avx2>) -> Result<Vec<f32>> {
        let bounds = self.layout.chunk_bounds();
        let pieces = split_at_cuts(&mut out, &bounds[1..bounds.len() - 1]);
        let work = |(start, piece): (usize, &mut [f32])| {
            if let Some(cpu) = cpu {
                return cpu.vectorize(#[inline(always)] || self.decode_chunk(start, piece));
            }
            self.decode_chunk(start, piece)
        };
        super::tasks::map_pieces(bounds.iter().copied().zip(pieces).collect(), work);
        Ok(out)
    }

    /// Decode elements `start..start + out.len()`, one group's run at a time.
    #[inline(always)]
    fn decode_chunk(&self, start: usize, out: &mut [f32]) {
        let lay = &self.layout;
        let end = start + out.len();
        let mut e = start;
        while e < end {
            let len = if lay.per_tensor {
                end - e
            } else {
                let col = e % lay.cols;
                let group_end = ((col / lay.group_len + 1) * lay.group_len).min(lay.cols);
                (group_end - col).min(end - e)
            };
            let params = self.group(lay.group_of(e));
            self.decode_run(e, &mut out[e - start..e - start + len], &params);
            e += len;
        }
    }

    /// Decode elements `e0..e0 + out.len()`, all in the group `params` describes.
    #[inline(always)]
    fn decode_run(&self, e0: usize, out: &mut [f32], params: &GroupParams) {
        const BLOCK: usize = 64;
        let bits = if self.spec.pack { self.spec.bits } else { 8 };
        let per_byte = (8 / bits) as usize;
        let signed_bytes = !self.spec.pack && self.spec.symmetric;
        let offset = params.offset;
        let mut i = 0;
        // Up to the first byte boundary, one code at a time.
        while i < out.len() && !(e0 + i).is_multiple_of(per_byte) {
            out[i] = self.decode_one(e0 + i, params);
            i += 1;
        }
        let mut codes = [0u8; BLOCK];
        while out.len() - i >= BLOCK {
            let byte = (e0 + i) / per_byte;
            let src = &self.codes[byte..byte + BLOCK / per_byte];
            match bits {
                8 => codes.copy_from_slice(src),
                4 => {
                    for (pair, &b) in codes.chunks_exact_mut(2).zip(src) {
                        pair[0] = b & 0x0f;
                        pair[1] = b >> 4;
                    }
                }
                _ => {
                    for (quad, &b) in codes.chunks_exact_mut(4).zip(src) {
                        quad[0] = b & 0x03;
                        quad[1] = (b >> 2) & 0x03;
                        quad[2] = (b >> 4) & 0x03;
                        quad[3] = b >> 6;
                    }
                }
            }
            // Two branch-free loops rather than one with a per-code branch.
            let block = &mut out[i..i + BLOCK];
            if signed_bytes {
                for (slot, &c) in block.iter_mut().zip(&codes) {
                    *slot = params.decode_value(c as i8 as f32);
                }
            } else {
                for (slot, &c) in block.iter_mut().zip(&codes) {
                    *slot = params.decode_value((c as i32 - offset) as f32);
                }
            }
            i += BLOCK;
        }
        for (k, slot) in out[i..].iter_mut().enumerate() {
            *slot = self.decode_one(e0 + i + k, params);
        }
    }

    #[inline]
    fn decode_one(&self, e: usize, params: &GroupParams) -> f32 {
        params.decode_value(self.code_value(e, params.offset))
    }

    /// The scalar reference of [`Self::dequantize`]: one element at a time, literally.
    pub fn dequantize_reference(&self) -> Vec<f32> {
        (0..self.layout.numel())
            .map(|e| {
                let params = self.group(self.layout.group_of(e));
                params.decode_value(self.code_value(e, params.offset))
            })
            .collect()
    }
}
