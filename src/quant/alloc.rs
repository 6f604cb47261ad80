//! Where result buffers come from: an [`Allocator`] the caller passes to the engine
//! ([`crate::quant::Engine`]), never a global reached from `Drop`.
//!
//! [`Fresh`] allocates zeroed vectors and lets them drop. [`BufferPool`] keeps large freed
//! results for the next result of a close size: a fresh multi-MiB allocation comes from
//! `mmap`, so every one of its pages faults and is zeroed by the kernel on first write,
//! which for a 256 MiB tensor costs as much as the quantization itself. Quantizing layer
//! after layer (or a benchmark loop) allocates results of the same few sizes again and
//! again. The Python surface keeps one pool for the results it hands out; the file job
//! keeps its own for the length of a job.
//!
//! Nothing here is `unsafe`: a kept vector is initialized up to its length, and a reused
//! one is truncated or zero-extended within its capacity. Its old contents are stale values
//! of a plain type, which every caller overwrites completely (the engine writes every code,
//! scale and zero point, and dequantize every value).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Results smaller than this come straight from the allocator, whose free lists already
/// serve them without page faults.
pub const MIN_POOLED_BYTES: usize = 1 << 20;

/// Default cap on the bytes a pool keeps for reuse.
pub const DEFAULT_LIMIT_BYTES: usize = 512 << 20;

/// A source of result vectors whose contents the engine then overwrites completely.
pub trait Allocator: Sync {
    /// `n` bytes (codes, zero points).
    fn bytes(&self, n: usize) -> Result<Vec<u8>> {
        zeroed(n)
    }
    /// `n` float32 values (scales, dequantized values).
    fn floats(&self, n: usize) -> Result<Vec<f32>> {
        zeroed(n)
    }
    /// A byte vector the caller no longer needs.
    fn recycle_bytes(&self, v: Vec<u8>) {
        drop(v)
    }
    /// A float vector the caller no longer needs.
    fn recycle_floats(&self, v: Vec<f32>) {
        drop(v)
    }
}

/// Zeroed allocations every time; nothing is kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fresh;

impl Allocator for Fresh {}

/// Keeps large freed vectors (up to a byte limit) and hands each to the next request of a
/// close size.
#[derive(Debug)]
pub struct BufferPool {
    limit: AtomicUsize,
    kept_bytes: AtomicUsize,
    bytes: Mutex<Vec<Vec<u8>>>,
    floats: Mutex<Vec<Vec<f32>>>,
}

impl Default for BufferPool {
    fn default() -> Self {
        BufferPool::new(DEFAULT_LIMIT_BYTES)
    }
}

impl Allocator for BufferPool {
    fn bytes(&self, n: usize) -> Result<Vec<u8>> {
        self.take(&self.bytes, n)
    }
    fn floats(&self, n: usize) -> Result<Vec<f32>> {
        self.take(&self.floats, n)
    }
    fn recycle_bytes(&self, v: Vec<u8>) {
        self.keep(&self.bytes, v)
    }
    fn recycle_floats(&self, v: Vec<f32>) {
        self.keep(&self.floats, v)
    }
}

impl BufferPool {
    /// A pool that keeps at most `limit_bytes` (0 keeps nothing).
    pub const fn new(limit_bytes: usize) -> Self {
        BufferPool {
            limit: AtomicUsize::new(limit_bytes),
            kept_bytes: AtomicUsize::new(0),
            bytes: Mutex::new(Vec::new()),
            floats: Mutex::new(Vec::new()),
        }
    }

    /// The cap on kept bytes now in force.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes kept for reuse right now.
    pub fn kept_bytes(&self) -> usize {
        self.kept_bytes.load(Ordering::Relaxed)
    }

    /// Set the cap on kept bytes (0 disables reuse) and free what is kept now; returns the
    /// previous cap.
    pub fn set_limit(&self, bytes: usize) -> usize {
        let previous = self.limit.swap(bytes, Ordering::Relaxed);
        self.release(&self.bytes);
        self.release(&self.floats);
        previous
    }

    /// A kept vector with room for `n` to `n + n/4` elements (the closest), set to length
    /// `n`, else a zeroed allocation. The slack is small on purpose: a larger buffer would
    /// hold memory the result does not need, and lending one size class's buffers to
    /// another (an int2 result taking an int4 one) leaves the next result of that class
    /// without one.
    fn take<T: Copy + Default>(&self, kept: &Mutex<Vec<Vec<T>>>, n: usize) -> Result<Vec<T>> {
        if n.saturating_mul(std::mem::size_of::<T>()) >= MIN_POOLED_BYTES {
            let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
            let best = (0..kept.len())
                .filter(|&i| (n..=n.saturating_add(n / 4)).contains(&kept[i].capacity()))
                .min_by_key(|&i| kept[i].capacity());
            if let Some(best) = best {
                let mut v = kept.swap_remove(best);
                drop(kept);
                self.kept_bytes.fetch_sub(v.capacity() * std::mem::size_of::<T>(), Ordering::Relaxed);
                // Within the capacity: no reallocation, and any new tail lands on pages
                // already mapped.
                v.resize(n, T::default());
                return Ok(v);
            }
        }
        zeroed(n)
    }

    /// Keep `v` for reuse, unless it is small or keeping it would pass the limit.
    fn keep<T>(&self, kept: &Mutex<Vec<Vec<T>>>, v: Vec<T>) {
        let bytes = v.capacity() * std::mem::size_of::<T>();
        if bytes < MIN_POOLED_BYTES {
            return;
        }
        let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
        if self.kept_bytes.load(Ordering::Relaxed) + bytes > self.limit.load(Ordering::Relaxed) {
            return;
        }
        self.kept_bytes.fetch_add(bytes, Ordering::Relaxed);
        kept.push(v);
    }

    fn release<T>(&self, kept: &Mutex<Vec<Vec<T>>>) {
        let drained: Vec<Vec<T>> = std::mem::take(&mut *kept.lock().unwrap_or_else(|e| e.into_inner()));
        for v in drained {
            self.kept_bytes.fetch_sub(v.capacity() * std::mem::size_of::<T>(), Ordering::Relaxed);
        }
    }
}

/// A zero-filled vector, or a validation error when it cannot be allocated (a producer
/// claiming an absurd size must get an error, not abort the interpreter).
///
/// The fallible reservation is only a probe: the vector itself comes from `vec![]`, whose
/// zeroed allocation maps fresh zero pages lazily instead of writing every byte twice.
pub fn zeroed<T: Copy + Default>(n: usize) -> Result<Vec<T>> {
    let mut probe: Vec<T> = Vec::new();
    probe.try_reserve_exact(n).map_err(|_| {
        Error::validation(
            format!("a result of {n} x {} bytes that cannot be allocated", std::mem::size_of::<T>()),
            "a tensor whose quantized result fits in memory",
            "check the tensor's shape (the producer may describe far more elements than it holds), or quantize it in slices",
        )
    })?;
    drop(probe);
    Ok(vec![T::default(); n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_a_close_size_and_respects_the_limit() {
        let pool = BufferPool::default();
        let n = (3 << 20) + 12345;
        let mut v = pool.bytes(n).unwrap();
        v.fill(7);
        let ptr = v.as_ptr();
        pool.recycle_bytes(v);
        // Too small a request for this buffer: a fresh, zeroed one.
        let small = pool.bytes(n * 3 / 4).unwrap();
        assert!(small.iter().all(|&b| b == 0));
        // A close size reuses it, stale contents and all.
        let again = pool.bytes(n - 100).unwrap();
        assert_eq!((again.as_ptr(), again.len()), (ptr, n - 100));
        assert!(again.iter().all(|&b| b == 7));
        // Given back shorter, it still serves its full size (the tail zero-filled).
        pool.recycle_bytes(again);
        let again = pool.bytes(n).unwrap();
        assert_eq!((again.as_ptr(), again.len()), (ptr, n));
        assert!(again[..n - 100].iter().all(|&b| b == 7) && again[n - 100..].iter().all(|&b| b == 0));
        // Small vectors are never kept.
        pool.recycle_bytes(small);
        pool.recycle_bytes(again);
        pool.set_limit(0);
        assert_eq!(pool.kept_bytes(), 0);
        pool.recycle_bytes(pool.bytes(n).unwrap());
        assert_eq!(pool.kept_bytes(), 0, "a zero limit keeps nothing");
    }

    #[test]
    fn absurd_sizes_are_errors() {
        assert!(BufferPool::default().floats(usize::MAX / 2).is_err());
        assert!(Fresh.floats(usize::MAX / 2).is_err());
    }
}
