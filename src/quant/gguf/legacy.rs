//! ggml's 32-value block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0. Each quantizer repeats the
//! float32 operations of ggml's reference (`quantize_row_q4_0_ref`, …, mirrored by gguf-py's
//! `gguf.quants`) in the same order, so the bytes are the same; each dequantizer repeats
//! gguf-py's, so the values are.

use half::f16;

/// Values per block.
pub const QK: usize = 32;

#[inline(always)]
fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Largest |x| of a block: eight independent lanes, so it vectorizes.
#[inline(always)]
fn absmax(x: &[f32]) -> f32 {
    let x = block(x);
    let mut lanes = [0f32; 8];
    for i in 0..QK / 8 {
        for k in 0..8 {
            let a = x[8 * i + k].abs();
            lanes[k] = if a > lanes[k] { a } else { lanes[k] };
        }
    }
    for width in [4, 2, 1] {
        for k in 0..width {
            lanes[k] = if lanes[k + width] > lanes[k] { lanes[k + width] } else { lanes[k] };
        }
    }
    lanes[0]
}

/// A block as a fixed-size array, so the loops over it have no bounds checks and vectorize.
#[inline(always)]
fn block(x: &[f32]) -> &[f32; QK] {
    x.try_into().expect("blocks are QK values")
}

/// The signed value of largest magnitude, the first one on ties, as ggml picks it. The
/// block's minimum and maximum decide unless they tie in magnitude (then the first index
/// holding that magnitude does, found without branches).
#[inline(always)]
fn signed_absmax(x: &[f32]) -> f32 {
    let (lo, hi) = raw_min_max(x);
    if hi == -lo {
        return first_of_magnitude(x, hi);
    }
    // A select, not a branch: on real weights either side wins half the time, and a
    // mispredicted branch per block costs more than the block's arithmetic.
    let hi_wins = 0u32.wrapping_sub((hi > -lo) as u32);
    f32::from_bits((hi.to_bits() & hi_wins) | (lo.to_bits() & !hi_wins))
}

/// The first value of `x` whose magnitude is `amax` (the block's minimum and maximum tie in
/// magnitude), found without branches; +0.0, ggml's starting value, for an all-zero block.
#[cold]
#[inline(never)]
fn first_of_magnitude(x: &[f32], amax: f32) -> f32 {
    if amax == 0.0 {
        return 0.0;
    }
    let x = block(x);
    let mut first = [QK as u32; 8];
    for i in 0..QK / 8 {
        for k in 0..8 {
            let j = (8 * i + k) as u32;
            let hit = x[8 * i + k].abs() == amax;
            first[k] = if hit && j < first[k] { j } else { first[k] };
        }
    }
    x[first.iter().copied().min().unwrap_or(0) as usize]
}

/// Smallest and largest value of a block, as ggml picks them (see [`raw_min_max`]).
#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (min, max) = raw_min_max(x);
    // ggml keeps the first of equal values; only a zero's sign can tell them apart.
    let first_zero = || x.iter().copied().find(|&v| v == 0.0).unwrap_or(0.0);
    (if min == 0.0 { first_zero() } else { min }, if max == 0.0 { first_zero() } else { max })
}

/// Smallest and largest value of a block, in eight lanes (a zero's sign is arbitrary).
#[inline(always)]
fn raw_min_max(x: &[f32]) -> (f32, f32) {
    let x = block(x);
    let (mut lo, mut hi) = ([x[0]; 8], [x[0]; 8]);
    for i in 0..QK / 8 {
        for k in 0..8 {
            let v = x[8 * i + k];
            lo[k] = if v < lo[k] { v } else { lo[k] };
            hi[k] = if v > hi[k] { v } else { hi[k] };
        }
    }
    // A tree (8 → 4 → 2 → 1), which stays in vector registers, not a scalar chain.
    for width in [4, 2, 1] {
        for k in 0..width {
            lo[k] = if lo[k + width] < lo[k] { lo[k + width] } else { lo[k] };
            hi[k] = if hi[k + width] > hi[k] { hi[k + width] } else { hi[k] };
        }
    }
    (lo[0], hi[0])
}

/// C's float → integer conversion as x86-64 compiles it (`cvttss2si`): truncation, and
/// the "integer indefinite" `i32::MIN` for NaN and out-of-range values, whose low byte a
/// following `(int8_t)` keeps. It matters only when `1/d` overflows (a block of subnormal
/// values): ggml and gguf-py (numpy on x86) then both store 0, which Rust's saturating
/// `as` would not.
fn c_to_i32(v: f32) -> i32 {
    if v.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

/// ggml's `MIN(max, (int8_t)(v))` stored into a `uint8_t`.
#[inline(always)]
fn code(v: f32, max: i32) -> u8 {
    (c_to_i32(v) as i8 as i32).min(max) as u8
}

/// [`code`] for a block whose `1/d` is finite: every argument then lies in `[0, 2·max + 1)`,
/// where C's conversion is a truncation. Converted through the float adder (2^23 + n holds
/// n in its low mantissa bits) instead of Rust's saturating `as`, so the loop vectorizes.
#[inline(always)]
fn code_in_range(v: f32, max: f32) -> u8 {
    let t = v.trunc();
    let t = if t < max { t } else { max };
    ((t + 8_388_608.0).to_bits() & 0xff) as u8
}

/// Codes of a block whose `1/d` is finite: `code_in_range(x·scale + offset)`, or
/// `code_in_range((x − min)·scale + offset)` for the types with a minimum.
#[inline(always)]
fn codes_in_range(x: &[f32], min: f32, scale: f32, offset: f32, max: f32) -> [u8; QK] {
    let x = block(x);
    let mut q = [0u8; QK];
    for j in 0..QK {
        q[j] = code_in_range((x[j] - min) * scale + offset, max);
    }
    q
}

#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Q4_0: `d` (f16) = signed absmax / −8; codes `trunc(x/d + 8.5)` clamped to 15, nibbles
/// `q[j] | q[j+16] << 4`. 18 bytes.
#[inline(always)]
pub fn quantize_q4_0(x: &[f32], out: &mut [u8]) {
    let d = signed_absmax(x) / -8.0;
    let id = inverse(d);
    out[..2].copy_from_slice(&f16_bytes(d));
    let q = if id.is_finite() {
        // x − 0 is x for every x but −0, and −0·id + 8.5 = +0·id + 8.5.
        codes_in_range(x, 0.0, id, 8.5, 15.0)
    } else {
        std::array::from_fn(|j| code(x[j] * id + 8.5, 15))
    };
    for j in 0..QK / 2 {
        out[2 + j] = q[j] | (q[j + QK / 2] << 4);
    }
}

/// Q4_1: `d` = (max − min) / 15 and `m` = min (f16 each); codes `trunc((x − min)/d + 0.5)`. 20 bytes.
#[inline(always)]
pub fn quantize_q4_1(x: &[f32], out: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    out[..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(min));
    let q = if id.is_finite() {
        codes_in_range(x, min, id, 0.5, 15.0)
    } else {
        std::array::from_fn(|j| code((x[j] - min) * id + 0.5, 15))
    };
    for j in 0..QK / 2 {
        out[4 + j] = q[j] | (q[j + QK / 2] << 4);
    }
}

/// The fifth bits of 32 five-bit codes, bit `j` for code `j`.
fn high_bits(q: &[u8; QK]) -> [u8; 4] {
    let mut qh = 0u32;
    for (j, &c) in q.iter().enumerate() {
        qh |= ((c >> 4) as u32 & 1) << j;
    }
    qh.to_le_bytes()
}

fn low_nibbles(q: &[u8; QK], out: &mut [u8]) {
    for j in 0..QK / 2 {
        out[j] = (q[j] & 0x0f) | ((q[j + QK / 2] & 0x0f) << 4);
    }
}

/// Q5_0: `d` = signed absmax / −16; codes `trunc(x/d + 16.5)` clamped to 31. 22 bytes.
#[inline(always)]
pub fn quantize_q5_0(x: &[f32], out: &mut [u8]) {
    let d = signed_absmax(x) / -16.0;
    let id = inverse(d);
    let q = if id.is_finite() {
        codes_in_range(x, 0.0, id, 16.5, 31.0)
    } else {
        std::array::from_fn(|j| code(x[j] * id + 16.5, 31))
    };
    out[..2].copy_from_slice(&f16_bytes(d));
    out[2..6].copy_from_slice(&high_bits(&q));
    low_nibbles(&q, &mut out[6..]);
}

/// Q5_1: `d` = (max − min) / 31, `m` = min; codes `trunc((x − min)/d + 0.5)`. 24 bytes.
#[inline(always)]
pub fn quantize_q5_1(x: &[f32], out: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    let q = if id.is_finite() {
        codes_in_range(x, min, id, 0.5, 31.0)
    } else {
        std::array::from_fn(|j| code((x[j] - min) * id + 0.5, 31))
    };
    out[..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(min));
    out[4..8].copy_from_slice(&high_bits(&q));
    low_nibbles(&q, &mut out[8..]);
}

/// Q8_0 of whole blocks (`x.len()` a multiple of 32): `d` = absmax / 127; codes
/// `round(x/d)` (half away from zero) as int8. 34 bytes a block.
///
/// Eight blocks at a time: their `d = amax/127` and `1/d` are two vector divisions
/// instead of sixteen dependent scalar ones, which otherwise bound the loop.
#[inline(always)]
pub fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    const LANES: usize = 8;
    let mut runs = x.chunks_exact(LANES * QK);
    let mut outs = out.chunks_exact_mut(LANES * 34);
    for (x, out) in (&mut runs).zip(&mut outs) {
        // Plain loops, not `array::from_fn`: LLVM left that out of line, compiled for the
        // baseline CPU outside the caller's AVX2 code (8% of a Q8_0 run's samples).
        let (mut d, mut id) = ([0f32; LANES], [0f32; LANES]);
        for b in 0..LANES {
            d[b] = absmax(&x[b * QK..(b + 1) * QK]) / 127.0;
        }
        for b in 0..LANES {
            id[b] = inverse(d[b]);
        }
        for b in 0..LANES {
            q8_0_block(&x[b * QK..(b + 1) * QK], d[b], id[b], &mut out[b * 34..(b + 1) * 34]);
        }
    }
    for (x, out) in runs.remainder().chunks_exact(QK).zip(outs.into_remainder().chunks_exact_mut(34)) {
        let d = absmax(x) / 127.0;
        q8_0_block(x, d, inverse(d), out);
    }
}

#[inline(always)]
fn q8_0_block(x: &[f32], d: f32, id: f32, out: &mut [u8]) {
    out[..2].copy_from_slice(&f16_bytes(d));
    if id.is_finite() {
        // |x·id| ≤ 127: `roundf` (half away from zero) written with trunc (y − trunc(y) is
        // exact), the integer read through the float adder (1.5·2^23 + r holds r in its
        // low bits), so the loop vectorizes.
        let x = block(x);
        let out: &mut [u8; QK] = (&mut out[2..2 + QK]).try_into().expect("34-byte block");
        for j in 0..QK {
            let y = x[j] * id;
            let t = y.trunc();
            let r = if (y - t).abs() >= 0.5 { t + 1f32.copysign(y) } else { t };
            out[j] = ((r + 12_582_912.0).to_bits() as i32 - 0x4b40_0000) as i8 as u8;
        }
    } else {
        for (o, &v) in out[2..].iter_mut().zip(x) {
            *o = c_to_i32((v * id).round()) as i8 as u8;
        }
    }
}

/// Q4_0 values: `d · (q − 8)`.
#[inline(always)]
pub fn dequantize_q4_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..QK / 2 {
        out[j] = d * ((b[2 + j] & 0x0f) as i8 - 8) as f32;
        out[j + QK / 2] = d * ((b[2 + j] >> 4) as i8 - 8) as f32;
    }
}

/// Q4_1 values: `d · q + m`.
#[inline(always)]
pub fn dequantize_q4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..QK / 2 {
        out[j] = d * (b[4 + j] & 0x0f) as f32 + m;
        out[j + QK / 2] = d * (b[4 + j] >> 4) as f32 + m;
    }
}

fn five_bit(qh: u32, qs: &[u8], j: usize) -> u8 {
    let low = if j < QK / 2 { qs[j] & 0x0f } else { qs[j - QK / 2] >> 4 };
    low | (((qh >> j) & 1) as u8) << 4
}

/// Q5_0 values: `d · (q − 16)`.
#[inline(always)]
pub fn dequantize_q5_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, o) in out.iter_mut().enumerate() {
        *o = d * (five_bit(qh, &b[6..], j) as i8 - 16) as f32;
    }
}

/// Q5_1 values: `d · q + m`.
#[inline(always)]
pub fn dequantize_q5_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, o) in out.iter_mut().enumerate() {
        *o = d * five_bit(qh, &b[8..], j) as f32 + m;
    }
}

/// Q8_0 values: `q · d`.
#[inline(always)]
pub fn dequantize_q8_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..]) {
        *o = q as i8 as f32 * d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_of_a_ramp() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 8.0).collect(); // max |x| is 23
        let mut b = [0u8; 18];
        quantize_q4_0(&x, &mut b);
        assert_eq!(f16_at(&b, 0), f16::from_f32(23.0 / -8.0).to_f32());
        let mut y = [0f32; 32];
        dequantize_q4_0(&b, &mut y);
        let d = f16_at(&b, 0).abs();
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= d * 0.5 + 1e-3, "{a} {b}");
        }
    }

    #[test]
    fn q8_0_rounds_half_away_from_zero() {
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        let mut b = [0u8; 34];
        quantize_q8_0(&x, &mut b);
        assert_eq!((b[2] as i8, b[3] as i8, b[4] as i8), (127, 3, -3));
    }

    #[test]
    fn q8_0_runs_of_eight_blocks_equal_blocks_one_by_one() {
        // 11 blocks: one run of eight (batched divisions) and a remainder of three, with
        // an all-zero block and a subnormal one among them.
        let mut x: Vec<f32> = (0..11 * 32).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 17.0).collect();
        x[64..96].fill(0.0);
        x[288..320].iter_mut().for_each(|v| *v *= 1e-42);
        let mut whole = vec![0u8; 11 * 34];
        quantize_q8_0(&x, &mut whole);
        for (b, (xs, expected)) in x.chunks(32).zip(whole.chunks(34)).enumerate() {
            let mut one = [0u8; 34];
            quantize_q8_0(xs, &mut one);
            assert_eq!(&one[..], expected, "block {b}");
        }
    }

    #[test]
    fn the_first_of_two_opposite_maxima_wins() {
        let mut x = [0.5f32; 32];
        x[7] = -3.0;
        x[20] = 3.0;
        assert_eq!(signed_absmax(&x), -3.0);
        x[2] = 3.0;
        assert_eq!(signed_absmax(&x), 3.0);
        x[2] = -2.0;
        assert_eq!(signed_absmax(&x), -3.0);
    }

    #[test]
    fn signed_zeros_are_picked_as_ggml_picks_them() {
        let mut x = [0f32; 32];
        x[3] = -0.0;
        assert_eq!(signed_absmax(&x).to_bits(), 0f32.to_bits());
        x[9] = 2.0;
        let (min, max) = min_max(&x);
        assert_eq!((min.to_bits(), max), (0f32.to_bits(), 2.0));
        x[0] = -0.0;
        assert_eq!(min_max(&x).0.to_bits(), (-0f32).to_bits());
    }

    #[test]
    fn conversions_follow_c_on_x86() {
        assert_eq!([c_to_i32(f32::INFINITY), c_to_i32(f32::NAN), c_to_i32(-3.7)], [i32::MIN, i32::MIN, -3]);
        assert_eq!([code(f32::INFINITY, 15), code(16.9, 15), code(3.9, 15)], [0, 15, 3]);
        assert_eq!([code_in_range(16.9, 15.0), code_in_range(3.9, 15.0), code_in_range(0.2, 15.0)], [15, 3, 0]);
    }

    #[test]
    fn all_zero_blocks_have_zero_scales_and_values() {
        let x = [0f32; 32];
        let mut y = [1f32; 32];
        for (q, dq, size) in [
            (quantize_q4_0 as fn(&[f32], &mut [u8]), dequantize_q4_0 as fn(&[u8], &mut [f32]), 18),
            (quantize_q4_1, dequantize_q4_1, 20),
            (quantize_q5_0, dequantize_q5_0, 22),
            (quantize_q5_1, dequantize_q5_1, 24),
            (quantize_q8_0, dequantize_q8_0, 34),
        ] {
            let mut b = vec![0u8; size];
            q(&x, &mut b);
            dq(&b, &mut y);
            assert!(y.iter().all(|&v| v == 0.0));
        }
    }
}
