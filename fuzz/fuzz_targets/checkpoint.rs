//! Checkpoint readers on arbitrary files (safetensors and Arrow IPC): they return errors,
//! never panic, every tensor they accept can be viewed and quantized, and the main job
//! on an accepted file either fails cleanly or writes an output that reads back (the job
//! verifies it before the rename; nothing is left behind on failure).
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use quantbridge::files::checkpoint::{Checkpoint, Scratch};
use quantbridge::files::job::quantize_checkpoint;
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
    let out = dir.join(format!("qb-fuzz-{}-out.safetensors", std::process::id()));
    if let Ok(ck) = Checkpoint::open(&path) {
        let small = ck.entries().iter().all(|e| e.numel() < 1 << 20);
        if small {
            let select = |_: &quantbridge::files::checkpoint::Entry| true;
            let mut on_layer = |_: &quantbridge::files::job::LayerReport, _: usize, _: usize| Ok(());
            let written = quantize_checkpoint(&path, &out, &QuantSpec::default(), true, &select, &mut on_layer);
            assert_eq!(written.is_ok(), out.exists(), "an output exists exactly when the job succeeded");
            let _ = std::fs::remove_file(&out);
        }
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
