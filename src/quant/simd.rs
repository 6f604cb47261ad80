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
