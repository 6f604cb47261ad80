//! Checkpoint files (docs/formats.md (files)), pure Rust: safetensors and Arrow IPC in (memory-mapped, each
//! tensor viewed in place as an engine [`TensorView`](crate::quant::TensorView) that
//! borrows the map), safetensors and Arrow IPC out, one tensor at a time.
//!
//! The only `unsafe` here is in [`mmap`]: mapping a file, and lending the map to Arrow.

pub mod checkpoint;
pub mod gguf;
pub mod gguf_job;
pub mod job;
pub mod mmap;
pub mod model_folder;
pub mod output;
pub mod select;
pub mod shards;
pub mod verify;
pub mod write_behind;

use crate::error::Error;

/// An I/O error on `path`, as one line a user can act on.
pub fn io_error(path: &std::path::Path, what: &str, e: &std::io::Error) -> Error {
    Error::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// A corrupt or unsupported file.
pub fn bad_file(path: &std::path::Path, found: impl Into<String>, fix: &str) -> Error {
    Error::validation(
        format!("{}: {}", path.display(), found.into()),
        "a valid .safetensors file (or sharded index) or an Arrow IPC file with columns layer_name, weights[, shape]",
        fix,
    )
}

/// The hidden temporary path an output is written under before its rename to `target`,
/// beside it (so the rename stays on one file system). Refuses an existing `target`
/// without `force` and a missing parent folder.
pub fn temp_beside(target: &std::path::Path, force: bool) -> crate::Result<std::path::PathBuf> {
    if target.exists() && !force {
        return Err(Error::Io(format!("{} already exists; pass --force to overwrite it", target.display())));
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::Io(format!("cannot write {}: no such folder {}", target.display(), dir.display())));
    }
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("output");
    Ok(dir.join(format!(".{name}.partial-{}", std::process::id())))
}
