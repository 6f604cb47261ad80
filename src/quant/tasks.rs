//! Where one call's independent pieces run: on rayon's pool, or in order on the calling
//! thread.

use rayon::prelude::*;

/// `f` of every piece, in piece order: on rayon's pool, or in order on the calling thread
/// when the pool has one thread or there is one piece.
///
/// Handing work to the pool wakes a sleeping worker and parks the caller until it is done:
/// tens of microseconds, which a pool of one thread (`RAYON_NUM_THREADS=1`, a one-CPU
/// container) pays for nothing, since no second thread runs beside it (a 512 KiB int4
/// quantize took 74 µs there, 15 µs on the calling thread). Results never depend on this
/// choice: the pieces are a function of the tensor alone, and their results come back in
/// piece order either way.
pub(crate) fn map_pieces<P: Send, R: Send>(pieces: Vec<P>, f: impl Fn(P) -> R + Sync + Send) -> Vec<R> {
    if pieces.len() > 1 && rayon::current_num_threads() > 1 {
        pieces.into_par_iter().map(f).collect()
    } else {
        pieces.into_iter().map(f).collect()
    }
}
