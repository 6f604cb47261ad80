//! What to quantize to: bit width, scheme, granularity, scale storage (docs/math.md).

use crate::error::{Error, Result};

/// How elements are grouped to share one scale (and zero point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// One group for the whole tensor.
    Tensor,
    /// One group per row (the last axis is the row).
    Channel,
    /// Groups of this many consecutive elements of a row; the last group of a row may be shorter.
    Group(usize),
}

/// The dtype scales are stored in. Narrower dtypes round the scale UP (toward +inf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleDType {
    /// IEEE float32 (the default; no rounding).
    F32,
    /// IEEE float16.
    F16,
    /// bfloat16.
    BF16,
}

impl ScaleDType {
    /// The name numpy and torch use.
    pub fn name(self) -> &'static str {
        match self {
            ScaleDType::F32 => "float32",
            ScaleDType::F16 => "float16",
            ScaleDType::BF16 => "bfloat16",
        }
    }

    /// Bytes per stored scale.
    pub fn itemsize(self) -> usize {
        match self {
            ScaleDType::F32 => 4,
            ScaleDType::F16 | ScaleDType::BF16 => 2,
        }
    }

    /// Parse a numpy/torch dtype name.
    pub fn parse(name: &str) -> Result<Self> {
        match name.strip_prefix("torch.").unwrap_or(name) {
            "float32" | "f32" | "float" => Ok(ScaleDType::F32),
            "float16" | "f16" | "half" => Ok(ScaleDType::F16),
            "bfloat16" | "bf16" => Ok(ScaleDType::BF16),
            other => Err(Error::validation(
                format!("scale_dtype={other:?}"),
                "one of \"float32\", \"float16\", \"bfloat16\"",
                "pass scale_dtype=\"float32\" (default), \"float16\" or \"bfloat16\"",
            )),
        }
    }
}

/// A complete quantization request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpec {
    /// Bits per code: 2, 4 or 8.
    pub bits: u8,
    /// Symmetric (no zero point) instead of asymmetric with an integer zero point.
    pub symmetric: bool,
    /// Which elements share a scale.
    pub granularity: Granularity,
    /// How scales are stored.
    pub scale_dtype: ScaleDType,
    /// Pack codes densely (`bits` per code) instead of one byte per code.
    pub pack: bool,
    /// Also compute error statistics.
    pub stats: bool,
}

impl Default for QuantSpec {
    fn default() -> Self {
        QuantSpec {
            bits: 4,
            symmetric: false,
            granularity: Granularity::Group(128),
            scale_dtype: ScaleDType::F32,
            pack: true,
            stats: false,
        }
    }
}

impl QuantSpec {
    /// Check the fields that the type system does not.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.bits, 2 | 4 | 8) {
            return Err(Error::validation(
                format!("bits={}", self.bits),
                "2, 4 or 8",
                "pass bits=8, bits=4 (default) or bits=2",
            ));
        }
        if self.granularity == Granularity::Group(0) {
            return Err(Error::validation(
                "group_size=0",
                "a positive group size, or None for one group per row",
                "pass group_size=128 (default), another positive integer, or group_size=None",
            ));
        }
        Ok(())
    }

    /// Largest stored code value: 2^bits - 1.
    pub fn max_code(&self) -> u8 {
        ((1u16 << self.bits) - 1) as u8
    }
}

impl QuantSpec {
    /// Build a spec from the Python API's loosely typed options (docs/api.md):
    /// `group_size=None` or `granularity="channel"` means one group per row.
    pub fn from_options(
        bits: i64,
        group_size: Option<i64>,
        symmetric: bool,
        granularity: &str,
        scale_dtype: &str,
        pack: bool,
        stats: bool,
    ) -> Result<Self> {
        let bits = u8::try_from(bits).ok().filter(|b| matches!(b, 2 | 4 | 8)).ok_or_else(|| {
            Error::validation(format!("bits={bits}"), "2, 4 or 8", "pass bits=8, bits=4 (default) or bits=2")
        })?;
        let granularity = match (granularity, group_size) {
            ("tensor", _) => Granularity::Tensor,
            ("channel", _) | ("group", None) => Granularity::Channel,
            ("group", Some(g)) if g > 0 => Granularity::Group(g as usize),
            ("group", Some(g)) => {
                return Err(Error::validation(
                    format!("group_size={g}"),
                    "a positive group size, or None for one group per row",
                    "pass group_size=128 (default), another positive integer, or group_size=None",
                ))
            }
            (other, _) => {
                return Err(Error::validation(
                    format!("granularity={other:?}"),
                    "\"group\", \"channel\" or \"tensor\"",
                    "pass granularity=\"group\" (default, with group_size), \"channel\" or \"tensor\"",
                ))
            }
        };
        let spec = QuantSpec {
            bits,
            symmetric,
            granularity,
            scale_dtype: ScaleDType::parse(scale_dtype)?,
            pack,
            stats,
        };
        spec.validate()?;
        Ok(spec)
    }
}
