//! Serving layouts: the tensors inference engines load, built from engine results without
//! another pass over the weights (docs/formats.md (serving formats)).
//!
//! * **compressed-tensors `pack-quantized`** (vLLM, SGLang, transformers): our packed code
//!   bytes, read as little-endian int32 words per row, are its `weight_packed` (it stores
//!   the signed code + 2^(b-1), which is our unsigned code); its zero point is ours, packed
//!   along the row axis.
//! * **MLX affine** (mlx-lm): `w = scale · q + bias` with `bias = −zp · scale`; its uint32
//!   words are our packed bytes.
//!
//! Pure Rust: shared by the folder job ([`crate::files`]) and `QuantizedTensor.to_format`.

mod compressed_tensors;
mod mlx;

use std::borrow::Cow;

use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::quant::{Granularity, QuantSpec};

/// A format an inference engine loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingFormat {
    /// compressed-tensors `pack-quantized`.
    CompressedTensors,
    /// MLX affine quantization.
    Mlx,
}

/// One stored tensor of a quantized weight: `weight_packed`, `scales`, …
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Full tensor name (`<module>.weight_packed`, …).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Bytes of data.
    pub nbytes: usize,
}

/// An engine result for one 2-D weight, as the engine wrote it.
pub struct EngineResult<'a> {
    /// Packed code stream (row-major, `spec.bits` per code).
    pub codes: &'a [u8],
    /// Scales, already rounded to `spec.scale_dtype`, as f32 values.
    pub scales: &'a [f32],
    /// Zero points, one byte each (empty when symmetric).
    pub zero_points: &'a [u8],
}

impl ServingFormat {
    /// Every format, for messages.
    pub const NAMES: &'static str = "quantbridge, compressed-tensors, mlx";

    /// The format called `name` (`None` for quantbridge's own, or an error).
    pub fn parse(name: &str) -> Result<Option<Self>> {
        match name {
            "quantbridge" => Ok(None),
            "compressed-tensors" => Ok(Some(ServingFormat::CompressedTensors)),
            "mlx" => Ok(Some(ServingFormat::Mlx)),
            other => Err(Error::validation(
                format!("format {other:?}"),
                format!("one of {}", Self::NAMES),
                "pick compressed-tensors (vLLM, SGLang, transformers), mlx (mlx-lm) or quantbridge",
            )),
        }
    }

    /// The name users pass.
    pub fn name(self) -> &'static str {
        match self {
            ServingFormat::CompressedTensors => "compressed-tensors",
            ServingFormat::Mlx => "mlx",
        }
    }

    /// Refuse, before any work, a spec the format cannot express.
    pub fn check_spec(self, spec: &QuantSpec) -> Result<()> {
        spec.validate()?;
        if !spec.pack {
            return Err(Error::Internal("serving formats store packed codes".into()));
        }
        match self {
            ServingFormat::CompressedTensors => compressed_tensors::check_spec(spec),
            ServingFormat::Mlx => mlx::check_spec(spec),
        }
    }

    /// Why a tensor of `shape` named `name` cannot be stored quantized in this format, or
    /// `None` when it can. Such tensors pass through in their dtype, as mlx-lm and
    /// llm-compressor skip them.
    pub fn unfit(self, name: &str, shape: &[usize], spec: &QuantSpec) -> Option<String> {
        if module_of(name).is_none() {
            return Some(format!("{} stores quantized Linear weights (*.weight) only", self.name()));
        }
        self.unfit_shape(shape, spec)
    }

    /// Why a weight of `shape` cannot be stored quantized in this format, if so.
    pub fn unfit_shape(self, shape: &[usize], spec: &QuantSpec) -> Option<String> {
        if shape.len() != 2 {
            return Some(format!("{} dimensions; {} quantizes 2-D Linear weights", shape.len(), self.name()));
        }
        if let Granularity::Group(g) = spec.granularity {
            if !shape[1].is_multiple_of(g) {
                return Some(format!("{} columns, not a multiple of the group size {g}", shape[1]));
            }
        }
        None
    }

    /// The tensors stored for the quantized weight `name` of `shape` (checked by [`Self::unfit`]).
    pub fn parts(self, name: &str, shape: &[usize], spec: &QuantSpec) -> Vec<Part> {
        self.module_parts(module_of(name).expect("checked by unfit"), shape, spec)
    }

    /// [`Self::parts`] for the weight of module `module` (`""`: bare names such as
    /// `weight_packed`).
    pub fn module_parts(self, module: &str, shape: &[usize], spec: &QuantSpec) -> Vec<Part> {
        let (rows, cols) = (shape[0], shape[1]);
        match self {
            ServingFormat::CompressedTensors => compressed_tensors::parts(module, rows, cols, spec),
            ServingFormat::Mlx => mlx::parts(module, rows, cols, spec),
        }
    }

    /// The bytes of each of [`Self::parts`], in order: borrowed where the engine's bytes
    /// are already the format's.
    pub fn encode<'a>(self, shape: &[usize], spec: &QuantSpec, result: &EngineResult<'a>) -> Vec<Cow<'a, [u8]>> {
        let (rows, cols) = (shape[0], shape[1]);
        match self {
            ServingFormat::CompressedTensors => compressed_tensors::encode(rows, cols, spec, result),
            ServingFormat::Mlx => mlx::encode(spec, result),
        }
    }
}

/// `module.suffix`, or `suffix` alone for the empty module.
fn part_name(module: &str, suffix: &str) -> String {
    if module.is_empty() {
        suffix.to_owned()
    } else {
        format!("{module}.{suffix}")
    }
}

/// `m` for a tensor named `m.weight`.
pub fn module_of(name: &str) -> Option<&str> {
    name.strip_suffix(".weight").filter(|m| !m.is_empty())
}

/// The group size a format's config records (`None` per-channel / per-tensor).
pub fn group_size(spec: &QuantSpec) -> Option<usize> {
    match spec.granularity {
        Granularity::Group(g) => Some(g),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_module_weights_of_two_dims_whose_columns_fill_groups_fit() {
        let spec = QuantSpec::default();
        let f = ServingFormat::Mlx;
        assert_eq!(f.unfit("a.weight", &[4, 256], &spec), None);
        assert!(f.unfit("a.bias", &[4, 256], &spec).unwrap().contains("*.weight"));
        assert!(f.unfit(".weight", &[4, 256], &spec).is_some());
        assert!(f.unfit("a.weight", &[2, 4, 256], &spec).unwrap().contains("3 dimensions"));
        assert!(f.unfit("a.weight", &[4, 200], &spec).unwrap().contains("group size 128"));
    }

    #[test]
    fn format_names_round_trip() {
        for f in [ServingFormat::CompressedTensors, ServingFormat::Mlx] {
            assert_eq!(ServingFormat::parse(f.name()).unwrap(), Some(f));
        }
        assert_eq!(ServingFormat::parse("quantbridge").unwrap(), None);
        assert!(ServingFormat::parse("gguf").unwrap_err().to_string().contains("compressed-tensors"));
    }
}
