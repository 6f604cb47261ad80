//! What to quantize to: bit width, scheme, granularity, scale storage (SPEC §2).

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
pub enum ScaleDtype {
    /// IEEE float32 (the default; no rounding).
    F32,
    /// IEEE float16.
    F16,
    /// bfloat16.
    BF16,
}

impl ScaleDtype {
    /// The name numpy and torch use.
    pub fn name(self) -> &'static str {
        match self {
            ScaleDtype::F32 => "float32",
            ScaleDtype::F16 => "float16",
            ScaleDtype::BF16 => "bfloat16",
        }
    }

    /// Parse a numpy/torch dtype name.
    pub fn parse(name: &str) -> Result<Self> {
        match name.strip_prefix("torch.").unwrap_or(name) {
            "float32" | "f32" | "float" => Ok(ScaleDtype::F32),
            "float16" | "f16" | "half" => Ok(ScaleDtype::F16),
            "bfloat16" | "bf16" => Ok(ScaleDtype::BF16),
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
    pub scale_dtype: ScaleDtype,
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
            scale_dtype: ScaleDtype::F32,
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
