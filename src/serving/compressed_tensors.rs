//! compressed-tensors `pack-quantized`, per quantized Linear `m`:
//! `m.weight_packed` int32 `(rows, ceil(cols·b/32))`, `m.weight_scale` `(rows, groups)`,
//! `m.weight_zero_point` int32 `(ceil(rows·b/32), groups)` (asymmetric), `m.weight_shape`
//! int64 `[rows, cols]` (compressed_tensors/compressors/pack_quantized).

use std::borrow::Cow;

use safetensors::Dtype;

use super::{EngineResult, Part};
use crate::error::{Error, Result};
use crate::files::output::{scale_bytes, scale_dtype_of};
use crate::quant::pack::{get_code, pack};
use crate::quant::{Granularity, Layout, QuantSpec};

pub(super) fn check_spec(spec: &QuantSpec) -> Result<()> {
    if spec.granularity == Granularity::Tensor && !spec.symmetric {
        // compressed-tensors keeps a per-tensor zero point unpacked in int8, and no engine
        // loads it for weights; per-channel is what per-tensor users want anyway.
        return Err(Error::validation(
            "an asymmetric per-tensor spec for compressed-tensors",
            "per-tensor symmetric, or asymmetric per-channel or per-group",
            "pass --symmetric, or --granularity channel",
        ));
    }
    Ok(())
}

fn words(n_codes: usize, bits: u8) -> usize {
    (n_codes * bits as usize).div_ceil(32)
}

pub(super) fn parts(module: &str, rows: usize, cols: usize, spec: &QuantSpec) -> Vec<Part> {
    let layout = Layout::new(rows, cols, spec.granularity);
    let (scales_shape, groups) = (layout.scales_shape(), layout.groups_per_row);
    let part = |suffix: &str, dtype: Dtype, shape: Vec<usize>, itemsize: usize| Part {
        name: super::part_name(module, suffix),
        nbytes: shape.iter().product::<usize>() * itemsize,
        dtype,
        shape,
    };
    let mut parts = vec![
        part("weight_packed", Dtype::I32, vec![rows, words(cols, spec.bits)], 4),
        part("weight_scale", scale_dtype_of(spec.scale_dtype), scales_shape, spec.scale_dtype.itemsize()),
    ];
    if !spec.symmetric {
        parts.push(part("weight_zero_point", Dtype::I32, vec![words(rows, spec.bits), groups], 4));
    }
    parts.push(part("weight_shape", Dtype::I64, vec![2], 8));
    parts
}

pub(super) fn encode<'a>(rows: usize, cols: usize, spec: &QuantSpec, r: &EngineResult<'a>) -> Vec<Cow<'a, [u8]>> {
    let mut out = vec![packed_rows(r.codes, rows, cols, spec.bits), Cow::Owned(scale_bytes(r.scales, spec.scale_dtype))];
    if !spec.symmetric {
        let groups = r.zero_points.len() / rows.max(1);
        out.push(Cow::Owned(zero_points_packed_along_rows(r.zero_points, rows, groups, spec.bits)));
    }
    out.push(Cow::Owned([rows as i64, cols as i64].iter().flat_map(|d| d.to_le_bytes()).collect()));
    out
}

/// Rows of int32 words: our stream itself when each row fills whole words (every model
/// layer: columns are multiples of 32), else each row repacked and zero-padded.
fn packed_rows(codes: &[u8], rows: usize, cols: usize, bits: u8) -> Cow<'_, [u8]> {
    if (cols * bits as usize).is_multiple_of(32) {
        return Cow::Borrowed(codes);
    }
    let row_bytes = words(cols, bits) * 4;
    let mut out = vec![0u8; rows * row_bytes];
    for (row, dst) in out.chunks_exact_mut(row_bytes).enumerate() {
        let row_codes: Vec<u8> = (0..cols).map(|j| get_code(codes, bits, row * cols + j)).collect();
        let packed = pack(&row_codes, bits);
        dst[..packed.len()].copy_from_slice(&packed);
    }
    Cow::Owned(out)
}

/// compressed-tensors packs zero points along dim 0: word `[w, g]` holds the zero points
/// of rows `w·32/b ..` of group `g`, little end first.
fn zero_points_packed_along_rows(zps: &[u8], rows: usize, groups: usize, bits: u8) -> Vec<u8> {
    let n_words = words(rows, bits);
    let mut out = vec![0u8; n_words * groups * 4];
    for g in 0..groups {
        let column: Vec<u8> = (0..rows).map(|r| zps[r * groups + g]).collect();
        let packed = pack(&column, bits);
        for (w, word) in packed.chunks(4).enumerate() {
            let at = (w * groups + g) * 4;
            out[at..at + word.len()].copy_from_slice(word);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(bytes: &[u8], i: usize) -> u32 {
        u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap())
    }

    #[test]
    fn rows_that_fill_words_are_the_stream_itself() {
        let codes = vec![0x21u8; 2 * 16]; // 2 rows × 32 int4 codes
        assert!(matches!(packed_rows(&codes, 2, 32, 4), Cow::Borrowed(_)));
    }

    #[test]
    fn short_rows_are_padded_to_whole_words() {
        // 2 rows of 3 int4 codes: 1, 2, 3 | 4, 5, 6 → one word per row.
        let codes = pack(&[1, 2, 3, 4, 5, 6], 4);
        let rows = packed_rows(&codes, 2, 3, 4);
        assert_eq!(rows.len(), 8);
        assert_eq!(word(&rows, 0), 0x321);
        assert_eq!(word(&rows, 1), 0x654);
    }

    #[test]
    fn zero_points_pack_down_the_rows() {
        // 3 rows × 2 groups at 8 bits: zps[r][g] = 10·r + g.
        let zps = [0u8, 1, 10, 11, 20, 21];
        let packed = zero_points_packed_along_rows(&zps, 3, 2, 8);
        assert_eq!(packed.len(), 8); // one word per group
        assert_eq!(word(&packed, 0), 0x00_14_0a_00); // group 0: rows 0, 10, 20
        assert_eq!(word(&packed, 1), 0x00_15_0b_01); // group 1: rows 1, 11, 21
    }

    #[test]
    fn parts_follow_the_compressor() {
        let spec = QuantSpec { granularity: Granularity::Group(32), ..QuantSpec::default() };
        let names: Vec<(String, Vec<usize>)> = parts("m", 40, 64, &spec).into_iter().map(|p| (p.name, p.shape)).collect();
        assert_eq!(
            names,
            vec![
                ("m.weight_packed".into(), vec![40, 8]),
                ("m.weight_scale".into(), vec![40, 2]),
                ("m.weight_zero_point".into(), vec![5, 2]),
                ("m.weight_shape".into(), vec![2]),
            ]
        );
    }
}
