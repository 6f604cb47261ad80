//! Reuse of large result buffers.
//!
//! A fresh multi-MiB allocation comes from `mmap`, so every one of its pages faults and is
//! zeroed by the kernel on first write: for a 256 MiB tensor that costs as much as the
//! quantization itself. Quantizing layer after layer (or a benchmark loop) allocates
//! results of the same few sizes again and again, so when a large result is dropped its
//! vector is kept here (up to a byte limit) and handed to the next result that fits.
//!
//! Nothing here is `unsafe`: a kept vector is initialized up to its length, and a reused
//! one is truncated or zero-extended within its capacity. Its old contents are stale values
//! of a plain type, which every caller overwrites completely (the engine writes every code, scale and zero point,
//! and dequantize every value).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Results smaller than this come straight from the allocator, whose free lists already
/// serve them without page faults.
pub const MIN_POOLED_BYTES: usize = 1 << 20;

/// Default cap on the bytes kept for reuse.
pub const DEFAULT_LIMIT_BYTES: usize = 512 << 20;

static LIMIT_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_LIMIT_BYTES);

/// Element types whose results are pooled: plain values for which all-zero bytes are zero
/// and any stale value is a valid one.
pub trait Pooled: Copy + Send + 'static {
    /// All-zero bytes.
    const ZERO: Self;
    /// The vectors of this type kept for reuse.
    fn kept() -> &'static Mutex<Vec<Vec<Self>>>;
}

macro_rules! pooled {
    ($t:ty, $zero:expr) => {
        impl Pooled for $t {
            const ZERO: Self = $zero;
            fn kept() -> &'static Mutex<Vec<Vec<Self>>> {
                static KEPT: Mutex<Vec<Vec<$t>>> = Mutex::new(Vec::new());
                &KEPT
            }
        }
    };
}
pooled!(u8, 0);
pooled!(f32, 0.0);

/// The cap on kept bytes now in force.
pub fn limit() -> usize {
    LIMIT_BYTES.load(Ordering::Relaxed)
}

/// Bytes currently kept, over all element types.
static KEPT_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A vector of `n` elements whose contents the caller overwrites: a kept one of a close
/// size when there is one, else a zeroed allocation, or a validation error when `n`
/// elements cannot be allocated (a producer claiming an absurd size must get an error, not
/// abort the interpreter).
pub fn take<T: Pooled>(n: usize) -> Result<Vec<T>> {
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    if bytes >= MIN_POOLED_BYTES {
        if let Some(v) = take_kept(n) {
            return Ok(v);
        }
    }
    zeroed(n)
}

/// A kept vector with room for `n` to `n + n/4` elements (the closest), set to length `n`.
/// The slack is small on purpose: a larger buffer would hold memory the result does not
/// need, and lending one size class's buffers to another (an int2 result taking an int4
/// one) leaves the next result of that class without one.
fn take_kept<T: Pooled>(n: usize) -> Option<Vec<T>> {
    let mut kept = T::kept().lock().unwrap_or_else(|e| e.into_inner());
    let best = (0..kept.len())
        .filter(|&i| (n..=n.saturating_add(n / 4)).contains(&kept[i].capacity()))
        .min_by_key(|&i| kept[i].capacity())?;
    let mut v = kept.swap_remove(best);
    drop(kept);
    KEPT_BYTES.fetch_sub(v.capacity() * std::mem::size_of::<T>(), Ordering::Relaxed);
    // Within the capacity: no reallocation, and any new tail lands on pages already mapped.
    v.resize(n, T::ZERO);
    Some(v)
}

/// Give a result's vector back for reuse (dropping it when it is small, or when keeping
/// it would pass the limit).
pub fn give_back<T: Pooled>(v: Vec<T>) {
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes < MIN_POOLED_BYTES {
        return;
    }
    let mut kept = T::kept().lock().unwrap_or_else(|e| e.into_inner());
    if KEPT_BYTES.load(Ordering::Relaxed) + bytes > LIMIT_BYTES.load(Ordering::Relaxed) {
        return;
    }
    KEPT_BYTES.fetch_add(bytes, Ordering::Relaxed);
    kept.push(v);
}

/// Set the cap on kept bytes (0 disables reuse) and free what is kept now; returns the
/// previous cap.
pub fn set_limit(bytes: usize) -> usize {
    let previous = LIMIT_BYTES.swap(bytes, Ordering::Relaxed);
    release::<u8>();
    release::<f32>();
    previous
}

/// Bytes kept for reuse right now.
pub fn kept_bytes() -> usize {
    KEPT_BYTES.load(Ordering::Relaxed)
}

fn release<T: Pooled>() {
    let drained: Vec<Vec<T>> = std::mem::take(&mut *T::kept().lock().unwrap_or_else(|e| e.into_inner()));
    for v in drained {
        KEPT_BYTES.fetch_sub(v.capacity() * std::mem::size_of::<T>(), Ordering::Relaxed);
    }
}

/// A zero-filled vector, or a validation error when it cannot be allocated.
///
/// The fallible reservation is only a probe: the vector itself comes from `vec![]`, whose
/// zeroed allocation maps fresh zero pages lazily instead of writing every byte twice.
pub fn zeroed<T: Pooled>(n: usize) -> Result<Vec<T>> {
    let mut probe: Vec<T> = Vec::new();
    probe.try_reserve_exact(n).map_err(|_| {
        Error::validation(
            format!("a result of {n} x {} bytes that cannot be allocated", std::mem::size_of::<T>()),
            "a tensor whose quantized result fits in memory",
            "check the tensor's shape (the producer may describe far more elements than it holds), or quantize it in slices",
        )
    })?;
    drop(probe);
    Ok(vec![T::ZERO; n])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool is process-wide; these tests use sizes no other unit test allocates.
    #[test]
    fn reuses_a_close_size_and_respects_the_limit() {
        let n = (3 << 20) + 12345;
        let mut v = take::<u8>(n).unwrap();
        v.fill(7);
        let ptr = v.as_ptr();
        give_back(v);
        // Too small a request for this buffer: a fresh, zeroed one.
        let small = take::<u8>(n * 3 / 4).unwrap();
        assert!(small.iter().all(|&b| b == 0));
        // A close size reuses it, stale contents and all.
        let again = take::<u8>(n - 100).unwrap();
        assert_eq!((again.as_ptr(), again.len()), (ptr, n - 100));
        assert!(again.iter().all(|&b| b == 7));
        // Given back shorter, it still serves its full size (the tail zero-filled).
        give_back(again);
        let again = take::<u8>(n).unwrap();
        assert_eq!((again.as_ptr(), again.len()), (ptr, n));
        assert!(again[..n - 100].iter().all(|&b| b == 7) && again[n - 100..].iter().all(|&b| b == 0));
        // Small vectors are never kept.
        give_back(small);
        give_back(again);
        let previous = set_limit(0);
        assert_eq!(kept_bytes(), 0);
        give_back(take::<u8>(n).unwrap());
        assert_eq!(kept_bytes(), 0, "a zero limit keeps nothing");
        set_limit(previous);
    }

    #[test]
    fn absurd_sizes_are_errors() {
        assert!(take::<f32>(usize::MAX / 2).is_err());
    }
}
