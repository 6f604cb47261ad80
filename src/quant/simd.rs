//! Run-time choice of the vector unit (`is_x86_feature_detected!`, never
//! `target-cpu=native`, so one wheel is fast everywhere and correct anywhere).
//!
//! The kernels are plain Rust written to vectorize (branch-free blocks, lane-wise
//! accumulators, no fused multiply-add: Rust never contracts `a * b + c`), inlined into a
//! function compiled with AVX2 enabled. Same source, same IEEE operations, same bits:
//! the engine property tests compare this path with the scalar reference.

use half::{bf16, f16};

#[cfg(target_arch = "x86_64")]
use crate::quant::gguf::kquants::Qkx2;

/// Which build of the kernels runs: an argument of every engine call
/// ([`crate::quant::Engine`]), so tests check each build the CPU supports, in parallel,
/// without process-wide state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Baseline x86-64 (SSE2) or whatever the target's baseline is; runs everywhere.
    Portable,
    /// AVX2 + F16C, chosen at run time on CPUs that have both.
    Avx2,
    /// The AVX2 build with the encode (and its fused statistics) on 512-bit vectors:
    /// AVX-512 F, BW and VL, chosen at run time on CPUs that have them.
    Avx512,
}

impl Kernel {
    /// The fastest build this CPU runs.
    pub fn best() -> Kernel {
        if Avx2::detect_wide().is_some() {
            Kernel::Avx512
        } else if Avx2::detect().is_some() {
            Kernel::Avx2
        } else {
            Kernel::Portable
        }
    }

    /// Every build this CPU runs, portable first.
    pub fn supported() -> Vec<Kernel> {
        let mut all = vec![Kernel::Portable];
        if Avx2::detect().is_some() {
            all.push(Kernel::Avx2);
        }
        if Avx2::detect_wide().is_some() {
            all.push(Kernel::Avx512);
        }
        all
    }

    /// Every build quantbridge has, supported here or not.
    pub const ALL: [Kernel; 3] = [Kernel::Portable, Kernel::Avx2, Kernel::Avx512];

    /// Its name in benchmark output and test messages.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
        }
    }

    /// The vector token of this build when the CPU runs it; a build the CPU lacks falls
    /// back to the next narrower one (asking for a kernel the CPU lacks is never unsound).
    #[inline]
    pub(crate) fn avx2(self) -> Option<Avx2> {
        match self {
            Kernel::Avx512 => Avx2::detect_wide().or_else(Avx2::detect),
            Kernel::Avx2 => Avx2::detect(),
            Kernel::Portable => None,
        }
    }
}

/// Whether the CPU has AVX2 and F16C (every AVX2 CPU has both; std caches the answer).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c")
}

/// Whether the CPU also has AVX-512 F, BW and VL (the 512-bit encode's instructions).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx512() -> bool {
    use std::arch::is_x86_feature_detected;
    has_avx2() && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl")
}

/// Element types the kernels read: widened exactly to float32 (float64 rounded to nearest,
/// as `as f32` does), one at a time or eight (sixteen) at a time into a vector register.
pub trait Lane: Copy + 'static {
    /// One element as float32 (float64 rounds to nearest even, the others are exact).
    fn to_f32(self) -> f32;
    /// Eight elements from `p` as float32.
    ///
    /// # Safety
    /// `p` points at eight readable elements; the CPU supports AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Sixteen elements from `p` as float32.
    ///
    /// # Safety
    /// `p` points at sixteen readable elements; the CPU supports AVX-512 F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
    /// The extremes of `xs` (a multiple of 16 elements) on eight float32 lanes: the least
    /// lane of the first vector is the minimum, the greatest of the second the maximum;
    /// and whether every element is finite.
    ///
    /// # Safety
    /// The CPU supports AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn lane_extremes_avx2(xs: &[Self]) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256, bool) {
        // SAFETY: the caller guarantees AVX2 and F16C.
        unsafe { avx2::lane_extremes(xs) }
    }
    /// [`Lane::lane_extremes_avx2`] on sixteen lanes, for `xs` a multiple of 32 elements.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F, BW and VL.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn lane_extremes_avx512(xs: &[Self]) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512, bool) {
        // SAFETY: the caller guarantees AVX-512 F, BW and VL.
        unsafe { avx512::lane_extremes(xs) }
    }
}

impl Lane for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees eight readable floats; the load is unaligned.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller guarantees sixteen readable floats and AVX-512 F; unaligned.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

impl Lane for f64 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees eight readable doubles, and AVX. `cvtpd_ps` rounds
        // to nearest even (the default MXCSR mode, which Rust never changes), as `as f32`.
        unsafe {
            let low = _mm256_cvtpd_ps(_mm256_loadu_pd(p));
            let high = _mm256_cvtpd_ps(_mm256_loadu_pd(p.add(4)));
            _mm256_set_m128(high, low)
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees sixteen readable doubles and AVX-512 F. Rounded to
        // nearest even as in `load8`; the halves are joined as 256-bit (f64x4) lanes.
        unsafe {
            let low = _mm512_cvtpd_ps(_mm512_loadu_pd(p));
            let high = _mm512_cvtpd_ps(_mm512_loadu_pd(p.add(8)));
            let joined = _mm512_insertf64x4::<1>(_mm512_castpd256_pd512(_mm256_castps_pd(low)), _mm256_castps_pd(high));
            _mm512_castpd_ps(joined)
        }
    }
}

impl Lane for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self) // the inherent, exact conversion
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn lane_extremes_avx2(xs: &[Self]) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256, bool) {
        // SAFETY: the caller guarantees AVX2 and F16C.
        unsafe { avx2::lane_extremes_half(xs, 0x7f80) } // bfloat16's exponent field
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn lane_extremes_avx512(xs: &[Self]) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512, bool) {
        // SAFETY: the caller guarantees AVX-512 F, BW and VL.
        unsafe { avx512::lane_extremes_half(xs, 0x7f80) } // bfloat16's exponent field
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees eight readable bfloat16 (16 bytes), and AVX2. A
        // bfloat16 is the high half of the float32 of the same value.
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees sixteen readable bfloat16 (32 bytes) and AVX-512 F;
        // widened as in `load8`.
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())))) }
    }
}

impl Lane for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self) // the inherent, exact conversion
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn lane_extremes_avx2(xs: &[Self]) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256, bool) {
        // SAFETY: the caller guarantees AVX2 and F16C.
        unsafe { avx2::lane_extremes_half(xs, 0x7c00) } // float16's exponent field
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn lane_extremes_avx512(xs: &[Self]) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512, bool) {
        // SAFETY: the caller guarantees AVX-512 F, BW and VL.
        unsafe { avx512::lane_extremes_half(xs, 0x7c00) } // float16's exponent field
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees eight readable float16 (16 bytes), and F16C, whose
        // conversion to float32 is exact.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees sixteen readable float16 (32 bytes) and AVX-512 F,
        // whose conversion to float32 is exact.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
}

/// Elsewhere there are no AVX2 kernels: [`Avx2::detect`] always says so.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Debug, Clone, Copy)]
pub struct Avx2(());

#[cfg(not(target_arch = "x86_64"))]
impl Avx2 {
    /// Always `None` on this architecture.
    #[inline(always)]
    pub fn detect() -> Option<Self> {
        None
    }

    /// Always `None` on this architecture.
    #[inline(always)]
    pub fn detect_wide() -> Option<Self> {
        None
    }

    /// Never called: no `Avx2` exists on this architecture.
    #[inline(always)]
    pub fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// Proof that the CPU runs AVX2 and F16C: an `Avx2` exists only when
/// [`Avx2::detect`] found it, so its methods can call the AVX2 kernels safely. Callers
/// outside this module need no `unsafe`. A `wide` one ([`Avx2::detect_wide`]) also proves
/// AVX-512 F, BW and VL, and encodes on 512-bit vectors.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub struct Avx2 {
    wide: bool,
}

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// `Some` when [`has_avx2`].
    #[inline(always)]
    pub fn detect() -> Option<Self> {
        has_avx2().then_some(Avx2 { wide: false })
    }

    /// `Some` (wide) when [`has_avx512`].
    #[inline(always)]
    pub fn detect_wide() -> Option<Self> {
        has_avx512().then_some(Avx2 { wide: true })
    }

    /// Run `f` inside a function compiled with AVX2 (and AVX-512 when wide), so everything
    /// inlined into it may use those vectors. Pass a closure marked `#[inline(always)]`:
    /// one that LLVM leaves out of line is compiled for the baseline CPU.
    #[inline(always)]
    pub fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        #[target_feature(enable = "avx2,f16c")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if self.wide {
            // SAFETY: a wide `self` proves the CPU supports AVX-512 F, BW and VL.
            unsafe { avx512(f) }
        } else {
            // SAFETY: `self` proves the CPU supports AVX2.
            unsafe { avx2(f) }
        }
    }

    /// [`avx2::min_max`], or [`avx512::min_max`] when wide.
    #[inline(always)]
    pub fn min_max<W: Lane>(self, xs: &[W]) -> (f32, f32, bool) {
        if self.wide {
            // SAFETY: a wide `self` proves the CPU supports AVX-512 F, BW and VL.
            unsafe { avx512::min_max(xs) }
        } else {
            // SAFETY: `self` proves the CPU supports AVX2.
            unsafe { avx2::min_max(xs) }
        }
    }

    /// The extremes of `count` (at most 16) consecutive groups of `group_len` elements
    /// starting `xs` into `mn[..count]`, `mx[..count]` ([`avx2::group_extremes`], or
    /// [`avx512::group_extremes`] when wide): `Some(all finite)`, or `None` (nothing
    /// done) unless `group_len` is a positive multiple of 32.
    #[inline(always)]
    pub fn group_extremes<W: Lane>(self, xs: &[W], group_len: usize, count: usize, mn: &mut [f32; 16], mx: &mut [f32; 16]) -> Option<bool> {
        if group_len == 0 || !group_len.is_multiple_of(32) {
            return None;
        }
        Some(if self.wide {
            // SAFETY: a wide `self` proves the CPU supports AVX-512 F, BW and VL; the
            // function checks the lengths.
            unsafe { avx512::group_extremes(xs, group_len, count, mn, mx) }
        } else {
            // SAFETY: `self` proves the CPU supports AVX2 and F16C; as above.
            unsafe { avx2::group_extremes(xs, group_len, count, mn, mx) }
        })
    }

    /// [`avx2::encode`], or [`avx512::encode`] when wide.
    #[inline(always)]
    pub fn encode<W: Lane>(self, xs: &[W], p: crate::quant::math::GroupParams, bits: u32, out: &mut [u8]) {
        if self.wide {
            // SAFETY: a wide `self` proves the CPU supports AVX-512 F, BW and VL.
            unsafe { avx512::encode(xs, p, bits, out) }
        } else {
            // SAFETY: `self` proves the CPU supports AVX2.
            unsafe { avx2::encode(xs, p, bits, out) }
        }
    }

    /// [`avx2::segment_stats`].
    #[inline(always)]
    pub fn segment_stats<W: Lane>(self, xs: &[W], p: crate::quant::math::GroupParams, lanes: &mut crate::quant::quantized::SegmentLanes) {
        // SAFETY: `self` proves the CPU supports AVX2.
        unsafe { avx2::segment_stats(xs, p, lanes) }
    }

    /// [`avx2::add_run_lanes`].
    #[inline(always)]
    pub fn add_run_lanes(self, xs: &[f32], ys: &[f32], sq_err: &mut [f64; 8], sq: &mut [f64; 8], max_abs: &mut [f32; 8]) -> usize {
        // SAFETY: `self` proves the CPU supports AVX2.
        unsafe { avx2::add_run_lanes(xs, ys, sq_err, sq, max_abs) }
    }

    /// [`avx2::qkx2_search`]: ggml's K-quant scale search for a super-block's eight
    /// sub-blocks, one per lane.
    #[inline(always)]
    pub(crate) fn qkx2_search(self, search: Qkx2, x: &[[f32; 8]; 32], weights: &[[f32; 8]; 32], l_out: &mut [[u8; 8]; 32]) -> ([f32; 8], [f32; 8]) {
        // SAFETY: `self` proves the CPU supports AVX2.
        unsafe { avx2::qkx2_search(search, x, weights, l_out) }
    }

    /// [`avx2::qx_search`]: ggml's Q6_K scale search for eight sub-blocks, one per lane.
    #[inline(always)]
    pub(crate) fn qx_search(self, nmax: i32, x: &[[f32; 8]; 16], l_out: &mut [[i8; 8]; 16]) -> [f32; 8] {
        // SAFETY: `self` proves the CPU supports AVX2.
        unsafe { avx2::qx_search(nmax, x, l_out) }
    }

    /// [`Avx2::encode`] of fewer than 64 elements whose codes fill whole bytes: the
    /// elements are copied into a 64-element block (padded with the first one, whose
    /// extra codes are dropped), so a short group or the end of a row is encoded in
    /// registers too rather than one code at a time.
    #[inline(always)]
    pub fn encode_short<W: Lane>(self, xs: &[W], p: crate::quant::math::GroupParams, bits: u32, out: &mut [u8]) {
        debug_assert!(!xs.is_empty() && xs.len() < 64 && out.len() * 8 == xs.len() * bits as usize);
        let mut block = [xs[0]; 64];
        block[..xs.len()].copy_from_slice(xs);
        let mut codes = [0u8; 64];
        let all = &mut codes[..64 * bits as usize / 8];
        self.encode(&block, p, bits, all);
        out.copy_from_slice(&all[..out.len()]);
    }

    /// Consecutive groups of `group_len` elements (a multiple of 64), one per entry of
    /// `params`, encoded one after another into `out`; with `accs` (one per group), each
    /// group's statistics too (a segment) into its own accumulator. One call for a batch
    /// of groups: on 512-bit vectors the kernel's constants are set up once, not per group.
    ///
    /// `next` is what the caller reads after `xs`, when it follows `xs` in memory (else
    /// empty). A batch of at most [`PREFETCH_BATCH_BYTES`] asks, while it encodes, for the
    /// cache lines of the batch after the next one, a few lines per step (see
    /// [`batch_after_next`]): the encode reads the batch from L1, where its extremes pass
    /// left it, so without these requests memory would idle for as long as it runs.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn encode_groups<W: Lane>(
        self,
        xs: &[W],
        group_len: usize,
        params: &[crate::quant::math::GroupParams],
        bits: u32,
        out: &mut [u8],
        accs: Option<&mut [crate::quant::quantized::StatsAcc]>,
        next: &[W],
    ) {
        assert!(group_len.is_multiple_of(64) && xs.len() == params.len() * group_len);
        assert!(out.len() == xs.len() * bits as usize / 8);
        assert!(accs.as_ref().is_none_or(|a| a.len() == params.len()));
        let ahead = batch_after_next(xs, next);
        if self.wide {
            // SAFETY: a wide `self` proves the CPU supports AVX-512 F, BW and VL; the
            // lengths are checked above.
            unsafe { avx512::encode_groups(xs, group_len, params, bits, out, accs, ahead) }
        } else {
            // SAFETY: `self` proves the CPU supports AVX2; the lengths are checked above.
            unsafe { avx2::encode_groups(xs, group_len, params, bits, out, accs, ahead) }
        }
    }

    /// How many consecutive groups of `group_bytes` (input bytes each) the engine should
    /// hand [`Self::encode_groups`] at once, at most `max` (and at least 2): on 512-bit
    /// vectors `max`; on 256-bit vectors as many as fit in [`PREFETCH_BATCH_BYTES`], so
    /// that every batch asks memory for the one after the next while it encodes. The
    /// 256-bit encode takes long enough that memory idling through a large batch's encode
    /// cost more than smaller batches do; on 512-bit vectors, batches of 16 groups of
    /// 256 or 1024 float32 values (16 and 64 KiB) measured 5-8% faster than 8 KiB ones
    /// with the requests (benches/README.md).
    #[inline(always)]
    pub fn batch_groups(self, group_bytes: usize, max: usize) -> usize {
        if self.wide {
            max
        } else {
            (PREFETCH_BATCH_BYTES / group_bytes.max(1)).clamp(2, max.max(2))
        }
    }

    /// [`avx2::encode_with_stats`], or [`avx512::encode_with_stats`] when wide.
    #[inline(always)]
    pub fn encode_with_stats<W: Lane>(
        self,
        xs: &[W],
        p: crate::quant::math::GroupParams,
        bits: u32,
        out: &mut [u8],
        tail: Option<&crate::quant::quantized::BlockSums>,
        acc: &mut crate::quant::quantized::StatsAcc,
    ) {
        if self.wide {
            // SAFETY: a wide `self` proves the CPU supports AVX-512 F, BW and VL.
            unsafe { avx512::encode_with_stats(xs, p, bits, out, tail, acc) }
        } else {
            // SAFETY: `self` proves the CPU supports AVX2.
            unsafe { avx2::encode_with_stats(xs, p, bits, out, tail, acc) }
        }
    }

    /// Ask the CPU to bring the cache line holding `p` into L2 (a hint: it never faults,
    /// whatever `p` is).
    #[inline(always)]
    pub fn prefetch(self, p: *const u8) {
        // SAFETY: `self` proves SSE (part of AVX2); a prefetch reads nothing the program
        // sees and does not fault on any address.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p.cast()) }
    }

    /// `src` widened to float32 as [`Lane::to_f32`] into `dst`, read backwards when
    /// `reversed` (`dst[k] = src[len − 1 − k]`: a view whose last axis has stride −1),
    /// eight values per vector.
    ///
    /// # Panics
    /// When `src` and `dst` differ in length.
    #[inline(always)]
    pub fn widen<W: Lane>(self, src: &[W], dst: &mut [f32], reversed: bool) {
        // SAFETY: `self` proves the CPU supports AVX2 and F16C.
        unsafe { avx2::widen(src, dst, reversed) }
    }

    /// Side of the square blocks [`Self::transpose`] moves: 16 on 512-bit vectors (a
    /// whole cache line per row), else 8.
    #[inline(always)]
    pub fn transpose_side(self) -> usize {
        if self.wide {
            16
        } else {
            8
        }
    }

    /// Transpose one square block of [`Self::transpose_side`] elements a side into float32:
    /// `dst[i * dst_stride + j] = src[j * src_stride + i]` widened as [`Lane::to_f32`]
    /// ([`avx512::transpose_16x16`] or [`avx2::transpose_8x8`]).
    #[inline(always)]
    pub fn transpose<W: Lane>(self, src: &[W], src_stride: usize, dst: &mut [f32], dst_stride: usize) {
        if self.wide {
            // SAFETY: a wide `self` proves the CPU supports AVX-512 F, BW and VL.
            unsafe { avx512::transpose_16x16(src, src_stride, dst, dst_stride) }
        } else {
            // SAFETY: `self` proves the CPU supports AVX2.
            unsafe { avx2::transpose_8x8(src, src_stride, dst, dst_stride) }
        }
    }
}

/// The largest batch (in bytes of input) [`Avx2::encode_groups`] asks memory for the batch
/// after the next one while it encodes. Three such batches (the one encoded, the next,
/// whose lines are arriving, and the one asked for) stay within a 32 KiB L1. Larger
/// batches ask for nothing: on the AMD EPYC (Zen 4) this was measured on, requests two
/// 16 KiB batches ahead, into L1 or L2, made them slower (benches/README.md).
#[cfg(target_arch = "x86_64")]
pub const PREFETCH_BATCH_BYTES: usize = 8 << 10;

/// What a batch `xs` asks memory for while it encodes, out of `next` (what follows `xs`):
/// the batch after the next one, as long as `xs` (or what `next` holds of it), or nothing
/// when `xs` is larger than [`PREFETCH_BATCH_BYTES`]. Its element `i` is requested while
/// element `i` of `xs` is encoded: two batches ahead, so the next batch's lines, asked for
/// while the previous batch encoded, have arrived by the time its extremes are read.
#[cfg(target_arch = "x86_64")]
fn batch_after_next<'n, W>(xs: &[W], next: &'n [W]) -> &'n [W] {
    if std::mem::size_of_val(xs) > PREFETCH_BATCH_BYTES {
        return &[];
    }
    let from = xs.len().min(next.len());
    &next[from..(2 * xs.len()).min(next.len())]
}

/// Group `k`'s share (`group_len` elements) of what a batch asks for, [`batch_after_next`].
#[cfg(target_arch = "x86_64")]
fn group_share<W>(ahead: &[W], group_len: usize, k: usize) -> &[W] {
    let from = (k * group_len).min(ahead.len());
    &ahead[from..((k + 1) * group_len).min(ahead.len())]
}

/// AVX2 kernels for contiguous float32, float16 and bfloat16 groups (the halves widened
/// exactly to float32 in registers). Each computes exactly what the portable code computes (`min_max`, `GroupParams::encode`): IEEE single-precision multiply, add
/// and subtract in the same order, min/max that agree with compare-and-select on finite
/// values, and truncating conversions of values that are already integral.
#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use std::arch::x86_64::*;

    use crate::quant::gguf::kquants::Qkx2;

    use super::Lane;
    use crate::quant::math::GroupParams;
    use crate::quant::quantized::{BlockSums, SegmentLanes, StatsAcc, STAT_BLOCK};

    /// `(min, max, all finite)` of `xs`.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn min_max<W: Lane>(xs: &[W]) -> (f32, f32, bool) {
        let whole = xs.len() / 16 * 16;
        let mut extremes = (f32::INFINITY, f32::NEG_INFINITY, true);
        if whole > 0 {
            // SAFETY: the caller guarantees AVX2; `whole` is a positive multiple of 16.
            let (lo, hi, finite) = unsafe { W::lane_extremes_avx2(&xs[..whole]) };
            // The extremes of finite values do not depend on the order they are taken in
            // (a non-finite value is reported by index before these are used).
            extremes = (reduce_lanes(lo, |a, b| _mm256_min_ps(a, b)), reduce_lanes(hi, |a, b| _mm256_max_ps(a, b)), finite);
        }
        fold_rest(&xs[whole..], extremes)
    }

    /// `op` (minimum or maximum) over the eight lanes of `v`.
    #[inline(always)]
    fn reduce_lanes(v: __m256, op: impl Fn(__m256, __m256) -> __m256) -> f32 {
        // SAFETY: pure register operations of AVX, which every caller has enabled.
        unsafe {
            let v = op(v, _mm256_permute2f128_ps::<0x01>(v, v));
            let v = op(v, _mm256_shuffle_ps::<0b01_00_11_10>(v, v));
            _mm256_cvtss_f32(op(v, _mm256_shuffle_ps::<0b10_11_00_01>(v, v)))
        }
    }

    /// `(min, max, all finite)` extended by the elements a vector loop left over.
    #[inline(always)]
    pub(super) fn fold_rest<W: Lane>(rest: &[W], (mut mn, mut mx, mut all_finite): (f32, f32, bool)) -> (f32, f32, bool) {
        for &x in rest {
            let v = x.to_f32();
            mn = if v < mn { v } else { mn };
            mx = if v > mx { v } else { mx };
            all_finite &= v.is_finite();
        }
        (mn, mx, all_finite)
    }

    /// [`Lane::lane_extremes_avx2`] of float32 and float64 (widened as they load).
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn lane_extremes<W: Lane>(xs: &[W]) -> (__m256, __m256, bool) {
        debug_assert!(xs.len().is_multiple_of(16));
        let mut lo = _mm256_set1_ps(f32::INFINITY);
        let mut hi = _mm256_set1_ps(f32::NEG_INFINITY);
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let inf = _mm256_set1_ps(f32::INFINITY);
        let mut finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        for block in xs.chunks_exact(8) {
            // SAFETY: `block` has exactly 8 elements; AVX2 and F16C are enabled here.
            let v = unsafe { W::load8(block.as_ptr()) };
            lo = _mm256_min_ps(lo, v);
            hi = _mm256_max_ps(hi, v);
            // |v| < inf is false for ±inf and NaN.
            finite = _mm256_and_ps(finite, _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(v, abs_mask), inf));
        }
        (lo, hi, _mm256_movemask_ps(finite) == 0xff)
    }

    /// [`Lane::lane_extremes_avx2`] of 16-bit floats (bfloat16, float16, whose exponent
    /// field is `exponent`) without widening each value: sixteen values per vector,
    /// compared as integers. Flipping the magnitude bits of negative values turns the
    /// sign-magnitude bit patterns into `i16`s in the same order as the values (−0.0 just
    /// below +0.0), so the extremes are found on 16-bit lanes and only the eight lane
    /// extremes are widened (by [`Lane::load8`]). `xs` is a positive multiple of 16 long
    /// (the initial keys are not values: the greatest is a NaN).
    ///
    /// # Safety
    /// The CPU supports AVX2 and F16C.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn lane_extremes_half<W: Lane>(xs: &[W], exponent: i16) -> (__m256, __m256, bool) {
        const { assert!(size_of::<W>() == 2) };
        debug_assert!(!xs.is_empty() && xs.len().is_multiple_of(16));
        // The order-preserving key, and back (the map is its own inverse).
        let key = |v: __m256i| _mm256_xor_si256(v, _mm256_srli_epi16::<1>(_mm256_srai_epi16::<15>(v)));
        let exponent = _mm256_set1_epi16(exponent);
        let mut lo = _mm256_set1_epi16(i16::MAX);
        let mut hi = _mm256_set1_epi16(i16::MIN);
        // All exponent bits set means ±inf or NaN.
        let mut not_finite = _mm256_setzero_si256();
        for block in xs.chunks_exact(16) {
            // SAFETY: `block` holds 16 two-byte values (32 bytes); the load is unaligned.
            let v = unsafe { _mm256_loadu_si256(block.as_ptr().cast()) };
            let k = key(v);
            lo = _mm256_min_epi16(lo, k);
            hi = _mm256_max_epi16(hi, k);
            not_finite = _mm256_or_si256(not_finite, _mm256_cmpeq_epi16(_mm256_and_si256(v, exponent), exponent));
        }
        let all_finite = _mm256_testz_si256(not_finite, not_finite) == 1;
        let (lo_a, lo_b) = (_mm256_castsi256_si128(lo), _mm256_extracti128_si256::<1>(lo));
        let (hi_a, hi_b) = (_mm256_castsi256_si128(hi), _mm256_extracti128_si256::<1>(hi));
        let values = |k: __m128i| {
            let mut bits = [0u16; 8];
            // SAFETY: `bits` holds 8 two-byte values, each the bit pattern of a `W`, which
            // `load8` reads (and widens exactly) as it reads the tensor.
            unsafe {
                _mm_storeu_si128(bits.as_mut_ptr().cast(), _mm256_castsi256_si128(key(_mm256_castsi128_si256(k))));
                W::load8(bits.as_ptr().cast())
            }
        };
        (values(_mm_min_epi16(lo_a, lo_b)), values(_mm_max_epi16(hi_a, hi_b)), all_finite)
    }

    /// The extremes of each of `count` (at most 16) consecutive groups of `group_len`
    /// elements (a positive multiple of 16) that start `xs`, into `mn[..count]` and
    /// `mx[..count]`; `false` (the extremes then unspecified) when a value is not finite.
    /// Eight groups' lane extremes are reduced together (a transposing tree: 7 minimums
    /// for 8 groups instead of 3 per group, and the groups' chains independent).
    ///
    /// # Safety
    /// The CPU supports AVX2 and F16C.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn group_extremes<W: Lane>(xs: &[W], group_len: usize, count: usize, mn: &mut [f32; 16], mx: &mut [f32; 16]) -> bool {
        assert!(count <= 16 && group_len > 0 && group_len.is_multiple_of(16) && xs.len() >= count * group_len);
        let mut finite = true;
        for (eight, (mn, mx)) in xs[..count * group_len].chunks(8 * group_len).zip(mn.chunks_exact_mut(8).zip(mx.chunks_exact_mut(8))) {
            let mut lows = [_mm256_set1_ps(f32::INFINITY); 8];
            let mut highs = [_mm256_set1_ps(f32::NEG_INFINITY); 8];
            for (g, group) in eight.chunks_exact(group_len).enumerate() {
                // SAFETY: the caller guarantees AVX2 and F16C; `group_len` is a positive
                // multiple of 16.
                let (lo, hi, group_finite) = unsafe { W::lane_extremes_avx2(group) };
                (lows[g], highs[g]) = (lo, hi);
                finite &= group_finite;
            }
            // SAFETY: `mn` and `mx` hold 8 floats each.
            unsafe {
                _mm256_storeu_ps(mn.as_mut_ptr(), reduce_8_vectors(lows, |a, b| _mm256_min_ps(a, b)));
                _mm256_storeu_ps(mx.as_mut_ptr(), reduce_8_vectors(highs, |a, b| _mm256_max_ps(a, b)));
            }
        }
        finite
    }

    /// Lane `g` of the result is `op` over the eight lanes of `v[g]`, for an `op` (minimum
    /// or maximum) whose result does not depend on the order it is applied in. Each round
    /// halves the lanes per vector and the vectors: the halves to combine are brought
    /// together by one two-source shuffle each.
    #[inline(always)]
    fn reduce_8_vectors(v: [__m256; 8], op: impl Fn(__m256, __m256) -> __m256) -> __m256 {
        // SAFETY: pure register operations of AVX2, which every caller has enabled.
        unsafe {
            // Pairs (a, b) → lanes 0-3 from a, 4-7 from b: 128-bit halves low with high.
            let w: [__m256; 4] = std::array::from_fn(|j| {
                let (a, b) = (v[2 * j], v[2 * j + 1]);
                op(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b))
            });
            // Within halves: elements 0,1 with 2,3 → half h of u[j]: groups 4j + h, 4j + 2 + h.
            let u: [__m256; 2] = std::array::from_fn(|j| {
                let (a, b) = (w[2 * j], w[2 * j + 1]);
                op(_mm256_shuffle_ps::<0b01_00_01_00>(a, b), _mm256_shuffle_ps::<0b11_10_11_10>(a, b))
            });
            // Elements 0,2 with 1,3 → element k of half h holds group 2k + h.
            let r = op(_mm256_shuffle_ps::<0b10_00_10_00>(u[0], u[1]), _mm256_shuffle_ps::<0b11_01_11_01>(u[0], u[1]));
            // Lane g ← lane 4 (g mod 2) + g / 2.
            _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
        }
    }

    /// The stored codes of `xs` (`xs.len()` a multiple of 32), `bits` bits each, packed
    /// into `out` (`xs.len() * bits / 8` bytes; `bits = 8` also serves unpacked storage):
    /// `clamp(rint(x * inv) + zp, lo, hi) + offset`, as `GroupParams::encode`, then the
    /// docs/math.md little-end-first packing of `CodeWriter`.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn encode<W: Lane>(xs: &[W], p: GroupParams, bits: u32, out: &mut [u8]) {
        // SAFETY: the caller guarantees AVX2.
        unsafe { encode_impl::<W, false>(xs, p, bits, out, None, &mut StatsAcc::default(), &[]) }
    }

    /// [`super::Avx2::encode_groups`] on 256-bit vectors, group by group, each group
    /// asking for its share of `ahead` ([`super::batch_after_next`]) as it encodes.
    ///
    /// # Safety
    /// The CPU supports AVX2; `group_len` is a multiple of 64, `xs` holds `params.len()`
    /// groups, `out` their codes and `accs` (when given) one accumulator per group.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn encode_groups<W: Lane>(
        xs: &[W],
        group_len: usize,
        params: &[GroupParams],
        bits: u32,
        out: &mut [u8],
        accs: Option<&mut [StatsAcc]>,
        ahead: &[W],
    ) {
        let out_len = group_len * bits as usize / 8;
        let groups = xs.chunks_exact(group_len).zip(params).zip(out.chunks_exact_mut(out_len)).enumerate();
        let share = |k| super::group_share(ahead, group_len, k);
        match accs {
            Some(accs) => {
                for ((k, ((xs, p), out)), acc) in groups.zip(accs) {
                    // SAFETY: the caller guarantees AVX2; `xs` is whole statistics blocks.
                    unsafe { encode_impl::<W, true>(xs, *p, bits, out, None, acc, share(k)) };
                }
            }
            None => {
                let mut unused = StatsAcc::default();
                for (k, ((xs, p), out)) in groups {
                    // SAFETY: the caller guarantees AVX2; `xs` is a multiple of 32 long.
                    unsafe { encode_impl::<W, false>(xs, *p, bits, out, None, &mut unused, share(k)) };
                }
            }
        }
    }

    /// Ask the CPU to bring the cache lines of `xs` into L1: a hint, which reads nothing
    /// the program sees.
    #[inline(always)]
    pub(super) fn request_lines<W>(xs: &[W]) {
        let start = xs.as_ptr().cast::<u8>();
        for at in (0..std::mem::size_of_val(xs)).step_by(64) {
            // SAFETY: `start + at` lies inside `xs` (`at` < its size in bytes); a prefetch
            // does not fault and needs only SSE, part of every x86-64 CPU.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(at).cast()) };
        }
    }

    /// [`encode`] of a segment's whole statistics blocks (`xs.len()` a multiple of
    /// `STAT_BLOCK`) that also takes their error sums from the code values it computes
    /// anyway (the same sums as [`segment_stats`]), adds the segment's last, partial block
    /// `tail` when there is one, and folds the segment into `acc`.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn encode_with_stats<W: Lane>(
        xs: &[W],
        p: GroupParams,
        bits: u32,
        out: &mut [u8],
        tail: Option<&BlockSums>,
        acc: &mut StatsAcc,
    ) {
        debug_assert!(xs.len().is_multiple_of(STAT_BLOCK));
        // SAFETY: the caller guarantees AVX2.
        unsafe { encode_impl::<W, true>(xs, p, bits, out, tail, acc, &[]) }
    }

    /// A block's float32 lane sums and maxima (`sq_err`, `sq`, `max_abs`), one register each.
    #[inline(always)]
    pub(super) fn block_lanes(block: &BlockSums) -> [__m256; 3] {
        // SAFETY: each array holds 8 floats, read with unaligned loads (AVX, which every
        // caller has enabled).
        unsafe { [_mm256_loadu_ps(block.sq_err.as_ptr()), _mm256_loadu_ps(block.sq.as_ptr()), _mm256_loadu_ps(block.max_abs.as_ptr())] }
    }

    /// [`encode`], and with `STATS` [`encode_with_stats`]. Element `i` of `ahead` (which
    /// may be shorter than `xs`, or empty) is requested from memory while element `i` of
    /// `xs` is encoded.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn encode_impl<W: Lane, const STATS: bool>(
        xs: &[W],
        p: GroupParams,
        bits: u32,
        out: &mut [u8],
        tail: Option<&BlockSums>,
        acc: &mut StatsAcc,
        ahead: &[W],
    ) {
        let out_block = 32 * bits as usize / 8;
        debug_assert!(xs.len().is_multiple_of(32) && out.len() == xs.len() / 32 * out_block);
        let inv = _mm256_set1_ps(p.inv);
        // `clamp(rint(y) + zp, lo, hi)` is `rint(clamp(y, lo - zp, hi - zp)) + zp` (rint is
        // monotone and the bounds are integers): clamped first, `y` stays far inside the
        // exact range of the rounding, and the zero point joins the offset as an integer.
        let below = _mm256_set1_ps(p.lo - p.zp);
        let above = _mm256_set1_ps(p.hi - p.zp);
        // Codes are negative only for unpacked symmetric storage (int8 bit patterns).
        let signed = p.lo + (p.offset as f32) < 0.0;
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let scale = _mm256_set1_ps(p.scale);
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        // This statistics block's float32 lane sums: Σ(x − x')², Σx², max |x − x'|.
        let mut block_sums = [_mm256_setzero_ps(); 3];
        let code = |v: __m256, sums: &mut [__m256; 3]| {
            const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            let y = _mm256_mul_ps(v, inv);
            if !STATS {
                // Round half to even, as `rint_small` (never the MXCSR mode); the zero
                // point and both bounds are applied to the packed codes (see `low_code`).
                return _mm256_cvttps_epi32(_mm256_round_ps::<NEAREST>(y));
            }
            let d = _mm256_round_ps::<NEAREST>(_mm256_min_ps(_mm256_max_ps(y, below), above));
            // As `BlockSums::lane`, from this y = x·inv and d = q − zp (the square of `y − d`
            // is that of its absolute value, bit for bit).
            let e = _mm256_sub_ps(y, d);
            sums[0] = _mm256_add_ps(sums[0], _mm256_mul_ps(e, e));
            sums[1] = _mm256_add_ps(sums[1], _mm256_mul_ps(y, y));
            let err = _mm256_and_ps(_mm256_sub_ps(v, _mm256_mul_ps(d, scale)), abs_mask);
            sums[2] = _mm256_max_ps(err, sums[2]);
            _mm256_cvttps_epi32(d)
        };
        // Without statistics `clamp(rint(y) + zp, lo, hi)` is computed on packed codes,
        // 32 at a time rather than as floats 8 at a time: `rint(y)` as int32, saturated to
        // int16, the zero point and offset added with saturation, saturated to bytes, then
        // clamped to the lowest and highest stored code. Every step after the rounding is
        // monotone and leaves a code in `lo..=hi` as it is, so the clamp gives the
        // reference's byte. It needs `y` below 2^31 (a larger one converts to the most
        // negative integer); `p` comes from a range holding every value of the group, so
        // |y| ≤ 2^bits. A `y` below the 32-bit range converts to that most negative
        // integer too, and is clamped to `lo` as it should be. With statistics the codes
        // were clamped as floats (the error needs the clamped value), and only the zero
        // point and offset are added here, the same way.
        let shift16 = _mm256_set1_epi16((p.zp as i32 + p.offset) as i16);
        let low_code = _mm256_set1_epi8((p.lo as i32 + p.offset) as i8);
        let high_code = _mm256_set1_epi8((p.hi as i32 + p.offset) as i8);
        // Multipliers that fold neighbouring codes into one value (maddubs: unsigned bytes
        // times signed bytes, adjacent pairs summed): c0 + 16·c1 for nibbles; c0 + 4·c1,
        // then (c0 + 4·c1) + 16·(c2 + 4·c3) for 2-bit codes. Every sum is at most 255.
        let nibble_pairs = _mm256_set1_epi16(0x1001);
        let crumb_pairs = _mm256_set1_epi16(0x0401);
        let crumb_quads = _mm256_set1_epi32(0x0010_0001);
        // Per-lane float64 sums of the finished statistics blocks (lanes 0-3 and 4-7).
        let (mut err_lo, mut err_hi, mut sq_lo, mut sq_hi) =
            (_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd());
        let mut max_all = _mm256_setzero_ps();
        let mut ahead = ahead.chunks(32);
        for (i, (block, dst)) in xs.chunks_exact(32).zip(out.chunks_exact_mut(out_block)).enumerate() {
            if let Some(lines) = ahead.next() {
                request_lines(lines);
            }
            let p = block.as_ptr();
            // SAFETY: `block` holds 32 elements: four 8-element loads.
            let (a, b, c, d) = unsafe {
                (
                    code(W::load8(p), &mut block_sums),
                    code(W::load8(p.add(8)), &mut block_sums),
                    code(W::load8(p.add(16)), &mut block_sums),
                    code(W::load8(p.add(24)), &mut block_sums),
                )
            };
            // To 16 bits, then 8 (unsigned, or signed for int8).
            let (ab, cd) = (_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
            let (ab, cd) = (_mm256_adds_epi16(ab, shift16), _mm256_adds_epi16(cd, shift16));
            let bytes = if signed { _mm256_packs_epi16(ab, cd) } else { _mm256_packus_epi16(ab, cd) };
            // The packs work within 128-bit lanes; put the 4-byte groups back in order.
            let bytes = _mm256_permutevar8x32_epi32(bytes, order);
            let bytes = match (STATS, signed) {
                (true, _) => bytes,
                (false, true) => _mm256_min_epi8(_mm256_max_epi8(bytes, low_code), high_code),
                (false, false) => _mm256_min_epu8(_mm256_max_epu8(bytes, low_code), high_code),
            };
            match bits {
                4 => {
                    // 16 words c[2i] + 16·c[2i+1], narrowed to bytes (lanes 0 and 2 of the
                    // 64-bit quarters hold them in order).
                    let words = _mm256_maddubs_epi16(bytes, nibble_pairs);
                    let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi16(words, words));
                    // SAFETY: `dst` holds 16 bytes.
                    unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), _mm256_castsi256_si128(packed)) };
                }
                2 => {
                    // 8 dwords c[4i] + 4·c[4i+1] + 16·c[4i+2] + 64·c[4i+3], narrowed to bytes.
                    let quads = _mm256_madd_epi16(_mm256_maddubs_epi16(bytes, crumb_pairs), crumb_quads);
                    let words = _mm256_packs_epi32(quads, quads);
                    let narrow = _mm256_packus_epi16(words, words);
                    let packed = _mm256_permutevar8x32_epi32(narrow, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
                    // SAFETY: `dst` holds 8 bytes.
                    unsafe { _mm_storel_epi64(dst.as_mut_ptr().cast(), _mm256_castsi256_si128(packed)) };
                }
                _ => {
                    // SAFETY: `dst` holds 32 bytes.
                    unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), bytes) };
                }
            }
            if STATS && (i + 1) % (STAT_BLOCK / 32) == 0 {
                // A statistics block ends: its float32 lane sums join the float64 ones
                // (`SegmentLanes::add_block`, lane by lane).
                let [sq_err, sq, max_abs] = block_sums;
                err_lo = _mm256_add_pd(err_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(sq_err)));
                err_hi = _mm256_add_pd(err_hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(sq_err)));
                sq_lo = _mm256_add_pd(sq_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
                sq_hi = _mm256_add_pd(sq_hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(sq)));
                max_all = _mm256_max_ps(max_abs, max_all);
                block_sums = [_mm256_setzero_ps(); 3];
            }
        }
        if STATS {
            if let Some(tail) = tail {
                let [sq_err, sq, max] = block_lanes(tail);
                err_lo = _mm256_add_pd(err_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(sq_err)));
                err_hi = _mm256_add_pd(err_hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(sq_err)));
                sq_lo = _mm256_add_pd(sq_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
                sq_hi = _mm256_add_pd(sq_hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(sq)));
                max_all = _mm256_max_ps(max, max_all);
            }
            // `fold_lanes` in registers: lanes k + (k + 4), then the pairs (0, 2) and
            // (1, 3), then the two halves.
            let fold = |lo: __m256d, hi: __m256d| {
                let quad = _mm256_add_pd(lo, hi);
                let pair = _mm_add_pd(_mm256_castpd256_pd128(quad), _mm256_extractf128_pd::<1>(quad));
                _mm_cvtsd_f64(_mm_add_pd(pair, _mm_unpackhi_pd(pair, pair)))
            };
            let max = _mm_max_ps(_mm256_castps256_ps128(max_all), _mm256_extractf128_ps::<1>(max_all));
            let max = _mm_max_ps(max, _mm_movehl_ps(max, max));
            let max = _mm_max_ss(max, _mm_movehdup_ps(max));
            acc.add_segment(fold(err_lo, err_hi), fold(sq_lo, sq_hi), _mm_cvtss_f32(max), p.scale);
        }
    }

    /// The error statistics of one segment `xs` (docs/math.md, statistics) into `lanes`:
    /// each element's dequantized value `(code_value(x) − zp)·scale` computed in registers
    /// as `GroupParams` computes it, then the float32 lane sums of each block of
    /// `STAT_BLOCK` elements, exactly as `SegmentLanes::add` sums them (lane `k` of a vector
    /// is lane `k` of the block; no fused multiply-add).
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn segment_stats<W: Lane>(xs: &[W], p: GroupParams, lanes: &mut SegmentLanes) {
        let inv = _mm256_set1_ps(p.inv);
        let magic = _mm256_set1_ps(12_582_912.0); // 1.5 * 2^23, as `rint_small`
        let zp = _mm256_set1_ps(p.zp);
        let lo = _mm256_set1_ps(p.lo);
        let hi = _mm256_set1_ps(p.hi);
        let scale = _mm256_set1_ps(p.scale);
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        for block in xs.chunks(STAT_BLOCK) {
            let (mut sq_err, mut sq, mut max_abs) = (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
            let mut vectors = block.chunks_exact(8);
            for v in &mut vectors {
                // SAFETY: `v` holds 8 elements; AVX2 and F16C are enabled here.
                let x = unsafe { W::load8(v.as_ptr()) };
                let y = _mm256_mul_ps(x, inv);
                let r = _mm256_sub_ps(_mm256_add_ps(y, magic), magic);
                let q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, zp), lo), hi);
                // As `BlockSums::lane`.
                let d = _mm256_sub_ps(q, zp);
                let e = _mm256_and_ps(_mm256_sub_ps(y, d), abs_mask);
                sq_err = _mm256_add_ps(sq_err, _mm256_mul_ps(e, e));
                sq = _mm256_add_ps(sq, _mm256_mul_ps(y, y));
                let err = _mm256_and_ps(_mm256_sub_ps(x, _mm256_mul_ps(d, scale)), abs_mask);
                max_abs = _mm256_max_ps(err, max_abs); // err > max ? err : max
            }
            let mut sums = BlockSums::default();
            // SAFETY: each array holds 8 floats.
            unsafe {
                _mm256_storeu_ps(sums.sq_err.as_mut_ptr(), sq_err);
                _mm256_storeu_ps(sums.sq.as_mut_ptr(), sq);
                _mm256_storeu_ps(sums.max_abs.as_mut_ptr(), max_abs);
            }
            for (k, &x) in vectors.remainder().iter().enumerate() {
                let x = x.to_f32();
                sums.lane(k, x, p.code_value(x) - p.zp, p.inv, p.scale);
            }
            lanes.add_block(&sums);
        }
    }

    /// [`StatsAcc::add_run`]'s lanes over the whole groups of eight of `xs` and `ys`
    /// (element `k` of a group into lane `k`): `|x − y|` in float32, its square and `x²`
    /// in float64 added to the lane's float64 sums, the largest error per lane, exactly as
    /// the scalar loop computes them (no fused multiply-add). Returns how many elements it
    /// took; the caller adds the rest.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn add_run_lanes(xs: &[f32], ys: &[f32], sq_err: &mut [f64; 8], sq: &mut [f64; 8], max_abs: &mut [f32; 8]) -> usize {
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        // SAFETY: each array holds 8 values; the loads are unaligned.
        let (mut err_lo, mut err_hi, mut sq_lo, mut sq_hi, mut max) = unsafe {
            (
                _mm256_loadu_pd(sq_err.as_ptr()),
                _mm256_loadu_pd(sq_err.as_ptr().add(4)),
                _mm256_loadu_pd(sq.as_ptr()),
                _mm256_loadu_pd(sq.as_ptr().add(4)),
                _mm256_loadu_ps(max_abs.as_ptr()),
            )
        };
        let (x8s, y8s) = (xs.chunks_exact(8), ys.chunks_exact(8));
        let taken = x8s.len().min(y8s.len()) * 8;
        for (x8, y8) in x8s.zip(y8s) {
            // SAFETY: both chunks hold 8 floats; the loads are unaligned.
            let (x, y) = unsafe { (_mm256_loadu_ps(x8.as_ptr()), _mm256_loadu_ps(y8.as_ptr())) };
            let err = _mm256_and_ps(_mm256_sub_ps(x, y), abs_mask);
            let (e_lo, e_hi) = (_mm256_cvtps_pd(_mm256_castps256_ps128(err)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(err)));
            let (x_lo, x_hi) = (_mm256_cvtps_pd(_mm256_castps256_ps128(x)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x)));
            err_lo = _mm256_add_pd(err_lo, _mm256_mul_pd(e_lo, e_lo));
            err_hi = _mm256_add_pd(err_hi, _mm256_mul_pd(e_hi, e_hi));
            sq_lo = _mm256_add_pd(sq_lo, _mm256_mul_pd(x_lo, x_lo));
            sq_hi = _mm256_add_pd(sq_hi, _mm256_mul_pd(x_hi, x_hi));
            max = _mm256_max_ps(err, max); // err > max ? err : max
        }
        // SAFETY: as for the loads.
        unsafe {
            _mm256_storeu_pd(sq_err.as_mut_ptr(), err_lo);
            _mm256_storeu_pd(sq_err.as_mut_ptr().add(4), err_hi);
            _mm256_storeu_pd(sq.as_mut_ptr(), sq_lo);
            _mm256_storeu_pd(sq.as_mut_ptr().add(4), sq_hi);
            _mm256_storeu_ps(max_abs.as_mut_ptr(), max);
        }
        taken
    }

    /// [`crate::quant::gguf::kquants`]' candidate-scale search (ggml's `make_qkx2_quants`)
    /// for a super-block's eight sub-blocks at once, sub-block `k` in lane `k`; the same
    /// contract and the same bits as the portable `make_qkx2_quants_lanes`, whose comments
    /// say how ggml's branches become per-lane selects. Every float operation is the scalar
    /// search's, in its order: `min_ps(v, m)` is `v < m ? v : m` and `max_ps(v, m)` is
    /// `v > m ? v : m`, as the scalar compare-and-select; no fused multiply-add.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(crate) unsafe fn qkx2_search(search: Qkx2, x: &[[f32; 8]; 32], weights: &[[f32; 8]; 32], l_out: &mut [[u8; 8]; 32]) -> ([f32; 8], [f32; 8]) {
        let Qkx2 { nmax, rmin, rdelta, nstep } = search;
        // SAFETY: every row holds 8 floats; the load is unaligned.
        let load = |row: &[f32; 8]| unsafe { _mm256_loadu_ps(row.as_ptr()) };
        let zero = _mm256_setzero_ps();
        // ggml's nearest_int (2^23 + 2^22 added, the mantissa read back), clamped to
        // 0..=nmax, as a float.
        let magic = _mm256_set1_ps(12_582_912.0);
        let mantissa = _mm256_set1_epi32(0x007f_ffff);
        let bias = _mm256_set1_epi32(0x0040_0000);
        let top = _mm256_set1_epi32(nmax);
        let code = |v: __m256| {
            let l = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(_mm256_add_ps(v, magic)), mantissa), bias);
            _mm256_cvtepi32_ps(_mm256_min_epi32(_mm256_max_epi32(l, _mm256_setzero_si256()), top))
        };
        let (mut min, mut max, mut sum_w) = (load(&x[0]), load(&x[0]), load(&weights[0]));
        let mut sum_x = _mm256_mul_ps(sum_w, min);
        for i in 1..32 {
            let (v, w) = (load(&x[i]), load(&weights[i]));
            min = _mm256_min_ps(v, min);
            max = _mm256_max_ps(v, max);
            sum_w = _mm256_add_ps(sum_w, w);
            sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(w, v));
        }
        min = _mm256_blendv_ps(min, zero, _mm256_cmp_ps::<_CMP_GT_OQ>(min, zero));
        let flat = _mm256_cmp_ps::<_CMP_EQ_OQ>(max, min);
        let flat_min = min;
        let mut iscale = _mm256_div_ps(_mm256_set1_ps(nmax as f32), _mm256_sub_ps(max, min));
        let mut scale = _mm256_div_ps(_mm256_set1_ps(1.0), iscale);
        let mut best_error = zero;
        let mut best = [zero; 32];
        for i in 0..32 {
            let (v, w) = (load(&x[i]), load(&weights[i]));
            let l = code(_mm256_mul_ps(iscale, _mm256_sub_ps(v, min)));
            best[i] = l;
            let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, l), min), v);
            best_error = _mm256_add_ps(best_error, _mm256_mul_ps(w, _mm256_mul_ps(diff, diff)));
        }
        let mut laux = [zero; 32];
        for is in 0..=nstep {
            let numerator = rmin + rdelta * is as f32 + nmax as f32;
            iscale = _mm256_div_ps(_mm256_set1_ps(numerator), _mm256_sub_ps(max, min));
            let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
            for i in 0..32 {
                let (v, w) = (load(&x[i]), load(&weights[i]));
                let l = code(_mm256_mul_ps(iscale, _mm256_sub_ps(v, min)));
                laux[i] = l;
                let wl = _mm256_mul_ps(w, l);
                sum_l = _mm256_add_ps(sum_l, wl);
                sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wl, l));
                sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wl, v));
            }
            let det = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
            let mut this_scale = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)), det);
            let mut this_min = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)), det);
            let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(this_min, zero);
            this_min = _mm256_blendv_ps(this_min, zero, positive);
            this_scale = _mm256_blendv_ps(this_scale, _mm256_div_ps(sum_xl, sum_l2), positive);
            let mut cur_error = zero;
            for i in 0..32 {
                let (v, w) = (load(&x[i]), load(&weights[i]));
                let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(this_scale, laux[i]), this_min), v);
                cur_error = _mm256_add_ps(cur_error, _mm256_mul_ps(w, _mm256_mul_ps(diff, diff)));
            }
            let better = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(det, zero), _mm256_cmp_ps::<_CMP_LT_OQ>(cur_error, best_error));
            for i in 0..32 {
                best[i] = _mm256_blendv_ps(best[i], laux[i], better);
            }
            best_error = _mm256_blendv_ps(best_error, cur_error, better);
            scale = _mm256_blendv_ps(scale, this_scale, better);
            min = _mm256_blendv_ps(min, this_min, better);
        }
        for (row, &l) in l_out.iter_mut().zip(&best) {
            let mut codes = [0i32; 8];
            // SAFETY: `codes` holds 8 i32s; the store is unaligned.
            unsafe { _mm256_storeu_si256(codes.as_mut_ptr().cast(), _mm256_cvttps_epi32(_mm256_andnot_ps(flat, l))) };
            *row = codes.map(|c| c as u8);
        }
        let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
        let negated = _mm256_xor_ps(_mm256_blendv_ps(min, flat_min, flat), _mm256_set1_ps(-0.0));
        // SAFETY: both arrays hold 8 floats; the stores are unaligned.
        unsafe {
            _mm256_storeu_ps(scales.as_mut_ptr(), _mm256_andnot_ps(flat, scale));
            _mm256_storeu_ps(mins.as_mut_ptr(), negated);
        }
        (scales, mins)
    }

    /// [`crate::quant::gguf::kquants`]' Q6_K search (ggml's `make_qx_quants`, `rmse_type =
    /// 1`, no weights) for eight 16-value sub-blocks at once, sub-block `k` in lane `k`; the
    /// same contract and bits as the portable `make_qx_quants_lanes`. As [`qkx2_search`]:
    /// the scalar operations in their order, branches as per-lane selects.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(crate) unsafe fn qx_search(nmax: i32, x: &[[f32; 8]; 16], l_out: &mut [[i8; 8]; 16]) -> [f32; 8] {
        // SAFETY: every row holds 8 floats; the load is unaligned.
        let load = |row: &[f32; 8]| unsafe { _mm256_loadu_ps(row.as_ptr()) };
        let zero = _mm256_setzero_ps();
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let magic = _mm256_set1_ps(12_582_912.0);
        let mantissa = _mm256_set1_epi32(0x007f_ffff);
        let bias = _mm256_set1_epi32(0x0040_0000);
        let (low, high) = (_mm256_set1_epi32(-nmax), _mm256_set1_epi32(nmax - 1));
        // ggml's nearest_int clamped to -nmax..=nmax-1, as a float.
        let code = |v: __m256| {
            let l = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(_mm256_add_ps(v, magic)), mantissa), bias);
            _mm256_cvtepi32_ps(_mm256_min_epi32(_mm256_max_epi32(l, low), high))
        };
        let (mut max, mut amax) = (zero, zero);
        for row in x {
            let v = load(row);
            let a = _mm256_and_ps(v, abs_mask);
            let larger = _mm256_cmp_ps::<_CMP_GT_OQ>(a, amax);
            amax = _mm256_blendv_ps(amax, a, larger);
            max = _mm256_blendv_ps(max, v, larger);
        }
        let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(amax, _mm256_set1_ps(crate::quant::gguf::kquants::GROUP_MAX_EPS));
        let search = |iscale: __m256, codes: &mut [__m256; 16]| {
            let (mut sumlx, mut suml2) = (zero, zero);
            for (row, out) in x.iter().zip(codes.iter_mut()) {
                let v = load(row);
                let l = code(_mm256_mul_ps(iscale, v));
                *out = l;
                let w = _mm256_mul_ps(v, v);
                sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(w, v), l));
                suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, l), l));
            }
            (sumlx, suml2)
        };
        let mut best = [zero; 16];
        let (sumlx, suml2) = search(_mm256_div_ps(_mm256_set1_ps(-(nmax as f32)), max), &mut best);
        let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(suml2, zero);
        let mut scale = _mm256_and_ps(nonzero, _mm256_div_ps(sumlx, suml2));
        let mut best_fit = _mm256_mul_ps(scale, sumlx);
        let mut laux = [zero; 16];
        for is in (-9i32..=9).filter(|&is| is != 0) {
            let numerator = -(nmax as f32 + 0.1f32 * is as f32);
            let (sumlx, suml2) = search(_mm256_div_ps(_mm256_set1_ps(numerator), max), &mut laux);
            let better = _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GT_OQ>(suml2, zero),
                _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_mul_ps(sumlx, sumlx), _mm256_mul_ps(best_fit, suml2)),
            );
            for (kept, &l) in best.iter_mut().zip(&laux) {
                *kept = _mm256_blendv_ps(*kept, l, better);
            }
            scale = _mm256_blendv_ps(scale, _mm256_div_ps(sumlx, suml2), better);
            best_fit = _mm256_blendv_ps(best_fit, _mm256_mul_ps(scale, sumlx), better);
        }
        let offset = _mm256_set1_epi32(nmax);
        for (row, &l) in l_out.iter_mut().zip(&best) {
            let mut codes = [0i32; 8];
            let stored = _mm256_andnot_si256(_mm256_castps_si256(tiny), _mm256_add_epi32(_mm256_cvttps_epi32(l), offset));
            // SAFETY: `codes` holds 8 i32s; the store is unaligned.
            unsafe { _mm256_storeu_si256(codes.as_mut_ptr().cast(), stored) };
            *row = codes.map(|c| c as i8);
        }
        let mut scales = [0f32; 8];
        // SAFETY: `scales` holds 8 floats; the store is unaligned.
        unsafe { _mm256_storeu_ps(scales.as_mut_ptr(), _mm256_andnot_ps(tiny, scale)) };
        scales
    }

    /// [`super::Avx2::widen`]: `src` as float32 into `dst`, backwards when `reversed`.
    ///
    /// # Safety
    /// The CPU supports AVX2 and F16C.
    ///
    /// # Panics
    /// When `src` and `dst` differ in length.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn widen<W: Lane>(src: &[W], dst: &mut [f32], reversed: bool) {
        assert_eq!(src.len(), dst.len());
        let n = src.len();
        let reverse = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
        let mut k = 0;
        while k + 8 <= n {
            // SAFETY: `src[k .. k + 8]`, `src[n − k − 8 .. n − k]` and `dst[k .. k + 8]` are
            // in bounds (`k + 8 ≤ n`, equal lengths); AVX2 and F16C are enabled here.
            unsafe {
                let v = if reversed {
                    _mm256_permutevar8x32_ps(W::load8(src.as_ptr().add(n - k - 8)), reverse)
                } else {
                    W::load8(src.as_ptr().add(k))
                };
                _mm256_storeu_ps(dst.as_mut_ptr().add(k), v);
            }
            k += 8;
        }
        for (k, d) in dst.iter_mut().enumerate().skip(k) {
            *d = if reversed { src[n - 1 - k] } else { src[k] }.to_f32();
        }
    }

    /// Transpose 8×8 elements into float32:
    /// `dst[i * dst_stride + j] = src[j * src_stride + i]` for `i, j < 8` (eight 8-element
    /// loads widened as [`Lane::load8`] widens, shuffles, eight 8-float stores). Float32
    /// bits are copied as they are.
    ///
    /// # Safety
    /// The CPU supports AVX2 and F16C.
    ///
    /// # Panics
    /// When `src` or `dst` is too short for the eight rows it reads or writes.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn transpose_8x8<W: Lane>(src: &[W], src_stride: usize, dst: &mut [f32], dst_stride: usize) {
        assert!(src.len() >= 7 * src_stride + 8 && dst.len() >= 7 * dst_stride + 8);
        let s = src.as_ptr();
        // SAFETY: row j reads src[j*src_stride .. j*src_stride + 8], in bounds by the assert;
        // AVX2 and F16C are enabled here.
        let r: [__m256; 8] = std::array::from_fn(|j| unsafe { W::load8(s.add(j * src_stride)) });
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        let d = dst.as_mut_ptr();
        for (i, v) in out.into_iter().enumerate() {
            // SAFETY: row i writes dst[i*dst_stride .. i*dst_stride + 8], in bounds by the assert.
            unsafe { _mm256_storeu_ps(d.add(i * dst_stride), v) };
        }
    }
}

/// The encode on 512-bit vectors (AVX-512 F, BW, VL): sixteen elements per vector, 64 per
/// step, with the same IEEE operations in the same order as [`avx2::encode_impl`] and so
/// the same bits. The fused statistics keep the 8-lane order of docs/math.md: a vector's
/// low half is added before its high half, as the AVX2 kernel adds its two vectors.
#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    use std::arch::x86_64::*;

    use super::{avx2, Lane};
    use crate::quant::math::GroupParams;
    use crate::quant::quantized::{BlockSums, StatsAcc, STAT_BLOCK};

    /// Transpose 16×16 elements into float32:
    /// `dst[i * dst_stride + j] = src[j * src_stride + i]` for `i, j < 16` (sixteen
    /// 16-element loads widened as [`Lane::load16`] widens, four rounds of in-register
    /// shuffles, sixteen 16-float stores). Float32 bits are copied as they are.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F, BW and VL.
    ///
    /// # Panics
    /// When `src` or `dst` is too short for the sixteen rows it reads or writes.
    #[inline]
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
    pub unsafe fn transpose_16x16<W: Lane>(src: &[W], src_stride: usize, dst: &mut [f32], dst_stride: usize) {
        assert!(src.len() >= 15 * src_stride + 16 && dst.len() >= 15 * dst_stride + 16);
        let s = src.as_ptr();
        // SAFETY: row j reads src[j*src_stride .. j*src_stride + 16], in bounds by the
        // assert; AVX-512 F is enabled here.
        let r: [__m512; 16] = std::array::from_fn(|j| unsafe { W::load16(s.add(j * src_stride)) });
        // Rows 2i and 2i+1 interleaved in 32-bit pairs, then 64-bit pairs of those within
        // each 128-bit lane: every lane of u[4i + k] holds a 4×4 block's column.
        let t: [__m512; 16] = std::array::from_fn(|n| {
            let (a, b) = (r[n & !1], r[n | 1]);
            if n % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        let u: [__m512; 16] = std::array::from_fn(|n| {
            let (i, k, hi) = (n / 4, (n % 4) / 2, n % 2 == 1);
            let (a, b) = (_mm512_castps_pd(t[4 * i + k]), _mm512_castps_pd(t[4 * i + 2 + k]));
            _mm512_castpd_ps(if hi { _mm512_unpackhi_pd(a, b) } else { _mm512_unpacklo_pd(a, b) })
        });
        // Then the 128-bit lanes themselves, in two rounds of four-lane shuffles.
        let v: [__m512; 16] = std::array::from_fn(|n| {
            let (i, k) = (n / 8, n % 4);
            let (a, b) = (u[8 * i + k], u[8 * i + 4 + k]);
            if n % 8 < 4 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xDD>(a, b)
            }
        });
        let d = dst.as_mut_ptr();
        for k in 0..8 {
            let low = _mm512_shuffle_f32x4::<0x88>(v[k], v[8 + k]);
            let high = _mm512_shuffle_f32x4::<0xDD>(v[k], v[8 + k]);
            // SAFETY: rows k and k+8 write dst[row*dst_stride .. row*dst_stride + 16], in
            // bounds by the assert.
            unsafe {
                _mm512_storeu_ps(d.add(k * dst_stride), low);
                _mm512_storeu_ps(d.add((k + 8) * dst_stride), high);
            }
        }
    }

    /// [`avx2::min_max`] on 512-bit vectors: `(min, max, all finite)` of `xs`.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F, BW and VL.
    #[inline]
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
    pub unsafe fn min_max<W: Lane>(xs: &[W]) -> (f32, f32, bool) {
        let whole = xs.len() / 32 * 32;
        if whole == 0 {
            // SAFETY: AVX-512 implies AVX2.
            return unsafe { avx2::min_max(xs) };
        }
        // SAFETY: the caller guarantees AVX-512 F, BW and VL; `whole` is a positive
        // multiple of 32.
        let (lo, hi, finite) = unsafe { W::lane_extremes_avx512(&xs[..whole]) };
        // The extremes of finite values do not depend on the order they are taken in (a
        // non-finite value is reported by index before these are used).
        let (mn, mx) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        avx2::fold_rest(&xs[whole..], (mn, mx, finite))
    }

    /// [`Lane::lane_extremes_avx512`] of float32 and float64 (widened as they load).
    ///
    /// # Safety
    /// The CPU supports AVX-512 F, BW and VL.
    #[inline]
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
    pub unsafe fn lane_extremes<W: Lane>(xs: &[W]) -> (__m512, __m512, bool) {
        debug_assert!(xs.len().is_multiple_of(32));
        let mut lo = _mm512_set1_ps(f32::INFINITY);
        let mut hi = _mm512_set1_ps(f32::NEG_INFINITY);
        let inf = _mm512_set1_ps(f32::INFINITY);
        let mut finite: __mmask16 = 0xffff;
        for block in xs.chunks_exact(16) {
            // SAFETY: `block` has exactly 16 elements; AVX-512 F is enabled here.
            let v = unsafe { W::load16(block.as_ptr()) };
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
            // |v| < inf is false for ±inf and NaN.
            finite &= _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(v), inf);
        }
        (lo, hi, finite == 0xffff)
    }

    /// [`avx2::lane_extremes_half`] on 512-bit vectors: thirty-two keys per vector, each
    /// computed in two instructions (an arithmetic shift, then `x ^ (s & 0x7fff)` as one
    /// ternary-logic instruction). `xs` is a positive multiple of 32 long.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F, BW and VL.
    #[inline]
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
    pub unsafe fn lane_extremes_half<W: Lane>(xs: &[W], exponent: i16) -> (__m512, __m512, bool) {
        const { assert!(size_of::<W>() == 2) };
        debug_assert!(!xs.is_empty() && xs.len().is_multiple_of(32));
        let exponent = _mm512_set1_epi16(exponent);
        let magnitude = _mm512_set1_epi16(0x7fff);
        // 0x78 is `a ^ (b & c)` in the truth-table encoding (a = 0xf0, b = 0xcc, c = 0xaa);
        // the key map is its own inverse.
        let key = |v: __m512i| _mm512_ternarylogic_epi32::<0x78>(v, _mm512_srai_epi16::<15>(v), magnitude);
        let mut lo = _mm512_set1_epi16(i16::MAX);
        let mut hi = _mm512_set1_epi16(i16::MIN);
        let mut not_finite: __mmask32 = 0;
        for block in xs.chunks_exact(32) {
            // SAFETY: `block` holds 32 two-byte values (64 bytes); the load is unaligned.
            let v = unsafe { _mm512_loadu_si512(block.as_ptr().cast()) };
            let k = key(v);
            lo = _mm512_min_epi16(lo, k);
            hi = _mm512_max_epi16(hi, k);
            // All exponent bits set means ±inf or NaN.
            not_finite |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(v, exponent), exponent);
        }
        let (lo_a, lo_b) = (_mm512_castsi512_si256(lo), _mm512_extracti64x4_epi64::<1>(lo));
        let (hi_a, hi_b) = (_mm512_castsi512_si256(hi), _mm512_extracti64x4_epi64::<1>(hi));
        let values = |k: __m256i| {
            let mut bits = [0u16; 16];
            // SAFETY: `bits` holds 16 two-byte values, each the bit pattern of a `W`, which
            // `load16` reads (and widens exactly) as it reads the tensor.
            unsafe {
                _mm256_storeu_si256(bits.as_mut_ptr().cast(), _mm512_castsi512_si256(key(_mm512_castsi256_si512(k))));
                W::load16(bits.as_ptr().cast())
            }
        };
        (values(_mm256_min_epi16(lo_a, lo_b)), values(_mm256_max_epi16(hi_a, hi_b)), not_finite == 0)
    }

    /// The extremes of each of `count` (at most 16) consecutive groups of `group_len`
    /// elements (a positive multiple of 32) that start `xs`, into `mn[..count]` and `mx[..count]`;
    /// `false` (the extremes then unspecified) when a value is not finite. Each group's
    /// sixteen lane extremes are reduced together with the other groups' (a transposing
    /// tree: 15 minimums for 16 groups instead of 4 per group, and the groups' chains
    /// independent of each other).
    ///
    /// # Safety
    /// The CPU supports AVX-512 F, BW and VL.
    #[inline]
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
    pub unsafe fn group_extremes<W: Lane>(xs: &[W], group_len: usize, count: usize, mn: &mut [f32; 16], mx: &mut [f32; 16]) -> bool {
        assert!(count <= 16 && group_len > 0 && group_len.is_multiple_of(32) && xs.len() >= count * group_len);
        let mut lows = [_mm512_set1_ps(f32::INFINITY); 16];
        let mut highs = [_mm512_set1_ps(f32::NEG_INFINITY); 16];
        let mut finite = true;
        for (g, group) in xs.chunks_exact(group_len).take(count).enumerate() {
            // SAFETY: the caller guarantees AVX-512 F, BW and VL; `group_len` is a multiple of 32.
            let (lo, hi, group_finite) = unsafe { W::lane_extremes_avx512(group) };
            (lows[g], highs[g]) = (lo, hi);
            finite &= group_finite;
        }
        // SAFETY: `mn` and `mx` hold 16 floats each.
        unsafe {
            _mm512_storeu_ps(mn.as_mut_ptr(), reduce_16_vectors(lows, |a, b| _mm512_min_ps(a, b)));
            _mm512_storeu_ps(mx.as_mut_ptr(), reduce_16_vectors(highs, |a, b| _mm512_max_ps(a, b)));
        }
        finite
    }

    /// Lane `g` of the result is `op` over the sixteen lanes of `v[g]`, for an `op`
    /// (minimum or maximum) whose result does not depend on the order it is applied in.
    /// Each round halves the lanes per vector and the vectors: the halves to combine
    /// are brought together by one two-source shuffle each.
    #[inline(always)]
    fn reduce_16_vectors(v: [__m512; 16], op: impl Fn(__m512, __m512) -> __m512) -> __m512 {
        // SAFETY: pure register operations of AVX-512 F, which every caller has enabled.
        unsafe {
            // Pairs (a, b) → lanes 0-7 from a, 8-15 from b: 128-bit blocks 0,1 with 2,3.
            let w: [__m512; 8] = std::array::from_fn(|j| {
                let (a, b) = (v[2 * j], v[2 * j + 1]);
                op(_mm512_shuffle_f32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b))
            });
            // → block q of u[j] holds group 4j + q: blocks 0,2 of each with 1,3.
            let u: [__m512; 4] = std::array::from_fn(|j| {
                let (a, b) = (w[2 * j], w[2 * j + 1]);
                op(_mm512_shuffle_f32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b))
            });
            // Within blocks: elements 0,1 with 2,3 → block q of t[j]: groups 8j + q, 8j + 4 + q.
            let t: [__m512; 2] = std::array::from_fn(|j| {
                let (a, b) = (u[2 * j], u[2 * j + 1]);
                op(_mm512_shuffle_ps::<0b01_00_01_00>(a, b), _mm512_shuffle_ps::<0b11_10_11_10>(a, b))
            });
            // Elements 0,2 with 1,3 → lane 4q + k holds group 4k + q.
            let r = op(_mm512_shuffle_ps::<0b10_00_10_00>(t[0], t[1]), _mm512_shuffle_ps::<0b11_01_11_01>(t[0], t[1]));
            // Lane g ← lane 4 (g mod 4) + g / 4.
            _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), r)
        }
    }

    /// [`avx2::encode`] on 512-bit vectors.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F, BW and VL (and so AVX2 and F16C).
    #[inline]
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
    pub unsafe fn encode<W: Lane>(xs: &[W], p: GroupParams, bits: u32, out: &mut [u8]) {
        // SAFETY: the caller guarantees AVX-512 F, BW and VL.
        unsafe { encode_bits::<W, false>(xs, p, bits, out, None, &mut StatsAcc::default()) }
    }

    /// [`avx2::encode_with_stats`] on 512-bit vectors.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F, BW and VL (and so AVX2 and F16C).
    #[inline]
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
    pub unsafe fn encode_with_stats<W: Lane>(
        xs: &[W],
        p: GroupParams,
        bits: u32,
        out: &mut [u8],
        tail: Option<&BlockSums>,
        acc: &mut StatsAcc,
    ) {
        debug_assert!(xs.len().is_multiple_of(STAT_BLOCK));
        // SAFETY: the caller guarantees AVX-512 F, BW and VL.
        unsafe { encode_bits::<W, true>(xs, p, bits, out, tail, acc) }
    }

    /// [`Avx2::encode_groups`] on 512-bit vectors.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F, BW and VL; `group_len` is a multiple of 64, `xs` holds
    /// `params.len()` groups, `out` their codes and `accs` (when given) one accumulator
    /// per group.
    #[inline]
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
    pub unsafe fn encode_groups<W: Lane>(
        xs: &[W],
        group_len: usize,
        params: &[GroupParams],
        bits: u32,
        out: &mut [u8],
        accs: Option<&mut [StatsAcc]>,
        ahead: &[W],
    ) {
        // SAFETY: the caller guarantees AVX-512 F, BW and VL and the lengths (every arm).
        unsafe {
            match bits {
                4 => encode_groups_bits::<W, 4>(xs, group_len, params, out, accs, ahead),
                2 => encode_groups_bits::<W, 2>(xs, group_len, params, out, accs, ahead),
                _ => encode_groups_bits::<W, 8>(xs, group_len, params, out, accs, ahead),
            }
        }
    }

    /// [`encode_groups`] for `bits` known at compile time: [`encode_impl`] inlined into
    /// one loop over the groups.
    ///
    /// # Safety
    /// As [`encode_groups`].
    #[inline(always)]
    unsafe fn encode_groups_bits<W: Lane, const BITS: u32>(
        xs: &[W],
        group_len: usize,
        params: &[GroupParams],
        out: &mut [u8],
        accs: Option<&mut [StatsAcc]>,
        ahead: &[W],
    ) {
        let out_len = group_len * BITS as usize / 8;
        let groups = xs.chunks_exact(group_len).zip(params).zip(out.chunks_exact_mut(out_len)).enumerate();
        let share = |k| super::group_share(ahead, group_len, k);
        match accs {
            Some(accs) => {
                for ((k, ((xs, p), out)), acc) in groups.zip(accs) {
                    // SAFETY: the caller guarantees AVX-512 F, BW and VL; `xs` is a whole
                    // number of 64-element steps and `out` holds their codes.
                    unsafe { encode_impl::<W, true, BITS>(xs, *p, out, None, acc, share(k)) };
                }
            }
            None => {
                let mut unused = StatsAcc::default();
                for (k, ((xs, p), out)) in groups {
                    // SAFETY: as above.
                    unsafe { encode_impl::<W, false, BITS>(xs, *p, out, None, &mut unused, share(k)) };
                }
            }
        }
    }

    /// The 256-bit halves of `v`, low first.
    #[inline(always)]
    fn halves(v: __m512) -> (__m256, __m256) {
        // SAFETY: pure register operations of AVX-512 F, which every caller has enabled.
        unsafe { (_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))) }
    }

    /// [`encode_impl`] for `bits` known at compile time: its step sizes and packing are
    /// then constants (a division and a branch per step fewer).
    ///
    /// # Safety
    /// The CPU supports AVX-512 F, BW and VL.
    #[inline(always)]
    unsafe fn encode_bits<W: Lane, const STATS: bool>(
        xs: &[W],
        p: GroupParams,
        bits: u32,
        out: &mut [u8],
        tail: Option<&BlockSums>,
        acc: &mut StatsAcc,
    ) {
        // SAFETY: the caller guarantees AVX-512 F, BW and VL.
        unsafe {
            match bits {
                4 => encode_impl::<W, STATS, 4>(xs, p, out, tail, acc, &[]),
                2 => encode_impl::<W, STATS, 2>(xs, p, out, tail, acc, &[]),
                _ => encode_impl::<W, STATS, 8>(xs, p, out, tail, acc, &[]),
            }
        }
    }

    /// [`encode`], and with `STATS` [`encode_with_stats`]. Whole steps of 64 elements run
    /// here; a remaining 32 (the AVX2 kernel's step) runs in [`avx2::encode`]. Element `i`
    /// of `ahead` (which may be shorter than `xs`, or empty) is requested from memory while
    /// element `i` of `xs` is encoded.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F, BW and VL.
    #[inline]
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
    unsafe fn encode_impl<W: Lane, const STATS: bool, const BITS: u32>(
        xs: &[W],
        p: GroupParams,
        out: &mut [u8],
        tail: Option<&BlockSums>,
        acc: &mut StatsAcc,
        ahead: &[W],
    ) {
        const STEP: usize = 64;
        const { assert!(STEP == STAT_BLOCK) };
        let out_step = STEP * BITS as usize / 8;
        debug_assert!(xs.len().is_multiple_of(32) && out.len() == xs.len() * BITS as usize / 8);
        let inv = _mm512_set1_ps(p.inv);
        // Clamped before rounding, as in the AVX2 kernel.
        let below = _mm512_set1_ps(p.lo - p.zp);
        let above = _mm512_set1_ps(p.hi - p.zp);
        // Codes are negative only for unpacked symmetric storage (int8 bit patterns).
        let signed = p.lo + (p.offset as f32) < 0.0;
        // `packs` work within 128-bit lanes: lane L holds dwords 4L..4L+3 of a, b, c, d.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let scale = _mm512_set1_ps(p.scale);
        // This statistics block's float32 lane sums Σ(x − x')² and Σx² (8 lanes, as in
        // docs/math.md), and max |x − x'| on 16 lanes (a maximum does not depend on order).
        let mut block_sums = [_mm256_setzero_ps(); 2];
        let mut block_max = _mm512_setzero_ps();
        let code = |v: __m512, sums: &mut [__m256; 2], max: &mut __m512| {
            const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            let y = _mm512_mul_ps(v, inv);
            if !STATS {
                // Rounded half to even as it converts; the zero point and both bounds are
                // applied to the packed codes (see `low_code`).
                return _mm512_cvt_roundps_epi32::<NEAREST>(y);
            }
            let c = _mm512_min_ps(_mm512_max_ps(y, below), above);
            let d = _mm512_roundscale_ps::<NEAREST>(c);
            {
                // As `BlockSums::lane`: elements k and k + 8 of the vector are lane k. The
                // square of `y − d` is that of its absolute value, bit for bit.
                let e = _mm512_sub_ps(y, d);
                let (e_lo, e_hi) = halves(_mm512_mul_ps(e, e));
                let (y_lo, y_hi) = halves(_mm512_mul_ps(y, y));
                sums[0] = _mm256_add_ps(_mm256_add_ps(sums[0], e_lo), e_hi);
                sums[1] = _mm256_add_ps(_mm256_add_ps(sums[1], y_lo), y_hi);
                let err = _mm512_abs_ps(_mm512_sub_ps(v, _mm512_mul_ps(d, scale)));
                *max = _mm512_max_ps(err, *max);
            }
            _mm512_cvttps_epi32(d)
        };
        // Without statistics `clamp(rint(y) + zp, lo, hi)` is computed on packed codes:
        // `rint(y)` as int32, saturated to int16 (32 per vector), the zero point and
        // offset added with saturation, saturated to bytes (64 per vector), then clamped to
        // the lowest and highest stored code. Every step after the rounding is monotone
        // and leaves a code in `lo..=hi` as it is, so the clamp gives the reference's byte.
        // It needs `y` below 2^31 (a larger one converts to the most negative integer);
        // `p` comes from a range holding every value of the group, so |y| ≤ 2^bits. With
        // statistics the codes were clamped as floats (the error needs the clamped value),
        // and only the zero point and offset are added here, the same way.
        let shift16 = _mm512_set1_epi16((p.zp as i32 + p.offset) as i16);
        let low_code = _mm512_set1_epi8((p.lo as i32 + p.offset) as i8);
        let high_code = _mm512_set1_epi8((p.hi as i32 + p.offset) as i8);
        // As in the AVX2 kernel: maddubs multipliers that fold neighbouring codes.
        let nibble_pairs = _mm512_set1_epi16(0x1001);
        let crumb_pairs = _mm512_set1_epi16(0x0401);
        let crumb_quads = _mm512_set1_epi32(0x0010_0001);
        // The segment's float64 lane sums (`SegmentLanes`), lanes 0-7.
        let (mut err_lanes, mut sq_lanes) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let mut max_all = _mm512_setzero_ps();
        let mut steps = xs.chunks_exact(STEP);
        let mut outs = out.chunks_exact_mut(out_step);
        let mut ahead = ahead.chunks(STEP);
        for (step, dst) in (&mut steps).zip(&mut outs) {
            if let Some(lines) = ahead.next() {
                avx2::request_lines(lines);
            }
            let ptr = step.as_ptr();
            // SAFETY: `step` holds 64 elements: four 16-element loads.
            let (a, b, c, d) = unsafe {
                (
                    code(W::load16(ptr), &mut block_sums, &mut block_max),
                    code(W::load16(ptr.add(16)), &mut block_sums, &mut block_max),
                    code(W::load16(ptr.add(32)), &mut block_sums, &mut block_max),
                    code(W::load16(ptr.add(48)), &mut block_sums, &mut block_max),
                )
            };
            let (ab, cd) = (_mm512_packs_epi32(a, b), _mm512_packs_epi32(c, d));
            let (ab, cd) = (_mm512_adds_epi16(ab, shift16), _mm512_adds_epi16(cd, shift16));
            let bytes = if signed { _mm512_packs_epi16(ab, cd) } else { _mm512_packus_epi16(ab, cd) };
            let bytes = _mm512_permutexvar_epi32(order, bytes);
            let bytes = match (STATS, signed) {
                (true, _) => bytes,
                (false, true) => _mm512_min_epi8(_mm512_max_epi8(bytes, low_code), high_code),
                (false, false) => _mm512_min_epu8(_mm512_max_epu8(bytes, low_code), high_code),
            };
            match BITS {
                4 => {
                    let words = _mm512_maddubs_epi16(bytes, nibble_pairs);
                    // SAFETY: `dst` holds 32 bytes.
                    unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), _mm512_cvtepi16_epi8(words)) };
                }
                2 => {
                    let quads = _mm512_madd_epi16(_mm512_maddubs_epi16(bytes, crumb_pairs), crumb_quads);
                    // SAFETY: `dst` holds 16 bytes.
                    unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(quads)) };
                }
                _ => {
                    // SAFETY: `dst` holds 64 bytes.
                    unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), bytes) };
                }
            }
            if STATS {
                // A step is a statistics block: it ends here, as in the AVX2 kernel.
                let [sq_err, sq] = block_sums;
                err_lanes = _mm512_add_pd(err_lanes, _mm512_cvtps_pd(sq_err));
                sq_lanes = _mm512_add_pd(sq_lanes, _mm512_cvtps_pd(sq));
                max_all = _mm512_max_ps(block_max, max_all);
                block_sums = [_mm256_setzero_ps(); 2];
                block_max = _mm512_setzero_ps();
            }
        }
        if STATS {
            if let Some(tail) = tail {
                let [sq_err, sq, max] = avx2::block_lanes(tail);
                err_lanes = _mm512_add_pd(err_lanes, _mm512_cvtps_pd(sq_err));
                sq_lanes = _mm512_add_pd(sq_lanes, _mm512_cvtps_pd(sq));
                max_all = _mm512_max_ps(_mm512_zextps256_ps512(max), max_all);
            }
            // `fold_lanes` of both sums at once, in registers: lanes k + (k + 4) for
            // k < 4, then the pairs (0, 2) and (1, 3), then the two halves.
            let lows = _mm512_shuffle_f64x2::<0b01_00_01_00>(err_lanes, sq_lanes);
            let highs = _mm512_shuffle_f64x2::<0b11_10_11_10>(err_lanes, sq_lanes);
            let quads = _mm512_add_pd(lows, highs); // err s0..s3, sq s0..s3
            let evens = _mm512_castpd512_pd256(_mm512_shuffle_f64x2::<0b00_00_10_00>(quads, quads));
            let odds = _mm512_castpd512_pd256(_mm512_shuffle_f64x2::<0b00_00_11_01>(quads, quads));
            let pairs = _mm256_add_pd(evens, odds); // err s0+s2, s1+s3, sq s0+s2, s1+s3
            let totals = _mm256_add_pd(pairs, _mm256_permute_pd::<0b0101>(pairs));
            acc.add_segment(
                _mm256_cvtsd_f64(totals),
                _mm_cvtsd_f64(_mm256_extractf128_pd::<1>(totals)),
                _mm512_reduce_max_ps(max_all),
                p.scale,
            );
        } else if !steps.remainder().is_empty() {
            // SAFETY: the caller guarantees AVX-512, hence AVX2; the remainder is 32 elements.
            unsafe { avx2::encode(steps.remainder(), p, BITS, outs.into_remainder()) };
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use half::{bf16, f16};

    use super::{batch_after_next, group_share, Avx2, Lane, PREFETCH_BATCH_BYTES};

    /// A batch asks for the batch after the next one (as much of it as there is), group by
    /// group, and a batch larger than [`PREFETCH_BATCH_BYTES`] asks for nothing.
    #[test]
    fn a_batch_asks_for_the_batch_after_the_next() {
        let next: Vec<u32> = (0..10).collect();
        assert_eq!(batch_after_next(&[0u32; 4], &next), &[4, 5, 6, 7]);
        assert_eq!(batch_after_next(&[0u32; 4], &next[..6]), &[4, 5]);
        assert!(batch_after_next(&[0u32; 4], &next[..3]).is_empty());
        assert!(batch_after_next(&vec![0u32; PREFETCH_BATCH_BYTES / 4 + 1], &vec![0; PREFETCH_BATCH_BYTES]).is_empty());
        let ahead = [4u32, 5, 6, 7, 8];
        assert_eq!((group_share(&ahead, 2, 0), group_share(&ahead, 2, 2), group_share(&ahead, 2, 3)), (&[4, 5][..], &[8][..], &[][..]));
        if let Some(cpu) = Avx2::detect() {
            assert_eq!(cpu.batch_groups(1024, 16), PREFETCH_BATCH_BYTES / 1024);
            assert_eq!((cpu.batch_groups(64, 16), cpu.batch_groups(1 << 16, 16)), (16, 2));
        }
        if let Some(cpu) = Avx2::detect_wide() {
            assert_eq!(cpu.batch_groups(1024, 16), 16);
        }
    }

    /// Each group's extremes, found together, are those a scan of the group finds, for
    /// every batch size and element type: a wrong shuffle in the reduction tree would put
    /// one group's range on another.
    fn check_group_extremes<W: Lane>(from_f32: fn(f32) -> W) {
        let group_len = 64;
        // Distinct ranges per group, extremes at varying positions, negative zeros too.
        let values: Vec<W> = (0..16 * group_len)
            .map(|i| {
                let (g, k) = (i / group_len, i % group_len);
                let v = ((i * 7919) % 1009) as f32 / 100.0 - 5.0 + g as f32 * 3.0;
                from_f32(if k == (g * 5) % group_len { -0.0 } else { v })
            })
            .collect();
        let cpus = [Avx2::detect(), Avx2::detect_wide()];
        if cpus[1].is_none() {
            eprintln!("no AVX-512 F/BW/VL here: only the AVX2 group_extremes checked");
        }
        for (cpu, count) in cpus.into_iter().flatten().flat_map(|cpu| (1..=16).map(move |count| (cpu, count))) {
            let (mut mn, mut mx) = ([f32::NAN; 16], [f32::NAN; 16]);
            assert_eq!(cpu.group_extremes(&values, group_len, count, &mut mn, &mut mx), Some(true));
            for (g, group) in values.chunks_exact(group_len).take(count).enumerate() {
                let widened: Vec<f32> = group.iter().map(|x| x.to_f32()).collect();
                assert_eq!(mn[g], widened.iter().copied().fold(f32::INFINITY, f32::min), "min of group {g} of {count}");
                assert_eq!(mx[g], widened.iter().copied().fold(f32::NEG_INFINITY, f32::max), "max of group {g} of {count}");
            }
        }
        let mut with_inf = values.clone();
        with_inf[5 * group_len + 3] = from_f32(f32::INFINITY);
        for cpu in cpus.into_iter().flatten() {
            assert_eq!(cpu.group_extremes(&with_inf, group_len, 16, &mut [0.0; 16], &mut [0.0; 16]), Some(false));
            assert_eq!(cpu.group_extremes(&with_inf, group_len, 5, &mut [0.0; 16], &mut [0.0; 16]), Some(true));
        }
    }

    /// `min_max` of every short length (no vector, part of one, a vector and a rest) on
    /// both vector widths equals a scan's: a vector loop that never ran must not leave
    /// its initial lanes in the result.
    fn check_min_max<W: Lane>(from_f32: fn(f32) -> W) {
        let values: Vec<W> = (0..100).map(|i| from_f32(((i * 37) % 23) as f32 - 11.5)).collect();
        for cpu in [Avx2::detect(), Avx2::detect_wide()].into_iter().flatten() {
            for n in 1..values.len() {
                let widened: Vec<f32> = values[..n].iter().map(|x| x.to_f32()).collect();
                let expected =
                    (widened.iter().copied().fold(f32::INFINITY, f32::min), widened.iter().copied().fold(f32::NEG_INFINITY, f32::max), true);
                assert_eq!(cpu.min_max(&values[..n]), expected, "{n} values");
            }
        }
    }

    #[test]
    fn short_runs_have_the_extremes_of_a_scan() {
        check_min_max::<f32>(|v| v);
        check_min_max::<f64>(f64::from);
        check_min_max::<f16>(f16::from_f32);
        check_min_max::<bf16>(bf16::from_f32);
    }

    #[test]
    fn groups_found_together_have_their_own_extremes() {
        check_group_extremes::<f32>(|v| v);
        check_group_extremes::<f64>(f64::from);
        check_group_extremes::<f16>(f16::from_f32);
        check_group_extremes::<bf16>(bf16::from_f32);
    }
}
