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

/// The whole map as an Arrow buffer that shares it (no copy): the buffer keeps the map
/// alive through its `Arc`.
pub fn arrow_buffer(map: &Arc<Mmap>) -> arrow_buffer::Buffer {
    match std::ptr::NonNull::new(map.as_ptr() as *mut u8) {
        // SAFETY: the pointer and length describe the mapped bytes, which stay mapped and
        // unmodified (see `map`) for as long as the owner Arc lives; Arrow only reads them.
        Some(ptr) if !map.is_empty() => unsafe {
            arrow_buffer::Buffer::from_custom_allocation(ptr, map.len(), map.clone())
        },
        _ => arrow_buffer::Buffer::from_vec(Vec::<u8>::new()),
    }
}
