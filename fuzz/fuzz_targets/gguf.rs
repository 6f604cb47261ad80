//! The GGUF reader and the GGUF job on arbitrary files: errors, never panics; every header
//! it accepts describes tensors inside the file; the job either fails cleanly or writes a
//! file that parses back with the tensors it planned (it checks that itself before the
//! rename), and an output exists exactly when it succeeded.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use quantbridge::files::checkpoint::{Checkpoint, Entry, Scratch};
use quantbridge::files::gguf;
use quantbridge::files::gguf_job::{quantize_gguf_file, GgufTarget};
use quantbridge::files::select::Choice;
use quantbridge::quant::gguf::GgufType;
use quantbridge::quant::Engine;

fuzz_target!(|input: &[u8]| {
    if let Ok(header) = gguf::parse(input) {
        for t in &header.tensors {
            let end = header.data_start + t.offset + gguf::tensor_nbytes(t);
            assert!(end <= input.len() as u64, "an accepted tensor lies inside the file");
        }
    }
    let dir = std::env::temp_dir();
    let path = dir.join(format!("qb-fuzz-gguf-{}.gguf", std::process::id()));
    std::fs::File::create(&path).and_then(|mut f| f.write_all(input)).expect("temp file");
    if let Ok(ck) = Checkpoint::open(&path) {
        if ck.entries().iter().all(|e| e.numel() < 1 << 18) {
            let out = dir.join(format!("qb-fuzz-gguf-{}-out.gguf", std::process::id()));
            let select = |_: &Entry| Choice::Default;
            let mut on_layer = |_: &quantbridge::files::job::LayerReport, _: usize, _: usize| Ok(());
            let target = GgufTarget::Type(GgufType::ALL[input.len() % GgufType::ALL.len()]);
            let written = quantize_gguf_file(&path, &out, target, true, &select, &mut on_layer);
            assert_eq!(written.is_ok(), out.exists(), "an output exists exactly when the job succeeded");
            let _ = std::fs::remove_file(&out);
            let mut scratch = Scratch::default();
            for entry in ck.entries() {
                if let (Some(_), Ok((view, _))) = (entry.float_dtype(), ck.view(entry, &mut scratch)) {
                    let _ = Engine::default().quantize_gguf(&view, GgufType::Q4K, false);
                }
            }
        }
    }
    let _ = std::fs::remove_file(&path);
});
