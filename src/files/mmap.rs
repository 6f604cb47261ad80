//! Read-only memory maps of input files.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::Result;
use crate::files::io_error;

/// Map `path` read-only.
pub fn map(path: &Path) -> Result<Arc<Mmap>> {
    let file = File::open(path).map_err(|e| io_error(path, "open", &e))?;
    // SAFETY: the map is read-only and private to this process. Like every reader of
    // memory-mapped checkpoints (safetensors, PyTorch, numpy.memmap), quantbridge assumes
    // nobody truncates or rewrites the input while it runs; the job never writes to it
    // (output goes to a separate temporary file).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| io_error(path, "memory-map", &e))?;
    Ok(Arc::new(map))
}

/// The bytes `owner` holds as an Arrow buffer that shares them (no copy): the buffer keeps
/// `owner` alive through its `Arc`. For a file map, and for the Rust-owned results the
/// Python surface exports.
pub fn shared_arrow_buffer<O>(owner: Arc<O>) -> arrow_buffer::Buffer
where
    O: AsRef<[u8]> + std::panic::RefUnwindSafe + Send + Sync + 'static,
{
    let bytes = (*owner).as_ref();
    match std::ptr::NonNull::new(bytes.as_ptr() as *mut u8) {
        // SAFETY: the pointer and length describe bytes `owner` holds, which it never
        // writes after construction (a read-only map, or a finished result) and keeps
        // alive for as long as the Arc passed as the buffer's owner lives; Arrow only
        // reads them.
        Some(ptr) if !bytes.is_empty() => unsafe {
            arrow_buffer::Buffer::from_custom_allocation(ptr, bytes.len(), owner.clone())
        },
        _ => arrow_buffer::Buffer::from_vec(Vec::<u8>::new()),
    }
}

/// Map the pages of `map[start..end]` into this process in one call, before the engine
/// reads them: `MADV_POPULATE_READ` (Linux ≥ 5.14) reads ahead and fills the page tables,
/// so the engine's threads do not take one page fault per 4 KiB (about 500k for a 2 GiB
/// checkpoint). Older kernels get `MADV_WILLNEED` (read-ahead only). Advice only: a
/// failure changes nothing but speed.
pub fn populate_pages(map: &Mmap, start: usize, end: usize) {
    if end <= start {
        return;
    }
    #[cfg(target_os = "linux")]
    if map.advise_range(memmap2::Advice::PopulateRead, start, end - start).is_ok() {
        return;
    }
    let _ = map.advise_range(memmap2::Advice::WillNeed, start, end - start);
}

/// Drop the pages of `map[start..end]` from this process's resident set once they have
/// been read, so RSS stays bounded by the tensor being processed, not the whole file.
/// (They stay in the page cache; touching them again re-reads them from the file.)
pub fn release_pages(map: &Mmap, start: usize, end: usize) {
    const PAGE: usize = 4096;
    let first = start.next_multiple_of(PAGE);
    let last = (end / PAGE) * PAGE;
    if last > first {
        // SAFETY: MADV_DONTNEED on a read-only, file-backed private mapping only discards
        // clean pages, which later reads fault back in from the unchanged file; no Rust
        // reference into these pages is alive when the job calls this (the tensor's view
        // has been dropped), and the range lies inside the map.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first) };
    }
}
