//! Run-time choice of the vector unit (`is_x86_feature_detected!`, never
//! `target-cpu=native`, so one wheel is fast everywhere and correct anywhere).
//!
//! The kernels are plain Rust written to vectorize (branch-free blocks, lane-wise
//! accumulators, no fused multiply-add: Rust never contracts `a * b + c`), inlined into a
//! function compiled with AVX2 enabled. Same source, same IEEE operations, same bits:
//! the engine property tests compare this path with the scalar reference.

use std::sync::atomic::{AtomicBool, Ordering};

/// Lets tests run the portable build of the kernels on an AVX2 machine.
static VECTOR_UNITS_ALLOWED: AtomicBool = AtomicBool::new(true);

/// Allow (default) or forbid the wide vector paths; forbidding makes every call take the
/// portable (baseline x86-64 / other targets) build, so tests can compare both with the
/// scalar reference.
#[doc(hidden)]
pub fn allow_vector_units(allowed: bool) {
    VECTOR_UNITS_ALLOWED.store(allowed, Ordering::Relaxed);
}

/// Whether the CPU has AVX2 (cached by std after the first call) and it is allowed.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2() -> bool {
    VECTOR_UNITS_ALLOWED.load(Ordering::Relaxed) && std::arch::is_x86_feature_detected!("avx2")
}

/// Run `f` inside a function compiled with AVX2, so everything inlined into it may use
/// 256-bit vectors. Call only when [`has_avx2`] is true.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[target_feature(enable = "avx2")]
    fn avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
    debug_assert!(has_avx2());
    // SAFETY: callers check `has_avx2()` first, so the CPU executes AVX2 instructions.
    unsafe { avx2(f) }
}

/// AVX2 kernels for contiguous float32 groups. Each computes exactly what the portable
/// code computes (`min_max`, `GroupParams::encode`): IEEE single-precision multiply, add
/// and subtract in the same order, min/max that agree with compare-and-select on finite
/// values, and truncating conversions of values that are already integral.
#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use std::arch::x86_64::*;

    use crate::quant::math::GroupParams;

    /// `(min, max, all finite)` of `xs`.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn min_max(xs: &[f32]) -> (f32, f32, bool) {
        let mut lo = _mm256_set1_ps(f32::INFINITY);
        let mut hi = _mm256_set1_ps(f32::NEG_INFINITY);
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let inf = _mm256_set1_ps(f32::INFINITY);
        let mut finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        let mut blocks = xs.chunks_exact(8);
        for block in &mut blocks {
            // SAFETY: `block` has exactly 8 floats; the load is unaligned.
            let v = unsafe { _mm256_loadu_ps(block.as_ptr()) };
            lo = _mm256_min_ps(lo, v);
            hi = _mm256_max_ps(hi, v);
            // |v| < inf is false for ±inf and NaN.
            finite = _mm256_and_ps(finite, _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(v, abs_mask), inf));
        }
        let mut lows = [0f32; 8];
        let mut highs = [0f32; 8];
        // SAFETY: both arrays hold 8 floats.
        unsafe {
            _mm256_storeu_ps(lows.as_mut_ptr(), lo);
            _mm256_storeu_ps(highs.as_mut_ptr(), hi);
        }
        let mut all_finite = _mm256_movemask_ps(finite) == 0xff;
        let (mut mn, mut mx) = (f32::INFINITY, f32::NEG_INFINITY);
        for j in 0..8 {
            mn = if lows[j] < mn { lows[j] } else { mn };
            mx = if highs[j] > mx { highs[j] } else { mx };
        }
        for &v in blocks.remainder() {
            mn = if v < mn { v } else { mn };
            mx = if v > mx { v } else { mx };
            all_finite &= v.is_finite();
        }
        (mn, mx, all_finite)
    }

    /// One stored byte per element of `xs` (`xs.len()` a multiple of 32, `out` as long):
    /// `clamp(rint(x * inv) + zp, lo, hi) + offset`, as `GroupParams::encode`.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn encode(xs: &[f32], p: &GroupParams, out: &mut [u8]) {
        debug_assert!(xs.len().is_multiple_of(32) && out.len() == xs.len());
        let inv = _mm256_set1_ps(p.inv);
        let magic = _mm256_set1_ps(12_582_912.0); // 1.5 * 2^23, as `rint_small`
        let zp = _mm256_set1_ps(p.zp);
        let lo = _mm256_set1_ps(p.lo);
        let hi = _mm256_set1_ps(p.hi);
        let offset = _mm256_set1_epi32(p.offset);
        // Codes are negative only for unpacked symmetric storage (int8 bit patterns).
        let signed = p.lo + (p.offset as f32) < 0.0;
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let code = |v: __m256| {
            let y = _mm256_mul_ps(v, inv);
            let r = _mm256_sub_ps(_mm256_add_ps(y, magic), magic);
            let q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, zp), lo), hi);
            _mm256_add_epi32(_mm256_cvttps_epi32(q), offset)
        };
        for (block, dst) in xs.chunks_exact(32).zip(out.chunks_exact_mut(32)) {
            let p = block.as_ptr();
            // SAFETY: `block` holds 32 floats: four unaligned 8-float loads.
            let (a, b, c, d) = unsafe {
                (
                    code(_mm256_loadu_ps(p)),
                    code(_mm256_loadu_ps(p.add(8))),
                    code(_mm256_loadu_ps(p.add(16))),
                    code(_mm256_loadu_ps(p.add(24))),
                )
            };
            // Every code fits 16 bits exactly; then 8 bits (unsigned, or signed for int8).
            let ab = _mm256_packs_epi32(a, b);
            let cd = _mm256_packs_epi32(c, d);
            let bytes = if signed { _mm256_packs_epi16(ab, cd) } else { _mm256_packus_epi16(ab, cd) };
            // The packs work within 128-bit lanes; put the 4-byte groups back in order.
            let bytes = _mm256_permutevar8x32_epi32(bytes, order);
            // SAFETY: `dst` holds 32 bytes.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), bytes) };
        }
    }
}
