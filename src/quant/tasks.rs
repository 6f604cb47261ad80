//! Where one call's independent pieces run: on rayon's pool, or in order on the calling
//! thread.

/// Whether `pieces` independent pieces of one call should go to rayon's pool.
///
/// Handing work to the pool wakes a sleeping worker and parks the caller until it is done:
/// tens of microseconds, which a 2-chunk tensor does not win back, and which a pool of one
/// thread (`RAYON_NUM_THREADS=1`, a one-CPU container) pays for nothing, since no second
/// thread runs beside it (a 512 KiB int4 quantize took 74 µs there, 15 µs on the calling
/// thread). Results never depend on this choice: the pieces' bounds are a function of the
/// tensor alone, and their results are merged in piece order either way.
pub(crate) fn on_pool(pieces: usize) -> bool {
    pieces > 1 && rayon::current_num_threads() > 1
}
