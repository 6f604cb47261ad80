//! Which tensors the job quantizes, and why the others are kept (docs/formats.md (what is
//! quantized)). The caller's patterns decide first; the default rule depends on the
//! output format.

use crate::files::checkpoint::Entry;
use crate::quant::QuantSpec;
use crate::serving::{module_of, ServingFormat};

/// What the caller's `--include` / `--exclude` patterns say about one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Quantize it if it can be (matched by `--include`, not by `--exclude`).
    Include,
    /// Keep it, for this reason ("matched by --exclude", …).
    Keep(String),
    /// No pattern decided: the default rule does.
    Default,
}

/// Module-name components of embeddings (inputs are looked up, not multiplied: engines
/// keep them in float) across transformers' architectures.
const EMBEDDINGS: [&str; 9] = [
    "embed_tokens",
    "word_embeddings",
    "position_embeddings",
    "token_type_embeddings",
    "wte",
    "wpe",
    "embed_positions",
    "tok_embeddings",
    "embed_in",
];

/// Module-name components of output heads, which llm-compressor ignores by default.
const OUTPUT_HEADS: [&str; 2] = ["lm_head", "embed_out"];

/// `Ok(())` to quantize `e`, or the reason it passes through unchanged.
pub fn decide(e: &Entry, format: Option<ServingFormat>, spec: &QuantSpec, choice: &Choice) -> Result<(), String> {
    if let Some(stored) = &e.stored_as {
        return Err(format!("already quantized ({stored})"));
    }
    if e.float_dtype().is_none() {
        return Err(format!("not a float tensor ({:?})", e.dtype));
    }
    if e.shape.is_empty() || e.numel() == 0 {
        return Err("empty or 0-d".into());
    }
    match choice {
        Choice::Keep(reason) => return Err(reason.clone()),
        Choice::Include => {}
        Choice::Default => default_rule(e, format)?,
    }
    match format {
        Some(f) => f.unfit(&e.name, &e.shape, spec).map_or(Ok(()), Err),
        None => Ok(()),
    }
}

/// quantbridge's own format: every weight (≥ 2 dimensions); for serving formats, the
/// Linear weights an engine replaces: `*.weight` minus embeddings and output heads.
fn default_rule(e: &Entry, format: Option<ServingFormat>) -> Result<(), String> {
    if e.shape.len() < 2 {
        return Err("1-D (a bias or norm)".into());
    }
    if format.is_none() {
        return Ok(());
    }
    let Some(module) = module_of(&e.name) else {
        return Err("not a *.weight".into());
    };
    if module.split('.').any(|p| OUTPUT_HEADS.contains(&p)) {
        return Err("the output head (kept, as llm-compressor's ignore=[\"lm_head\"])".into());
    }
    if is_embedding(module) {
        return Err("an embedding".into());
    }
    Ok(())
}

/// Whether module `module` is an embedding table (by its name, as every tool decides).
pub fn is_embedding(module: &str) -> bool {
    module.split('.').any(|p| EMBEDDINGS.contains(&p) || p.ends_with("embeddings"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::checkpoint::Entry;

    fn decide_default(name: &str, shape: &[usize], format: Option<ServingFormat>) -> Result<(), String> {
        let e = Entry::listed(name, safetensors::Dtype::F32, shape);
        decide(&e, format, &QuantSpec::default(), &Choice::Default)
    }

    #[test]
    fn serving_formats_quantize_linear_weights_only() {
        let ct = Some(ServingFormat::CompressedTensors);
        assert_eq!(decide_default("model.layers.0.mlp.up_proj.weight", &[256, 128], ct), Ok(()));
        for (name, why) in [
            ("model.embed_tokens.weight", "embedding"),
            ("bert.embeddings.word_embeddings.weight", "embedding"),
            ("transformer.wte.weight", "embedding"),
            ("lm_head.weight", "output head"),
            ("model.layers.0.mlp.up_proj.bias", "1-D"),
            ("model.rotary.inv_freq", "1-D"),
            ("model.layers.0.proj", "*.weight"),
        ] {
            let shape: &[usize] = if why == "1-D" { &[256] } else { &[256, 128] };
            let reason = decide_default(name, shape, ct).unwrap_err();
            assert!(reason.contains(why), "{name}: {reason}");
        }
    }

    #[test]
    fn quantbridge_format_quantizes_every_weight() {
        assert_eq!(decide_default("w", &[4, 4], None), Ok(()));
        assert_eq!(decide_default("model.embed_tokens.weight", &[4, 4], None), Ok(()));
        assert!(decide_default("b", &[4], None).is_err());
    }

    #[test]
    fn patterns_decide_before_the_default_and_formats_after() {
        let e = Entry::listed("lm_head.weight", safetensors::Dtype::F32, &[8, 128]);
        let spec = QuantSpec::default();
        assert_eq!(decide(&e, Some(ServingFormat::Mlx), &spec, &Choice::Include), Ok(()));
        let kept = decide(&e, None, &spec, &Choice::Keep("matched by --exclude".into()));
        assert_eq!(kept, Err("matched by --exclude".into()));
        let odd = Entry::listed("a.weight", safetensors::Dtype::F32, &[8, 100]);
        assert!(decide(&odd, Some(ServingFormat::Mlx), &spec, &Choice::Include).unwrap_err().contains("group size"));
        let ints = Entry::listed("a.weight", safetensors::Dtype::I64, &[8, 128]);
        assert!(decide(&ints, None, &spec, &Choice::Include).unwrap_err().contains("not a float"));
    }
}
