//! Checkpoint readers on arbitrary files (safetensors and Arrow IPC): they return errors,
//! never panic, and every tensor they accept can be viewed and quantized.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use quantbridge::files::checkpoint::{Checkpoint, Scratch};
use quantbridge::quant::{quantize, QuantSpec};

fuzz_target!(|input: &[u8]| {
    // The readers contain arrow-ipc's panics on hostile batch metadata with catch_unwind
    // (and report a corrupt file); libfuzzer-sys's hook would abort on those contained
    // panics too. A panic that escapes the reader still aborts: fuzz_target! catches it.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
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
