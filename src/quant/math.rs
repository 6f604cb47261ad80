//! The normative per-group arithmetic of docs/math.md, in float32.
//!
//! Everything that decides a code or a scale lives here, so the fast engine, the scalar
//! reference and dequantization cannot drift apart on the math.

use half::{bf16, f16};

use super::spec::{QuantSpec, ScaleDType};

/// How one group is encoded: `stored = clamp(rint(x * inv) + zp, lo, hi) + offset`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GroupParams {
    /// The stored scale, already rounded to the scale dtype (as float32).
    pub scale: f32,
    /// `1 / scale`, computed in float32.
    pub inv: f32,
    /// Integer zero point as float32 (0 when symmetric).
    pub zp: f32,
    /// Lowest code before the storage offset (0, or -qmax when symmetric).
    pub lo: f32,
    /// Highest code before the storage offset.
    pub hi: f32,
    /// Added to the code for storage: 2^(bits-1) for packed symmetric, else 0.
    pub offset: i32,
}

/// Round `scale` to what `dtype` stores, rounding up so the group's range stays covered.
///
/// `scale` is positive and finite. Returns `None` when the rounded scale overflows the
/// dtype (float16 tops out at 65504).
#[inline(always)]
pub fn round_scale_up(scale: f32, dtype: ScaleDType) -> Option<f32> {
    let rounded = match dtype {
        ScaleDType::F32 => scale,
        ScaleDType::F16 => {
            let mut h = f16::from_f32(scale);
            if h.to_f32() < scale {
                h = f16::from_bits(h.to_bits() + 1);
            }
            h.to_f32()
        }
        ScaleDType::BF16 => {
            let mut h = bf16::from_f32(scale);
            if h.to_f32() < scale {
                h = bf16::from_bits(h.to_bits() + 1);
            }
            h.to_f32()
        }
    };
    rounded.is_finite().then_some(rounded)
}

/// `scale == 0` (a constant-zero group) and float32-subnormal scales become 1.
///
/// docs/math.md says `if scale == 0: scale = 1`. A subnormal scale (every |x| < ~1e-37) would make
/// `1/scale` overflow to +inf and `0 * inf` a NaN code, so quantbridge treats it like zero:
/// those elements then quantize to the zero point, within the scale/2 bound.
#[inline(always)]
fn nonzero_scale(scale: f32) -> f32 {
    if scale < f32::MIN_POSITIVE {
        1.0
    } else {
        scale
    }
}

/// Parameters of a group whose smallest and largest elements are `mn` and `mx`.
///
/// Returns `None` when the scale is not representable (range overflow in float32, or
/// beyond the scale dtype's range).
///
/// Inlined into the kernels (once per group, it was a tenth of the time out of line).
#[inline(always)]
pub fn group_params(mn: f32, mx: f32, spec: &QuantSpec) -> Option<GroupParams> {
    let (lo, hi, offset) = code_bounds(spec);
    let (scale, zp);
    if spec.symmetric {
        let a = mn.abs().max(mx.abs());
        scale = round_scale_up(nonzero_scale(a / hi), spec.scale_dtype)?;
        zp = 0.0;
    } else {
        let mn = mn.min(0.0);
        let mx = mx.max(0.0);
        let raw = (mx - mn) / hi;
        if !raw.is_finite() {
            return None;
        }
        scale = round_scale_up(nonzero_scale(raw), spec.scale_dtype)?;
        // 0 <= -mn / scale <= qmax <= 255: inside `rint_small`'s exact range (and no libm
        // `rintf` call on baseline x86-64).
        zp = rint_small(-mn / scale).clamp(0.0, hi);
    }
    Some(GroupParams { scale, inv: 1.0 / scale, zp, lo, hi, offset })
}

/// The lowest and highest code before the storage offset, and the offset:
/// `(-qmax, qmax, 2^(bits-1) packed or 0)` when symmetric, else `(0, 2^bits - 1, 0)`.
#[inline(always)]
pub fn code_bounds(spec: &QuantSpec) -> (f32, f32, i32) {
    if spec.symmetric {
        let qmax = ((1i32 << (spec.bits - 1)) - 1) as f32;
        (-qmax, qmax, if spec.pack { 1i32 << (spec.bits - 1) } else { 0 })
    } else {
        (0.0, spec.max_code() as f32, 0)
    }
}

/// Groups whose parameters [`group_params_lanes`] finds at once.
pub const PARAM_LANES: usize = 16;

/// One [`group_params`] result per lane, without the parts every group shares.
#[derive(Debug, Default)]
pub struct ParamLanes {
    /// Each group's scale.
    pub scale: [f32; PARAM_LANES],
    /// `1 / scale`.
    pub inv: [f32; PARAM_LANES],
    /// Each group's zero point (0 when symmetric).
    pub zp: [f32; PARAM_LANES],
}

/// [`group_params`] of [`PARAM_LANES`] groups at once, for float32 scales: the same
/// float32 operations lane by lane, without branches, so that they compile to vector
/// divisions (three per 16 groups instead of three per group). `false` when a group's
/// scale is not representable: the caller then goes group by group, and meets the error
/// there.
#[inline(always)]
pub fn group_params_lanes(mn: &[f32; PARAM_LANES], mx: &[f32; PARAM_LANES], spec: &QuantSpec, out: &mut ParamLanes) -> bool {
    debug_assert!(spec.scale_dtype == ScaleDType::F32);
    let qmax = code_bounds(spec).1;
    let mut representable = true;
    for i in 0..PARAM_LANES {
        let (raw, low) = if spec.symmetric {
            (mn[i].abs().max(mx[i].abs()) / qmax, 0.0)
        } else {
            let low = mn[i].min(0.0);
            ((mx[i].max(0.0) - low) / qmax, low)
        };
        representable &= raw.is_finite();
        // A lane that is not representable is thrown away; 1 keeps its arithmetic tame.
        let scale = if raw.is_finite() { nonzero_scale(raw) } else { 1.0 };
        let low = if raw.is_finite() { low } else { 0.0 };
        out.scale[i] = scale;
        out.inv[i] = 1.0 / scale;
        out.zp[i] = if spec.symmetric { 0.0 } else { rint_small(-low / scale).clamp(0.0, qmax) };
    }
    representable
}

/// Round half to even for |y| < 2^22, without a libm call on baseline x86-64.
///
/// Adding and subtracting 1.5·2^23 pushes the fraction bits out under the default
/// round-to-nearest-even mode. Every `x * inv` the encoder rounds is bounded by about
/// 2^bits ≤ 256, far inside the exact range; a unit test checks it against
/// `f32::round_ties_even`.
#[inline(always)]
pub fn rint_small(y: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    debug_assert!(y.abs() < 4_194_304.0);
    (y + MAGIC) - MAGIC
}

impl GroupParams {
    /// The unclamped-then-clamped code of `x`, before the storage offset.
    #[inline(always)]
    pub fn code_value(&self, x: f32) -> f32 {
        (rint_small(x * self.inv) + self.zp).clamp(self.lo, self.hi)
    }

    /// The stored byte for `x`.
    #[inline(always)]
    pub fn encode(&self, x: f32) -> u8 {
        self.store(self.code_value(x))
    }

    /// The stored byte for a clamped code value (two's complement for unpacked symmetric).
    #[inline(always)]
    pub fn store(&self, q: f32) -> u8 {
        (q as i32 + self.offset) as u8
    }

    /// The dequantized value of a clamped code value: `(q - zp) * scale`.
    #[inline(always)]
    pub fn decode_value(&self, q: f32) -> f32 {
        (q - self.zp) * self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rint_small_matches_round_ties_even() {
        let mut y = -300.0f32;
        while y <= 300.0 {
            let neighbours = [y, f32::from_bits(y.to_bits() + 1), f32::from_bits(y.to_bits().wrapping_sub(1))];
            for probe in neighbours.into_iter().filter(|p| p.is_finite()) {
                assert_eq!(rint_small(probe), probe.round_ties_even(), "at {probe}");
            }
            y += 0.125;
        }
    }

    #[test]
    fn scale_rounds_up_and_covers() {
        for &s in &[1e-3f32, 0.1, 0.3333333, 1.0, 7.77, 1234.5678, 6.0e-8] {
            for dt in [ScaleDType::F16, ScaleDType::BF16] {
                let r = round_scale_up(s, dt).unwrap();
                assert!(r >= s, "{dt:?} {s} -> {r}");
            }
        }
        assert_eq!(round_scale_up(70000.0, ScaleDType::F16), None);
        assert_eq!(round_scale_up(0.5, ScaleDType::F16), Some(0.5));
    }

    #[test]
    fn zero_and_subnormal_groups_get_unit_scale() {
        let spec = QuantSpec::default();
        assert_eq!(group_params(0.0, 0.0, &spec).unwrap().scale, 1.0);
        assert_eq!(group_params(-1e-40, 1e-40, &spec).unwrap().scale, 1.0);
    }

    #[test]
    fn range_overflow_is_refused() {
        assert!(group_params(-3e38, 3e38, &QuantSpec::default()).is_none());
    }
}
