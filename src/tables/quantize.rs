//! Quantizing the rows of a §5 table straight into the output table's concatenated
//! buffers (pure Rust; the bridge borrows the rows, the file job reads them from a map).

use arrow_buffer::Buffer;
use rayon::prelude::*;

use crate::error::Error;
use crate::quant::alloc::zeroed;
use crate::quant::{output_sizes, quantize_into, split_at_cuts, OutBuffers, QuantSpec, Stats, TensorView};
use crate::tables::{scale_buffer, TableParts};

/// `(layer name, what went wrong)` for every layer that failed.
pub type Failures = Vec<(String, Error)>;

/// Why a table could not be quantized.
#[derive(Debug)]
pub enum TableFailure {
    /// The table as a whole (too many scales for Arrow's offsets, no memory for the result).
    Table(Error),
    /// These rows failed; every one of them is listed.
    Rows(Failures),
}

/// What to do with rows that fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedRows {
    /// The table fails, listing every failed row.
    Fail,
    /// The table holds the rows that quantized; the failed ones are returned beside it
    /// (`continue_on_error=True`).
    Skip,
}

/// Quantized rows: the table's parts, each kept row's statistics, and the rows skipped.
pub struct QuantizedRows {
    /// The output table's buffers.
    pub parts: TableParts,
    /// Per kept row, when the spec asks for statistics.
    pub stats: Vec<Option<Stats>>,
    /// Rows that failed (only with [`FailedRows::Skip`]).
    pub skipped: Failures,
}

/// Quantize borrowed rows straight into the table's concatenated buffers, in parallel
/// (call detached). Returns the parts, or every failing layer with what went wrong.
pub fn quantize_rows(layers: &[(String, TensorView<'_>)], spec: &QuantSpec, failed: FailedRows) -> Result<QuantizedRows, TableFailure> {
    // Where each row starts in the three value buffers (one entry per row, plus the end).
    let (mut code_ends, mut scale_ends, mut zp_ends) = (vec![0usize], vec![0usize], vec![0usize]);
    for (_, view) in layers {
        let (c, s, z) = output_sizes(view.shape(), spec);
        code_ends.push(code_ends.last().unwrap() + c);
        scale_ends.push(scale_ends.last().unwrap() + s);
        zp_ends.push(zp_ends.last().unwrap() + z);
    }
    let whole_table = TableFailure::Table;
    let (Ok(scale_offsets), Ok(zp_offsets)) = (int32_offsets(&scale_ends), int32_offsets(&zp_ends)) else {
        return Err(whole_table(Error::validation(
            format!("{} scales in one table", scale_ends.last().unwrap()),
            "at most 2^31 - 1 scales per table (Arrow list offsets are int32)",
            "split the table into smaller record batches",
        )));
    };
    let mut codes = zeroed::<u8>(*code_ends.last().unwrap()).map_err(whole_table)?;
    let mut scales = zeroed::<f32>(*scale_ends.last().unwrap()).map_err(whole_table)?;
    let mut zps = zeroed::<u8>(*zp_ends.last().unwrap()).map_err(whole_table)?;
    // The cuts between rows (none for zero or one row).
    let inner = |ends: &[usize]| ends[1..].split_last().map_or(Vec::new(), |(_, cuts)| cuts.to_vec());
    let outcomes: Vec<_> = layers
        .par_iter()
        .zip(split_at_cuts(&mut codes, &inner(&code_ends)))
        .zip(split_at_cuts(&mut scales, &inner(&scale_ends)))
        .zip(split_at_cuts(&mut zps, &inner(&zp_ends)))
        .map(|((((_, view), c), s), z)| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                quantize_into(view, spec, OutBuffers { codes: c, scales: s, zero_points: z })
            }))
            .unwrap_or_else(|_| Err(Error::Internal("a Rust panic was contained".into())))
        })
        .collect();
    let mut stats = Vec::with_capacity(layers.len());
    let mut failures = Vec::new();
    let mut kept = Vec::with_capacity(layers.len());
    for ((name, _), outcome) in layers.iter().zip(outcomes) {
        kept.push(outcome.is_ok());
        match outcome {
            Ok(s) => stats.push(s),
            Err(e) => failures.push((name.clone(), e)),
        }
    }
    if !failures.is_empty() && failed == FailedRows::Fail {
        return Err(TableFailure::Rows(failures));
    }
    let (mut scale_offsets, mut zp_offsets) = (scale_offsets, zp_offsets);
    if !failures.is_empty() {
        // Close the failed rows' gaps: the kept rows move down, in order (only on failure).
        code_ends = compact(&mut codes, &code_ends, &kept);
        scale_offsets = int32_offsets(&compact(&mut scales, &scale_ends, &kept)).expect("fewer than before");
        zp_offsets = int32_offsets(&compact(&mut zps, &zp_ends, &kept)).expect("fewer than before");
    }
    let kept_layers = || layers.iter().zip(&kept).filter(|(_, &k)| k).map(|(l, _)| l);
    let parts = TableParts {
        names: kept_layers().map(|(n, _)| n.clone()).collect(),
        codes: Buffer::from_vec(codes),
        code_offsets: code_ends.iter().map(|&o| o as i64).collect(),
        scales: scale_buffer(scales, spec.scale_dtype),
        scale_offsets,
        zero_points: Buffer::from_vec(zps),
        zp_offsets,
        shapes: kept_layers().map(|(_, v)| v.shape().to_vec()).collect(),
        spec: *spec,
        passthrough: false,
    };
    Ok(QuantizedRows { parts, stats, skipped: failures })
}

/// Move the kept rows of `values` (row `r` spans `ends[r]..ends[r + 1]`) down over the
/// dropped ones, in order; the new ends.
fn compact<T: Copy>(values: &mut Vec<T>, ends: &[usize], kept: &[bool]) -> Vec<usize> {
    let mut new_ends = vec![0];
    let mut write = 0;
    for (r, _) in kept.iter().enumerate().filter(|(_, &k)| k) {
        values.copy_within(ends[r]..ends[r + 1], write);
        write += ends[r + 1] - ends[r];
        new_ends.push(write);
    }
    values.truncate(write);
    new_ends
}

fn int32_offsets(ends: &[usize]) -> Result<Vec<i32>, std::num::TryFromIntError> {
    ends.iter().map(|&e| i32::try_from(e)).collect()
}
