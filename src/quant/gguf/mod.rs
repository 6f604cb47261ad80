//! GGUF block types (llama.cpp / ggml), a scheme beside the SPEC math (docs/gguf.md).
//!
//! Every block type has its own arithmetic; the quantizers reproduce ggml's reference
//! quantizers byte for byte and the dequantizers gguf-py's values bit for bit. Rows are
//! quantized in parallel, each read in place from any [`TensorView`] (strided, transposed,
//! float16, bfloat16) and widened to float32 as ggml's callers do. Pure Rust.

pub(crate) mod kquants;
mod legacy;

use crate::error::{Error, Result};
use crate::quant::simd::Avx2;
use crate::quant::tasks::map_pieces;
use crate::quant::view::Strided;
use crate::quant::{Allocator, DType, Element, Granularity, Layout, QuantSpec, Quantized, ScaleDType, Scales, StatsAcc, TensorView};

/// A ggml block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufType {
    /// 32 values: f16 scale, 4-bit codes.
    Q4_0,
    /// 32 values: f16 scale and minimum, 4-bit codes.
    Q4_1,
    /// 32 values: f16 scale, 5-bit codes.
    Q5_0,
    /// 32 values: f16 scale and minimum, 5-bit codes.
    Q5_1,
    /// 32 values: f16 scale, int8 codes.
    Q8_0,
    /// 256 values: 8 sub-blocks with 6-bit scales and mins, 4-bit codes.
    Q4K,
    /// 256 values: as Q4_K with 5-bit codes.
    Q5K,
    /// 256 values: 16 sub-blocks with int8 scales, 6-bit codes.
    Q6K,
}

impl GgufType {
    /// Every type, in ggml's numbering order.
    pub const ALL: [GgufType; 8] = [
        GgufType::Q4_0,
        GgufType::Q4_1,
        GgufType::Q5_0,
        GgufType::Q5_1,
        GgufType::Q8_0,
        GgufType::Q4K,
        GgufType::Q5K,
        GgufType::Q6K,
    ];

    /// The name ggml and gguf-py use ("Q4_0", "Q4_K", …).
    pub fn name(self) -> &'static str {
        match self {
            GgufType::Q4_0 => "Q4_0",
            GgufType::Q4_1 => "Q4_1",
            GgufType::Q5_0 => "Q5_0",
            GgufType::Q5_1 => "Q5_1",
            GgufType::Q8_0 => "Q8_0",
            GgufType::Q4K => "Q4_K",
            GgufType::Q5K => "Q5_K",
            GgufType::Q6K => "Q6_K",
        }
    }

    /// The type called `name` (case-insensitive).
    pub fn parse(name: &str) -> Result<Self> {
        let upper = name.to_ascii_uppercase();
        Self::ALL.into_iter().find(|t| t.name() == upper).ok_or_else(|| {
            Error::validation(
                format!("gguf_type {name:?}"),
                "one of Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K",
                "pick one of those (Q4_K is llama.cpp's usual 4-bit choice)",
            )
        })
    }

    /// ggml's `ggml_type` number, as GGUF files store it.
    pub fn ggml_type(self) -> u32 {
        match self {
            GgufType::Q4_0 => 2,
            GgufType::Q4_1 => 3,
            GgufType::Q5_0 => 6,
            GgufType::Q5_1 => 7,
            GgufType::Q8_0 => 8,
            GgufType::Q4K => 12,
            GgufType::Q5K => 13,
            GgufType::Q6K => 14,
        }
    }

    /// The type with `ggml_type` number `n`.
    pub fn from_ggml_type(n: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml_type() == n)
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            GgufType::Q4K | GgufType::Q5K | GgufType::Q6K => kquants::QK_K,
            _ => legacy::QK,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgufType::Q4_0 => 18,
            GgufType::Q4_1 => 20,
            GgufType::Q5_0 => 22,
            GgufType::Q5_1 => 24,
            GgufType::Q8_0 => 34,
            GgufType::Q4K => 144,
            GgufType::Q5K => 176,
            GgufType::Q6K => 210,
        }
    }

    /// Decode whole rows' `bytes` into `values` (as many values as the blocks hold). The
    /// match is per call and each block function is called by name, so it is inlined into
    /// its loop (and into [`Avx2::vectorize`]'s code when called there).
    #[inline(always)]
    fn dequantize_into(self, bytes: &[u8], values: &mut [f32]) {
        macro_rules! each {
            ($f:path) => {
                for (b, v) in bytes.chunks_exact(self.type_size()).zip(values.chunks_exact_mut(self.block_size())) {
                    $f(b, v);
                }
            };
        }
        match self {
            GgufType::Q4_0 => each!(legacy::dequantize_q4_0),
            GgufType::Q4_1 => each!(legacy::dequantize_q4_1),
            GgufType::Q5_0 => each!(legacy::dequantize_q5_0),
            GgufType::Q5_1 => each!(legacy::dequantize_q5_1),
            GgufType::Q8_0 => each!(legacy::dequantize_q8_0),
            GgufType::Q4K => each!(kquants::dequantize_q4_k),
            GgufType::Q5K => each!(kquants::dequantize_q5_k),
            GgufType::Q6K => each!(kquants::dequantize_q6_k),
        }
    }

    /// Bits per code (5 and 6 included: these are not the SPEC's 2/4/8).
    pub fn bits(self) -> u8 {
        match self {
            GgufType::Q4_0 | GgufType::Q4_1 | GgufType::Q4K => 4,
            GgufType::Q5_0 | GgufType::Q5_1 | GgufType::Q5K => 5,
            GgufType::Q6K => 6,
            GgufType::Q8_0 => 8,
        }
    }

    /// Whether the block has no minimum / offset (`x = d·q`).
    pub fn symmetric(self) -> bool {
        matches!(self, GgufType::Q4_0 | GgufType::Q5_0 | GgufType::Q8_0 | GgufType::Q6K)
    }

    /// Bytes of `rows` rows of `cols` values (checked by [`Self::check_row`]).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_size() * self.type_size()
    }

    /// A row of `cols` values must be whole blocks, as in ggml.
    pub fn check_row(self, cols: usize) -> Result<()> {
        if cols == 0 || !cols.is_multiple_of(self.block_size()) {
            return Err(Error::validation(
                format!("rows of {cols} values for {}", self.name()),
                format!("rows (the last axis) a multiple of {}, {}'s block size", self.block_size(), self.name()),
                if self.block_size() == 32 {
                    "pick another type or keep this tensor in float (llama.cpp does for such rows)"
                } else {
                    "use a 32-value type (Q8_0, Q4_0, Q5_0) for this tensor, or keep it in float, as llama-quantize falls back"
                },
            ));
        }
        Ok(())
    }
}

/// Rows per parallel task: enough work to amortise scheduling, few enough to balance.
const ROWS_PER_TASK_ELEMENTS: usize = 1 << 16;

/// Quantize `view` to `ty`, rows in parallel, into a buffer from `alloc`: a [`Quantized`]
/// whose `codes` are the blocks, row after row, exactly as a GGUF file stores them. With
/// `stats`, also the error statistics of their dequantization, taken from each row while
/// it is still in cache: each task's rows on eight float64 lanes (`StatsAcc::add_run`),
/// the tasks merged in row order, so the bits do not depend on the thread count.
pub fn quantize(view: &TensorView<'_>, ty: GgufType, alloc: &dyn Allocator, cpu: Option<Avx2>, stats: bool) -> Result<Quantized> {
    let (rows, cols) = view.rows_cols();
    ty.check_row(cols)?;
    let row_bytes = ty.row_bytes(cols);
    let mut blocks = alloc.bytes(rows * row_bytes)?;
    let acc = match view.dtype() {
        DType::F32 => quantize_typed::<f32>(view, ty, &mut blocks, cpu, stats)?,
        DType::F16 => quantize_typed::<half::f16>(view, ty, &mut blocks, cpu, stats)?,
        DType::BF16 => quantize_typed::<half::bf16>(view, ty, &mut blocks, cpu, stats)?,
        DType::F64 => quantize_typed::<f64>(view, ty, &mut blocks, cpu, stats)?,
    };
    let granularity = Granularity::Group(ty.block_size());
    Ok(Quantized {
        shape: view.shape().to_vec(),
        dtype: view.dtype(),
        spec: QuantSpec { bits: ty.bits(), symmetric: ty.symmetric(), granularity, scale_dtype: ScaleDType::F16, pack: true, stats: false },
        layout: Layout::new(rows, cols, granularity),
        codes: blocks,
        scales: Scales::F16(Vec::new()),
        zero_points: None,
        stats: stats.then(|| acc.finish(rows * cols)),
        gguf: Some(ty),
    })
}

/// [`quantize`] for one element type: the statistics' sums (zero without `stats`).
fn quantize_typed<T: Element>(view: &TensorView<'_>, ty: GgufType, blocks: &mut [u8], cpu: Option<Avx2>, stats: bool) -> Result<StatsAcc> {
    let data = view.typed::<T>().ok_or_else(|| Error::Internal("view dtype mismatch".into()))?;
    let (_, cols) = view.rows_cols();
    let row_bytes = ty.row_bytes(cols);
    let rows_per_task = (ROWS_PER_TASK_ELEMENTS / cols).max(1);
    let task_bytes = row_bytes * rows_per_task;
    let task = |(task, out): (usize, &mut [u8])| {
        let first = task * rows_per_task;
        let mut source = RowSource::new(data, first..first + out.len() / row_bytes, cols, cpu);
        let mut restored = if stats { vec![0f32; cols] } else { Vec::new() };
        let mut acc = StatsAcc::default();
        for (r, out_row) in out.chunks_exact_mut(row_bytes).enumerate() {
            let index = first + r;
            let values = source.row(index);
            let stats = stats.then_some((&mut restored[..], &mut acc));
            let finite = match cpu {
                // The check, the block functions and the statistics, inlined here,
                // compiled with AVX2 (ggml's float operations are not reassociated or
                // fused, so the bytes do not change; nor do the sums, whose order is
                // fixed).
                Some(cpu) => cpu.vectorize(#[inline(always)] || checked_row(ty, values, out_row, stats, Some(cpu))),
                None => checked_row(ty, values, out_row, stats, None),
            };
            if !finite {
                let at = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
                return Err(Error::NonFinite { index: index * cols + at, value: values[at] });
            }
        }
        Ok(acc)
    };
    // Every task's outcome, in row order: the error reported is the first non-finite value
    // in flat order, not the first a thread happened to meet.
    let outcomes = map_pieces(blocks.chunks_mut(task_bytes).enumerate().collect(), task);
    let mut acc = StatsAcc::default();
    for part in outcomes {
        acc.merge(&part?);
    }
    Ok(acc)
}

/// One row's blocks; the match is per row and each block function is called directly, so
/// it is inlined into its loop (and into [`Avx2::vectorize`]'s AVX2 code).
#[inline(always)]
fn quantize_row(ty: GgufType, values: &[f32], out: &mut [u8], cpu: Option<Avx2>) {
    let (block, size) = (ty.block_size(), ty.type_size());
    // Called by path, never through a closure: a closure LLVM leaves out of line is
    // compiled for the baseline CPU (see `Avx2::vectorize`).
    macro_rules! each {
        ($f:path $(, $arg:expr)?) => {
            for b in 0..values.len() / block {
                $f(&values[b * block..(b + 1) * block], &mut out[b * size..(b + 1) * size] $(, $arg)?);
            }
        };
    }
    match ty {
        GgufType::Q4_0 => each!(legacy::quantize_q4_0),
        GgufType::Q4_1 => each!(legacy::quantize_q4_1),
        GgufType::Q5_0 => each!(legacy::quantize_q5_0),
        GgufType::Q5_1 => each!(legacy::quantize_q5_1),
        // Whole rows: it batches its scale divisions across blocks.
        GgufType::Q8_0 => legacy::quantize_q8_0(values, out),
        GgufType::Q4K => each!(kquants::quantize_q4_k, cpu),
        GgufType::Q5K => each!(kquants::quantize_q5_k, cpu),
        GgufType::Q6K => each!(kquants::quantize_q6_k, cpu),
    }
}

/// Quantize a row whose values are all finite, and with `stats` add the error of its
/// dequantization (decoded into the buffer given) to the sums; `false` (and nothing
/// written) when a value is not finite.
#[inline(always)]
fn checked_row(ty: GgufType, values: &[f32], out: &mut [u8], stats: Option<(&mut [f32], &mut StatsAcc)>, cpu: Option<Avx2>) -> bool {
    if any_non_finite(values) {
        return false;
    }
    quantize_row(ty, values, out, cpu);
    if let Some((restored, acc)) = stats {
        ty.dequantize_into(out, restored);
        acc.add_run(values, restored, cpu);
    }
    true
}

/// Whether any value is NaN or ±inf: an exponent test on the bits, which vectorizes.
#[inline(always)]
fn any_non_finite(values: &[f32]) -> bool {
    values.iter().fold(false, |acc, v| acc | (v.to_bits() & 0x7f80_0000 == 0x7f80_0000))
}

/// A task's rows of a view as float32: borrowed in place when they are contiguous float32,
/// gathered all at once when the last axis is strided (a transposed weight: read one row at
/// a time, it would use one value of each cache line it loads), else widened one row at a
/// time into a buffer.
struct RowSource<'d, 'v, T> {
    data: Strided<'d, 'v, T>,
    rows: std::ops::Range<usize>,
    cols: usize,
    cpu: Option<Avx2>,
    gathered: bool,
    buffer: Vec<f32>,
}

impl<'d, 'v, T: Element> RowSource<'d, 'v, T> {
    fn new(data: Strided<'d, 'v, T>, rows: std::ops::Range<usize>, cols: usize, cpu: Option<Avx2>) -> Self {
        let gathered = data.col_stride() != 1 && data.col_stride() != -1;
        let mut buffer = Vec::new();
        if gathered {
            data.gather(&data.row_starts(rows.clone()), 0..cols, &mut buffer, cpu);
        }
        RowSource { data, rows, cols, cpu, gathered, buffer }
    }

    /// Row `index` (one of the task's rows).
    fn row(&mut self, index: usize) -> &[f32] {
        debug_assert!(self.rows.contains(&index));
        if self.gathered {
            let at = (index - self.rows.start) * self.cols;
            return &self.buffer[at..at + self.cols];
        }
        let offset = self.data.row_offset(index);
        if let Some(slice) = T::as_f32s(self.data.contiguous_run(offset, 0, self.cols).unwrap_or(&[])) {
            if slice.len() == self.cols {
                return slice;
            }
        }
        self.data.read_run(offset, 0, self.cols, &mut self.buffer, self.cpu);
        &self.buffer
    }
}

/// The float32 values of `blocks` (`rows × cols` of `ty`), as gguf-py's dequantizer gives them.
pub fn dequantize(blocks: &[u8], ty: GgufType, cols: usize, alloc: &dyn Allocator) -> Result<Vec<f32>> {
    ty.check_row(cols)?;
    let row_bytes = ty.row_bytes(cols);
    if !blocks.len().is_multiple_of(row_bytes) {
        return Err(Error::Internal(format!("{} bytes are not whole rows of {}", blocks.len(), ty.name())));
    }
    let rows = blocks.len() / row_bytes;
    let mut out = alloc.floats(rows * cols)?;
    let rows_per_task = (ROWS_PER_TASK_ELEMENTS / cols).max(1);
    let tasks = out.chunks_mut(cols * rows_per_task).zip(blocks.chunks(row_bytes * rows_per_task)).collect();
    map_pieces(tasks, |(values, bytes): (&mut [f32], &[u8])| ty.dequantize_into(bytes, values));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{ElemSlice, Fresh};

    #[test]
    fn names_sizes_and_numbers() {
        for t in GgufType::ALL {
            assert_eq!(GgufType::parse(&t.name().to_lowercase()).unwrap(), t);
            assert_eq!(GgufType::from_ggml_type(t.ggml_type()), Some(t));
        }
        assert!(GgufType::parse("Q3_K").unwrap_err().to_string().contains("Q4_K"));
    }

    #[test]
    fn rows_must_be_whole_blocks() {
        let data = vec![0f32; 3 * 48];
        let view = TensorView::contiguous(ElemSlice::F32(&data), vec![3, 48]).unwrap();
        let e = quantize(&view, GgufType::Q4_0, &Fresh, None, false).unwrap_err();
        assert!(e.to_string().contains("multiple of 32"), "{e}");
    }

    /// Transposed (gathered a task at a time) and reversed (one slice read backwards)
    /// views, float32 and float16, with and without the vector kernels, give their
    /// contiguous copy's blocks and statistics.
    #[test]
    fn strided_views_quantize_like_their_copy() {
        let data: Vec<f32> = (0..64 * 256).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0).collect();
        let halves: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
        let transposed: Vec<usize> = (0..256).flat_map(|r| (0..64).map(move |c| c * 256 + r)).collect();
        let reversed: Vec<usize> = (0..64).flat_map(|r| (0..256).map(move |c| r * 256 + 255 - c)).collect();
        for (slice, copy_of) in [(ElemSlice::F32(&data), transposed.clone()), (ElemSlice::F16(&halves), transposed)] {
            let strided = TensorView::new(slice, 0, vec![256, 64], vec![1, 256]).unwrap();
            check_against_copy(&strided, &data, &copy_of, vec![256, 64]);
        }
        for slice in [ElemSlice::F32(&data), ElemSlice::F16(&halves)] {
            let strided = TensorView::new(slice, 255, vec![64, 256], vec![256, -1]).unwrap();
            check_against_copy(&strided, &data, &reversed, vec![64, 256]);
        }
    }

    fn check_against_copy(strided: &TensorView<'_>, data: &[f32], copy_of: &[usize], shape: Vec<usize>) {
        let copy: Vec<f32> = copy_of.iter().map(|&i| data[i]).collect();
        let copy: Vec<f32> = match strided.dtype() {
            DType::F16 => copy.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
            _ => copy,
        };
        let contiguous = TensorView::contiguous(ElemSlice::F32(&copy), shape).unwrap();
        for t in [GgufType::Q4_0, GgufType::Q8_0] {
            let want = quantize(&contiguous, t, &Fresh, None, true).unwrap();
            for cpu in [None, Avx2::detect()] {
                let got = quantize(strided, t, &Fresh, cpu, true).unwrap();
                assert_eq!(got.codes, want.codes, "{t:?} {:?} {}", strided.strides(), cpu.is_some());
                assert_eq!(got.stats, want.stats);
                assert_eq!(quantize(strided, t, &Fresh, cpu, false).unwrap().codes, want.codes);
            }
        }
    }

    /// A tensor of many tasks gives the same blocks, statistics and dequantized values on
    /// a pool of one thread (its tasks run in order on the caller) as on several, and the
    /// error names the first non-finite value in flat order whichever task meets one first.
    #[test]
    fn any_thread_count_gives_the_same_result_and_the_first_error() {
        let (rows, cols) = (300, 1024); // five tasks of 64 rows, the last short
        let mut data: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0).collect();
        let view = TensorView::contiguous(ElemSlice::F32(&data), vec![rows, cols]).unwrap();
        let on = |threads: usize, f: &(dyn Fn() -> (Quantized, Vec<f32>) + Sync)| {
            rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
        };
        for t in [GgufType::Q4_0, GgufType::Q6K] {
            let run = || {
                let q = quantize(&view, t, &Fresh, Avx2::detect(), true).unwrap();
                let values = dequantize(&q.codes, t, cols, &Fresh).unwrap();
                (q, values)
            };
            let (one, one_values) = on(1, &run);
            let (three, three_values) = on(3, &run);
            assert_eq!(one.codes, three.codes, "{t:?}");
            assert_eq!(one.stats, three.stats);
            assert_eq!(one_values, three_values);
        }
        // The first non-finite value is in the first task's last row, another in the first
        // row of a later task: with several threads the later one is often met first.
        let first = 63 * cols + 5;
        data[first] = f32::NAN;
        data[256 * cols] = f32::INFINITY;
        let view = TensorView::contiguous(ElemSlice::F32(&data), vec![rows, cols]).unwrap();
        for threads in [1, 3] {
            for _ in 0..20 {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let err = pool.install(|| quantize(&view, GgufType::Q8_0, &Fresh, None, false)).unwrap_err();
                assert!(matches!(err, Error::NonFinite { index, .. } if index == first), "{threads} threads: {err:?}");
            }
        }
    }

    #[test]
    fn non_finite_values_are_refused_with_their_index() {
        let mut data = vec![1f32; 2 * 256];
        data[300] = f32::NAN;
        let view = TensorView::contiguous(ElemSlice::F32(&data), vec![2, 256]).unwrap();
        assert!(matches!(quantize(&view, GgufType::Q4K, &Fresh, None, true), Err(Error::NonFinite { index: 300, .. })));
    }
}
