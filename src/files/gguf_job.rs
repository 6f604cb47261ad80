//! GGUF in, GGUF out, like `llama-quantize` (docs/gguf.md): every key/value copied (with
//! `general.file_type` set), tensor order and names kept, tensors quantized one at a time
//! in bounded memory to the requested type or llama.cpp's mixture, data aligned as the
//! header says, the file read back before it is renamed into place.

use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::files::checkpoint::{Checkpoint, Entry, Scratch};
use crate::files::gguf::{self, KeyValue, TensorType};
use crate::files::io_error;
use crate::files::job::{in_tensor, LayerReport, TempOutput};
use crate::files::select::{decide, Choice};
use crate::quant::gguf::GgufType;
use crate::quant::{BufferPool, Engine, Kernel, QuantSpec};

/// What `--gguf-type` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufTarget {
    /// One block type for every quantized tensor (llama.cpp still gives `output.weight` Q6_K).
    Type(GgufType),
    /// llama.cpp's Q4_K_M mixture (also what `Q4_K` means to llama-quantize).
    Q4KM,
    /// llama.cpp's Q5_K_M mixture (also what `Q5_K` means).
    Q5KM,
}

impl GgufTarget {
    /// Every name `--gguf-type` takes.
    pub const NAMES: &'static str = "Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, Q4_K_M, Q5_K_M";

    /// The target called `name` (case-insensitive). `Q4_K` and `Q5_K` are llama-quantize's
    /// aliases of `Q4_K_M` and `Q5_K_M`.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_uppercase().as_str() {
            "Q4_K_M" | "Q4_K" => Ok(GgufTarget::Q4KM),
            "Q5_K_M" | "Q5_K" => Ok(GgufTarget::Q5KM),
            other => GgufType::parse(other).map(GgufTarget::Type).map_err(|_| {
                Error::validation(format!("--gguf-type {name}"), format!("one of {}", Self::NAMES), "Q4_K_M is llama.cpp's usual 4-bit choice")
            }),
        }
    }

    /// `general.file_type`, llama.cpp's `llama_ftype`.
    pub fn file_type(self) -> u32 {
        match self {
            GgufTarget::Type(GgufType::Q4_0) => 2,
            GgufTarget::Type(GgufType::Q4_1) => 3,
            GgufTarget::Type(GgufType::Q8_0) => 7,
            GgufTarget::Type(GgufType::Q5_0) => 8,
            GgufTarget::Type(GgufType::Q5_1) => 9,
            GgufTarget::Type(GgufType::Q4K) => 14,
            GgufTarget::Type(GgufType::Q5K) => 16,
            GgufTarget::Type(GgufType::Q6K) => 18,
            GgufTarget::Q4KM => 15,
            GgufTarget::Q5KM => 17,
        }
    }

    /// The name of the file type, for messages.
    pub fn name(self) -> &'static str {
        match self {
            GgufTarget::Type(t) => t.name(),
            GgufTarget::Q4KM => "Q4_K_M",
            GgufTarget::Q5KM => "Q5_K_M",
        }
    }

    fn base(self) -> GgufType {
        match self {
            GgufTarget::Type(t) => t,
            GgufTarget::Q4KM => GgufType::Q4K,
            GgufTarget::Q5KM => GgufType::Q5K,
        }
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third
/// one between, get more bits in the _M mixtures.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The layer number of a `blk.N.…` tensor.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The type llama.cpp's rules give tensor `name` (before the row-length fallback).
fn mixture_type(target: GgufTarget, name: &str, n_layers: usize) -> GgufType {
    let base = target.base();
    if name == "output.weight" {
        // llama.cpp: the output projection keeps Q6_K (unless the file is Q8_0).
        return if base == GgufType::Q8_0 { base } else { GgufType::Q6K };
    }
    let more_bits_part = name.ends_with(".attn_v.weight") || name.ends_with(".ffn_down.weight");
    if matches!(target, GgufTarget::Q4KM | GgufTarget::Q5KM) && more_bits_part {
        if let Some(i) = layer_of(name) {
            if use_more_bits(i, n_layers) {
                return GgufType::Q6K;
            }
        }
    }
    base
}

/// llama.cpp's fallback for rows that are not whole 256-value super-blocks.
fn fallback(ty: GgufType, cols: usize) -> Option<GgufType> {
    if cols.is_multiple_of(ty.block_size()) {
        return Some(ty);
    }
    let small = match ty {
        GgufType::Q4K => GgufType::Q5_0,
        GgufType::Q5K => GgufType::Q5_1,
        GgufType::Q6K => GgufType::Q8_0,
        other => other,
    };
    cols.is_multiple_of(small.block_size()).then_some(small)
}

/// The stored type of each tensor: `Ok(type)` to quantize, `Err(reason)` to copy.
fn plan(ck: &Checkpoint, header: &gguf::Header, target: GgufTarget, select: &dyn Fn(&Entry) -> Choice) -> Vec<std::result::Result<GgufType, String>> {
    let n_layers = ck.entries().iter().filter_map(|e| layer_of(&e.name)).max().map_or(0, |m| m + 1);
    ck.entries()
        .iter()
        .zip(&header.tensors)
        .map(|(e, info)| {
            // The shared rules first (not float, empty, the caller's patterns, 1-D), with
            // quantbridge's own default; GGUF's default also wants a `*.weight`.
            let choice = select(e);
            decide(e, None, &QuantSpec::default(), &choice)?;
            if choice == Choice::Default && !e.name.ends_with(".weight") {
                return Err("not a *.weight".into());
            }
            let cols = info.dims[0] as usize;
            let ty = mixture_type(target, &e.name, n_layers);
            fallback(ty, cols).ok_or_else(|| format!("rows of {cols} values: not whole {}-value blocks of any type", ty.block_size()))
        })
        .collect()
}

/// Requantize the GGUF file `input` (F32 / F16 / BF16 tensors) to `target` into `output`.
pub fn quantize_gguf_file(
    input: &Path,
    output: &Path,
    target: GgufTarget,
    force: bool,
    select: &dyn Fn(&Entry) -> Choice,
    on_layer: &mut dyn FnMut(&LayerReport, usize, usize) -> Result<()>,
) -> Result<Vec<LayerReport>> {
    if output.extension().and_then(|e| e.to_str()) != Some("gguf") {
        return Err(Error::validation(
            format!("output {} for --gguf-type", output.display()),
            "an output ending in .gguf",
            "name the output e.g. model-Q4_K_M.gguf",
        ));
    }
    let ck = Checkpoint::open(input)?;
    let Some(header) = ck.gguf.clone() else {
        return Err(Error::validation(
            format!("{}: not a GGUF file", input.display()),
            "a GGUF input for --gguf-type (its metadata describes the model to llama.cpp)",
            "convert the model first with llama.cpp's convert_hf_to_gguf.py (--outtype f16), then quantize that",
        ));
    };
    if let Some(e) = ck.entries().iter().find(|e| e.stored_as.is_some()) {
        return Err(Error::validation(
            format!("{}: tensor {:?} is already quantized ({})", input.display(), e.name, e.stored_as.as_deref().unwrap_or("?")),
            "an F32, F16 or BF16 GGUF (as llama-quantize requires without --allow-requantize)",
            "quantize the original F16 / BF16 GGUF instead",
        ));
    }
    let decisions = plan(&ck, &header, target, select);
    let mut kvs: Vec<KeyValue> = header.kvs.iter().filter(|kv| kv.key != "general.file_type" && kv.key != "general.quantization_version").cloned().collect();
    kvs.push(KeyValue::u32("general.quantization_version", 2));
    kvs.push(KeyValue::u32("general.file_type", target.file_type()));
    let layout: Vec<(String, Vec<u64>, TensorType, u64)> = header
        .tensors
        .iter()
        .zip(&decisions)
        .map(|(t, d)| {
            let ty = match d {
                Ok(q) => TensorType::Block(*q),
                Err(_) => t.ty,
            };
            (t.name.clone(), t.dims.clone(), ty, ty.nbytes(t.numel(), t.dims[0]).unwrap_or(0))
        })
        .collect();
    let (head, offsets, data_len) = gguf::write_header(&kvs, &layout, header.alignment);

    let (temp, file) = TempOutput::create(output, force)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let io = |e: std::io::Error| io_error(output, "write", &e);
    out.write_all(&head).map_err(io)?;
    let total = ck.data_bytes();
    let (mut done, mut written, mut reports) = (0usize, 0u64, Vec::with_capacity(layout.len()));
    let mut scratch = Scratch::default();
    let pool = BufferPool::default();
    let engine = Engine::new(Kernel::best(), &pool);
    for ((e, decision), (&offset, (_, _, _, nbytes))) in ck.entries().iter().zip(&decisions).zip(offsets.iter().zip(&layout)) {
        ck.check_unchanged(e)?;
        out.write_all(&vec![0u8; (offset - written) as usize]).map_err(io)?;
        let report = match decision {
            Ok(ty) => {
                ck.prefetch(e);
                let (view, copied) = ck.view(e, &mut scratch).map_err(|err| in_tensor(&e.name, err))?;
                let q = engine.quantize_gguf(&view, *ty, true).map_err(|err| in_tensor(&e.name, err))?;
                out.write_all(&q.codes).map_err(io)?;
                let report = LayerReport {
                    name: e.name.clone(),
                    dtype: e.dtype,
                    shape: e.shape.clone(),
                    quantized: true,
                    stats: q.stats,
                    input_bytes: e.nbytes,
                    output_bytes: q.codes.len(),
                    bytes_copied: copied,
                    kept_because: None,
                    gguf_type: Some(*ty),
                };
                q.recycle(&pool);
                report
            }
            Err(reason) => {
                out.write_all(ck.raw_bytes(e)).map_err(io)?;
                LayerReport::kept(e, reason.clone())
            }
        };
        written = offset + *nbytes;
        ck.release(e);
        done += e.nbytes;
        on_layer(&report, done, total)?;
        reports.push(report);
    }
    out.write_all(&vec![0u8; (data_len - written) as usize]).map_err(io)?;
    let file = out.into_inner().map_err(|e| io_error(output, "write", e.error()))?;
    file.sync_all().map_err(|e| io_error(output, "write", &e))?;
    drop(file);
    verify(&temp.temp, &layout, &kvs)?;
    temp.commit()?;
    Ok(reports)
}

/// Exit 0 must mean the file loads: parse it back and compare with what was planned.
fn verify(path: &Path, layout: &[(String, Vec<u64>, TensorType, u64)], kvs: &[KeyValue]) -> Result<()> {
    let unreadable = |what: String| Error::Internal(format!("the output written to {} does not read back ({what}); it was removed", path.display()));
    let map = crate::files::mmap::map(path)?;
    let header = gguf::parse(&map).map_err(|e| unreadable(e.to_string()))?;
    if header.kvs.len() != kvs.len() || header.tensors.len() != layout.len() {
        return Err(unreadable("the counts differ".into()));
    }
    for (t, (name, dims, ty, _)) in header.tensors.iter().zip(layout) {
        if &t.name != name || &t.dims != dims || t.ty != *ty {
            return Err(unreadable(format!("tensor {name:?} reads back as {:?} {}", t.dims, t.ty.name())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_m_mixtures_follow_llama_cpp() {
        // 32 layers: more bits for 0..4, 28..32, and every third from 4 (6, 9, …).
        let more: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(more, vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
        let t = GgufTarget::parse("q4_k").unwrap();
        assert_eq!(mixture_type(t, "blk.0.attn_v.weight", 32), GgufType::Q6K);
        assert_eq!(mixture_type(t, "blk.4.ffn_down.weight", 32), GgufType::Q4K);
        assert_eq!(mixture_type(t, "blk.4.attn_q.weight", 32), GgufType::Q4K);
        assert_eq!(mixture_type(t, "output.weight", 32), GgufType::Q6K);
        assert_eq!(mixture_type(GgufTarget::Type(GgufType::Q8_0), "output.weight", 32), GgufType::Q8_0);
        assert_eq!(fallback(GgufType::Q4K, 96), Some(GgufType::Q5_0));
        assert_eq!(fallback(GgufType::Q6K, 100), None);
        assert_eq!(t.file_type(), 15);
    }
}
