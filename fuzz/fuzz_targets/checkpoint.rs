//! Checkpoint readers on arbitrary files (safetensors and Arrow IPC): they return errors,
//! never panic, and every tensor they accept can be viewed and quantized.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use quantbridge::files::checkpoint::{Checkpoint, Scratch};
use quantbridge::quant::{quantize, QuantSpec};

fuzz_target!(|input: &[u8]| {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("qb-fuzz-{}.safetensors", std::process::id()));
    std::fs::File::create(&path).and_then(|mut f| f.write_all(input)).expect("temp file");
    if let Ok(ck) = Checkpoint::open(&path) {
        let mut scratch = Scratch::default();
        for entry in ck.entries() {
            let _ = ck.raw_bytes(entry);
            if entry.float_dtype().is_some() && !entry.shape.is_empty() && entry.numel() < 1 << 20 {
                if let Ok((view, _)) = ck.view(entry, &mut scratch) {
                    let _ = quantize(&view, &QuantSpec::default());
                }
            }
        }
    }
    let _ = std::fs::remove_file(&path);
});
