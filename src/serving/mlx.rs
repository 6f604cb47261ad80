//! MLX affine quantization (mlx-lm's layout), per quantized Linear `m`: `m.weight` uint32
//! `(rows, cols·b/32)`, `m.scales` and `m.biases` `(rows, groups)`; `w = scale · q + bias`.

use std::borrow::Cow;

use safetensors::Dtype;

use super::{EngineResult, Part};
use crate::error::{Error, Result};
use crate::files::output::{scale_bytes, scale_dtype_of};
use crate::quant::{Granularity, QuantSpec};

/// Group sizes `mlx.core.quantize` accepts.
pub const GROUP_SIZES: [usize; 3] = [32, 64, 128];

pub(super) fn check_spec(spec: &QuantSpec) -> Result<()> {
    match spec.granularity {
        Granularity::Group(g) if GROUP_SIZES.contains(&g) => Ok(()),
        other => Err(Error::validation(
            format!(
                "{} for MLX",
                match other {
                    Granularity::Group(g) => format!("group size {g}"),
                    Granularity::Channel => "per-channel scales".into(),
                    Granularity::Tensor => "a per-tensor scale".into(),
                }
            ),
            "groups of 32, 64 or 128 (MLX's affine quantization has no other)",
            "pass --group-size 64 (mlx-lm's default) or 32 or 128",
        )),
    }
}

pub(super) fn parts(module: &str, rows: usize, cols: usize, spec: &QuantSpec) -> Vec<Part> {
    let groups = cols / super::group_size(spec).expect("checked by check_spec");
    let scale = |suffix: &str| Part {
        name: super::part_name(module, suffix),
        dtype: scale_dtype_of(spec.scale_dtype),
        shape: vec![rows, groups],
        nbytes: rows * groups * spec.scale_dtype.itemsize(),
    };
    let words = cols * spec.bits as usize / 32;
    vec![
        Part { name: super::part_name(module, "weight"), dtype: Dtype::U32, shape: vec![rows, words], nbytes: rows * words * 4 },
        scale("scales"),
        scale("biases"),
    ]
}

pub(super) fn encode<'a>(spec: &QuantSpec, r: &EngineResult<'a>) -> Vec<Cow<'a, [u8]>> {
    vec![Cow::Borrowed(r.codes), Cow::Owned(scale_bytes(r.scales, spec.scale_dtype)), Cow::Owned(biases(spec, r))]
}

/// `−zp · scale` per group, rounded to the scale dtype. Symmetric codes are offset-binary,
/// so their zero point is 2^(b−1) (and the product is exact).
fn biases(spec: &QuantSpec, r: &EngineResult<'_>) -> Vec<u8> {
    let offset = (1u32 << (spec.bits - 1)) as f32;
    let values: Vec<f32> = if spec.symmetric {
        r.scales.iter().map(|&s| -offset * s).collect()
    } else {
        r.scales.iter().zip(r.zero_points).map(|(&s, &z)| -(z as f32) * s).collect()
    };
    // Rounded to nearest in the scale dtype: MLX stores biases as it stores scales.
    scale_bytes(&values, spec.scale_dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mlx_group_sizes_are_accepted() {
        for g in GROUP_SIZES {
            check_spec(&QuantSpec { granularity: Granularity::Group(g), ..QuantSpec::default() }).unwrap();
        }
        for bad in [Granularity::Group(256), Granularity::Group(16), Granularity::Channel, Granularity::Tensor] {
            let e = check_spec(&QuantSpec { granularity: bad, ..QuantSpec::default() }).unwrap_err();
            assert!(e.to_string().contains("32, 64 or 128"), "{e}");
        }
    }

    #[test]
    fn biases_are_minus_zero_point_times_scale() {
        let spec = QuantSpec { granularity: Granularity::Group(32), ..QuantSpec::default() };
        let r = EngineResult { codes: &[], scales: &[0.5, 2.0], zero_points: &[3, 0] };
        let floats = |b: Vec<u8>| -> Vec<f32> { b.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect() };
        let b = floats(biases(&spec, &r));
        assert_eq!(b, vec![-1.5, -0.0]);
        let sym = QuantSpec { symmetric: true, ..spec };
        let b = floats(biases(&sym, &r));
        assert_eq!(b, vec![-4.0, -16.0]);
    }
}
