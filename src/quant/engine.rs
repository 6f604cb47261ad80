//! The engine's fast path: each group is read once, its scale computed and its codes written while
//! it is still in cache; chunks of whole groups run in parallel.

use super::layout::{split_at_cuts, Layout, CHUNK_ELEMENTS};
use super::math::{code_bounds, group_params, group_params_lanes, GroupParams, ParamLanes, PARAM_LANES};
use super::pack::{stream_len, CodeWriter};
use super::quantized::{BlockSums, Quantized, Scales, SegmentLanes, Stats, StatsAcc, STAT_BLOCK};
use super::alloc::{Allocator, Fresh};
use super::simd::{Avx2, Kernel};
use super::spec::{QuantSpec, ScaleDType};
use super::tasks::map_pieces;
use super::view::{DType, Element, Strided, TensorView};
use crate::error::{Error, Result};
use half::{bf16, f16};

/// How the engine runs: which build of the kernels, and where result buffers come from.
/// Both are arguments, never process-wide state, so tests choose the kernel they check
/// and callers choose whether freed results are reused ([`BufferPool`]).
#[derive(Clone, Copy)]
pub struct Engine<'a> {
    /// The kernel build to run (must be one [`Kernel::supported`] lists).
    pub kernel: Kernel,
    /// Where result vectors come from.
    pub alloc: &'a dyn Allocator,
}

impl Default for Engine<'static> {
    /// The fastest kernel this CPU runs, fresh allocations.
    fn default() -> Self {
        Engine { kernel: Kernel::best(), alloc: &Fresh }
    }
}

impl std::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("kernel", &self.kernel).finish_non_exhaustive()
    }
}

impl<'a> Engine<'a> {
    /// An engine running `kernel`, allocating from `alloc`.
    pub fn new(kernel: Kernel, alloc: &'a dyn Allocator) -> Self {
        Engine { kernel, alloc }
    }

    /// Quantize `view` according to `spec` (docs/math.md).
    pub fn quantize(&self, view: &TensorView<'_>, spec: &QuantSpec) -> Result<Quantized> {
        spec.validate()?;
        let (c, s, z) = output_sizes(view.shape(), spec);
        let (mut codes, mut scales, mut zps) = (self.alloc.bytes(c)?, self.alloc.floats(s)?, self.alloc.bytes(z)?);
        let out = OutBuffers { codes: &mut codes, scales: &mut scales, zero_points: &mut zps };
        let stats = self.quantize_into(view, spec, out)?;
        let (rows, cols) = view.rows_cols();
        Ok(Quantized {
            shape: view.shape().to_vec(),
            dtype: view.dtype(),
            spec: *spec,
            layout: Layout::new(rows, cols, spec.granularity),
            codes,
            scales: Scales::from_f32(scales, spec.scale_dtype),
            zero_points: (!spec.symmetric).then_some(zps),
            stats,
            gguf: None,
        })
    }

    /// Quantize `view` into caller-provided buffers (sized by [`output_sizes`]); returns
    /// the error statistics when `spec.stats` asks for them.
    pub fn quantize_into(&self, view: &TensorView<'_>, spec: &QuantSpec, out: OutBuffers<'_>) -> Result<Option<Stats>> {
        spec.validate()?;
        let (c, s, z) = output_sizes(view.shape(), spec);
        if out.codes.len() != c || out.scales.len() != s || out.zero_points.len() != z {
            return Err(Error::Internal(format!(
                "output buffers of {}/{}/{} elements for a result needing {c}/{s}/{z}",
                out.codes.len(),
                out.scales.len(),
                out.zero_points.len()
            )));
        }
        let cpu = self.kernel.avx2();
        match view.dtype() {
            DType::F32 => quantize_typed::<f32>(view, spec, out, cpu),
            DType::F16 => quantize_typed::<f16>(view, spec, out, cpu),
            DType::BF16 => quantize_typed::<bf16>(view, spec, out, cpu),
            DType::F64 => quantize_typed::<f64>(view, spec, out, cpu),
        }
    }

    /// `q` back to float32 values of its source shape (docs/math.md).
    pub fn dequantize(&self, q: &Quantized) -> Result<Vec<f32>> {
        if let Some(ty) = q.gguf {
            return super::gguf::dequantize(&q.codes, ty, q.layout.cols, self.alloc);
        }
        q.dequantize_into(self.alloc.floats(q.layout.numel())?, self.kernel.avx2())
    }

    /// Quantize `view` to the GGUF block type `ty` (ggml's arithmetic, not the SPEC's);
    /// with `stats`, the error statistics of its dequantization (each row decoded again
    /// while it is in cache).
    pub fn quantize_gguf(&self, view: &TensorView<'_>, ty: super::gguf::GgufType, stats: bool) -> Result<Quantized> {
        super::gguf::quantize(view, ty, self.alloc, self.kernel.avx2(), stats)
    }
}

/// [`Engine::quantize`] with the default engine.
pub fn quantize(view: &TensorView<'_>, spec: &QuantSpec) -> Result<Quantized> {
    Engine::default().quantize(view, spec)
}

/// The buffers a quantization writes, sized by [`output_sizes`]. The Arrow output writes
/// codes straight into its large_binary value buffer through this.
#[derive(Debug)]
pub struct OutBuffers<'o> {
    /// The code stream: `stream_len(numel, bits, pack)` bytes.
    pub codes: &'o mut [u8],
    /// One float32 scale per group (already rounded to the scale dtype).
    pub scales: &'o mut [f32],
    /// One zero point per group, or empty when symmetric.
    pub zero_points: &'o mut [u8],
}

/// `(code bytes, number of scales, number of zero points)` that `shape` quantized under
/// `spec` needs. `shape` has at least one dimension.
pub fn output_sizes(shape: &[usize], spec: &QuantSpec) -> (usize, usize, usize) {
    let cols = shape.last().copied().unwrap_or(0);
    let rows = shape[..shape.len().saturating_sub(1)].iter().product();
    let layout = Layout::new(rows, cols, spec.granularity);
    let groups = layout.num_groups();
    (stream_len(layout.numel(), spec.bits, spec.pack), groups, if spec.symmetric { 0 } else { groups })
}

/// [`Engine::quantize_into`] with the default engine.
pub fn quantize_into(view: &TensorView<'_>, spec: &QuantSpec, out: OutBuffers<'_>) -> Result<Option<Stats>> {
    Engine::default().quantize_into(view, spec, out)
}

fn quantize_typed<T: Element>(
    view: &TensorView<'_>,
    spec: &QuantSpec,
    out: OutBuffers<'_>,
    cpu: Option<Avx2>,
) -> Result<Option<Stats>> {
    let data = view.typed::<T>().ok_or_else(|| Error::Internal("view dtype mismatch".into()))?;
    let (rows, cols) = view.rows_cols();
    let layout = Layout::new(rows, cols, spec.granularity);
    let n = layout.numel();
    // A strided last axis is gathered in blocks or tiles of whole rows, so its chunks hold
    // one (within reason: a chunk is also the unit of parallel work).
    let bounds = if data.col_stride() == 1 {
        layout.chunk_bounds()
    } else {
        let rows = if layout.group_len <= MAX_BLOCK_COLS { BLOCK_ROWS } else { MAX_TILE_ROWS };
        // At least 8 chunks when the tensor allows, so both cores (and more) get work.
        let size = CHUNK_ELEMENTS.max(cols.saturating_mul(rows).min(MAX_STRIDED_CHUNK).min(n / 8));
        // Whole rows, a multiple of 8 of them, so chunks start on row starts (which are
        // then multiples of 8 elements, as chunk starts must be).
        let rows = size.div_ceil(cols.max(1)).next_multiple_of(8);
        layout.chunk_bounds_of(rows.saturating_mul(cols))
    };
    let inner = &bounds[1..bounds.len() - 1];

    // Per-tensor needs the global range before any code can be written: one extra pass.
    let fixed = if layout.per_tensor {
        // A range does not depend on order: a transposed or reversed view that fills one
        // span of memory is read in memory order (no gather). The flat-order pass below
        // runs only when that finds a non-finite value, to report the first in flat order.
        let span = if data.col_stride() != 1 { data.dense_span() } else { None };
        let in_memory_order = span.map(|span| run_chunks(&bounds, |_, e0, e1| min_max(&span[e0..e1], e0, cpu)));
        let ranges = match in_memory_order {
            Some(ranges) if ranges.iter().all(|r| r.is_ok()) => ranges,
            _ => run_chunks(&bounds, |_, e0, e1| tensor_range(&data, &layout, e0, e1, cpu)),
        };
        let (mut mn, mut mx) = (0.0f32, 0.0f32);
        for range in ranges {
            let (a, b) = range?;
            (mn, mx) = (mn.min(a), mx.max(b));
        }
        Some(group_params(mn, mx, spec).ok_or_else(|| scale_error(spec, 0))?)
    } else {
        None
    };

    let OutBuffers { codes, scales, zero_points: zps } = out;
    let code_cuts: Vec<usize> = inner.iter().map(|&e| stream_len(e, spec.bits, spec.pack)).collect();
    // Per-tensor chunks write no scale (the single one is set below), so they cut at 0.
    let group_cuts: Vec<usize> =
        inner.iter().map(|&e| if layout.per_tensor { 0 } else { layout.group_of(e) }).collect();
    let zp_cuts = if spec.symmetric { vec![0; inner.len()] } else { group_cuts.clone() };
    let outs: Vec<_> = split_at_cuts(&mut *codes, &code_cuts)
        .into_iter()
        .zip(split_at_cuts(&mut *scales, &group_cuts))
        .zip(split_at_cuts(&mut *zps, &zp_cuts))
        .map(|((c, s), z)| ChunkOut { codes: c, scales: s, zero_points: z })
        .collect();

    let results = run_chunks_with(&bounds, outs, |out, e0, e1| {
        let chunk = Chunk { data: &data, layout: &layout, spec, fixed: fixed.as_ref(), cpu };
        if spec.stats {
            chunk.run_dispatch::<true>(e0, e1, out)
        } else {
            chunk.run_dispatch::<false>(e0, e1, out)
        }
    });
    let mut acc = StatsAcc::default();
    let mut first_error: Option<Error> = None;
    for r in results {
        match r {
            Ok(part) => acc.merge(&part),
            Err(e) => first_error = Some(earliest(first_error, e)),
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if let Some(p) = fixed {
        if let Some(s) = scales.first_mut() {
            *s = p.scale;
        }
        if let Some(z) = zps.first_mut() {
            *z = p.zp as u8;
        }
    }
    Ok(spec.stats.then(|| acc.finish(n)))
}

/// Of two errors, the one a sequential scan would have met first.
fn earliest(current: Option<Error>, new: Error) -> Error {
    match (current, new) {
        (Some(a @ Error::NonFinite { index: ia, .. }), b @ Error::NonFinite { index: ib, .. }) => {
            if ib < ia {
                b
            } else {
                a
            }
        }
        (Some(a), _) => a,
        (None, b) => b,
    }
}

fn scale_error(spec: &QuantSpec, group: usize) -> Error {
    Error::validation(
        format!(
            "values in group {group} whose scale is not representable in {} (the range is too large)",
            spec.scale_dtype.name()
        ),
        "a value range whose scale fits the scale dtype",
        "use scale_dtype=\"float32\" or \"bfloat16\" (float16 scales stop at 65504), or rescale the tensor",
    )
}

/// Run `f(index, start, end)` on every chunk ([`map_pieces`]).
fn run_chunks<R: Send>(bounds: &[usize], f: impl Fn(usize, usize, usize) -> R + Sync) -> Vec<R> {
    map_pieces((0..bounds.len() - 1).collect(), |i| f(i, bounds[i], bounds[i + 1]))
}

/// Like [`run_chunks`], handing each chunk its own output slices.
fn run_chunks_with<O: Send, R: Send>(
    bounds: &[usize],
    outs: Vec<O>,
    f: impl Fn(O, usize, usize) -> R + Sync,
) -> Vec<R> {
    map_pieces(outs.into_iter().enumerate().collect(), |(i, o)| f(o, bounds[i], bounds[i + 1]))
}

/// The output slices one chunk owns.
struct ChunkOut<'o> {
    codes: &'o mut [u8],
    scales: &'o mut [f32],
    zero_points: &'o mut [u8],
}

impl ChunkOut<'_> {
    /// Store group `g`'s scale (and zero point, when the spec stores them).
    #[inline(always)]
    fn set_params(&mut self, g: usize, p: &GroupParams) {
        self.scales[g] = p.scale;
        if let Some(z) = self.zero_points.get_mut(g) {
            *z = p.zp as u8;
        }
    }
}

/// Everything a chunk reads.
struct Chunk<'c, 'a, 'v, T> {
    data: &'c Strided<'a, 'v, T>,
    layout: &'c Layout,
    spec: &'c QuantSpec,
    /// The per-tensor parameters, when there is one group for everything.
    fixed: Option<&'c GroupParams>,
    /// The AVX2 kernels, when the CPU has them (detected once per chunk, not per group).
    cpu: Option<Avx2>,
}

impl<T: Element> Chunk<'_, '_, '_, T> {
    /// [`Self::run`] compiled for the widest vector unit the CPU has (chosen at run time,
    /// never with `target-cpu=native`): the same source, so the same bits.
    fn run_dispatch<const STATS: bool>(&self, e0: usize, e1: usize, out: ChunkOut<'_>) -> Result<StatsAcc> {
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = self.cpu {
            return cpu.vectorize(#[inline(always)] || self.run::<STATS>(e0, e1, out));
        }
        self.run::<STATS>(e0, e1, out)
    }

    /// Quantize flat elements `e0..e1` (a run of whole groups starting on a byte boundary).
    #[inline(always)]
    fn run<const STATS: bool>(&self, e0: usize, e1: usize, mut out: ChunkOut<'_>) -> Result<StatsAcc> {
        if self.column_blocks_fit(e0, e1) {
            match self.run_column_blocks::<STATS>(e0, e1, &mut out) {
                Ok(acc) => return Ok(acc),
                // Groups ran out of order: the in-order pass finds the error a sequential
                // scan meets first (and rewrites every output).
                Err(_) => return self.run_rows::<STATS>(e0, e1, out),
            }
        }
        self.run_rows::<STATS>(e0, e1, out)
    }

    /// Whether [`Self::run_column_blocks`] can quantize `e0..e1`: a strided view whose rows
    /// are adjacent (a transposed weight: other layouts read fastest a whole row at a
    /// time), in groups of a few hundred columns, whole rows, and every group starting on
    /// a byte boundary.
    #[inline(always)]
    fn column_blocks_fit(&self, e0: usize, e1: usize) -> bool {
        let lay = self.layout;
        let bits = self.writer_bits();
        self.fixed.is_none()
            && lay.cols > 0
            && self.data.col_stride() != 1
            && self.data.rows_adjacent()
            && lay.group_len <= MAX_BLOCK_COLS
            && e0.is_multiple_of(lay.cols)
            && e1.is_multiple_of(lay.cols)
            && e1 - e0 >= 2 * lay.cols
            && (lay.cols * bits).is_multiple_of(8)
            && (lay.group_len * bits).is_multiple_of(8)
    }

    /// Bits per stored code (8 for unpacked storage).
    #[inline(always)]
    fn writer_bits(&self) -> usize {
        if self.spec.pack {
            self.spec.bits as usize
        } else {
            8
        }
    }

    /// The rows of `e0..e1` in blocks of [`BLOCK_ROWS`] rows × one group's columns: each
    /// block is gathered (transposed) into a buffer that stays in L2 and its groups
    /// quantized from there, writing codes, scales and zero points at their own positions.
    /// Reading 512 rows of a transposed weight's column at a time uses 2 KiB of contiguous
    /// memory per page visited. While a block's groups are encoded, the next block's cache
    /// lines are requested a slice at a time, so memory works while the core computes (the
    /// gather alone waits on memory and the encode alone on the core). With `STATS`, each
    /// group's statistics are kept apart and added up in flat order when the block is
    /// done, so the sums are those of [`Self::run_rows`], bit for bit. Stops at the first
    /// error it meets, which may not be the first in flat order.
    #[inline(always)]
    fn run_column_blocks<const STATS: bool>(&self, e0: usize, e1: usize, out: &mut ChunkOut<'_>) -> Result<StatsAcc> {
        let lay = self.layout;
        let bits = self.writer_bits();
        let (r0, r1) = (e0 / lay.cols, e1 / lay.cols);
        let first_group = lay.group_of(e0);
        let group_cols = |j: usize| j * lay.group_len..((j + 1) * lay.group_len).min(lay.cols);
        // A short first block takes the rows before column 0's first cache-line boundary,
        // so the later blocks start on a line (in every column when the column stride is a
        // multiple of 64 bytes, as a transposed weight's usually is). A run that starts
        // mid-line makes each 16-row load of the gather straddle two lines.
        let unit = 64 / std::mem::size_of::<T>();
        let lead = (unit - self.data.line_offset(r0)) % unit;
        let lead = if lead < r1 - r0 { lead } else { 0 };
        let block_end = |rb: usize| if rb == r0 && lead > 0 { r0 + lead } else { (rb + BLOCK_ROWS).min(r1) };
        // The same rows for every group of a block: their starts are found once.
        let block_starts = |rb: usize| if rb < r1 { self.data.row_starts(rb..block_end(rb)) } else { Vec::new() };
        let mut acc = StatsAcc::default();
        let mut block = TILE.with(|t| std::mem::take(&mut *t.borrow_mut()));
        let mut batch = [GroupParams::default(); BATCH_GROUPS];
        let mut batch_accs = [StatsAcc::default(); BATCH_GROUPS];
        // With `STATS`, the statistics of the block's groups, row by row (flat order): as
        // many rows as the chunk's largest block.
        let mut parts = vec![StatsAcc::default(); if STATS { BLOCK_ROWS.min(r1 - r0) * lay.groups_per_row } else { 0 }];
        let mut staged = [0u8; BATCH_GROUPS * MAX_BLOCK_COLS];
        let mut result = Ok(());
        let mut starts = block_starts(r0);
        let mut rb = r0;
        'blocks: while rb < r1 {
            let next_starts = block_starts(block_end(rb));
            for j in 0..lay.groups_per_row {
                let cols = group_cols(j);
                let (c0, width) = (cols.start, cols.len());
                self.data.gather(&starts, cols, &mut block, self.cpu);
                let (next_rows, next_cols) =
                    if j + 1 < lay.groups_per_row { (&starts, group_cols(j + 1)) } else { (&next_starts, group_cols(0)) };
                let prefetch_step = next_cols.len().div_ceil(block.len().div_ceil(width * BATCH_GROUPS));
                // The gathered groups lie one after another: found 16 at a time, as in
                // `run_rows`, else (a bad group among them) one at a time.
                for (n, rows) in block.chunks(width * BATCH_GROUPS).enumerate() {
                    #[cfg(target_arch = "x86_64")]
                    if let Some(cpu) = self.cpu {
                        let from = (next_cols.start + n * prefetch_step).min(next_cols.end);
                        self.data.prefetch_gather(next_rows, from..(from + prefetch_step).min(next_cols.end), cpu);
                    }
                    let count = rows.len() / width;
                    // The batch's codes are staged, then copied: each group's bytes go to a
                    // different row of the output.
                    let group_bytes = width * bits / 8;
                    let mut staging = CodeWriter::new(&mut staged[..count * group_bytes], bits as u8);
                    // The gathered block is in L2 already: nothing to ask memory for.
                    if self.encode_batch::<f32, STATS>(rows, width, count, &mut batch, &mut staging, &mut batch_accs, &[]) {
                        staging.finish();
                        for (k, bytes) in staged[..count * group_bytes].chunks_exact(group_bytes).enumerate() {
                            let i = n * BATCH_GROUPS + k;
                            let at = ((rb + i) * lay.cols + c0 - e0) * bits / 8;
                            out.codes[at..at + group_bytes].copy_from_slice(bytes);
                            out.set_params((rb + i) * lay.groups_per_row + j - first_group, &batch[k]);
                            if STATS {
                                parts[i * lay.groups_per_row + j] = batch_accs[k];
                            }
                        }
                        continue;
                    }
                    for (k, xs) in rows.chunks_exact(width).enumerate() {
                        let i = n * BATCH_GROUPS + k;
                        let e = (rb + i) * lay.cols + c0;
                        let at = (e - e0) * bits / 8;
                        let mut writer = CodeWriter::new(&mut out.codes[at..at + width * bits / 8], bits as u8);
                        let mut part = StatsAcc::default();
                        let params = match self.group::<f32, STATS>(xs, e, &mut writer, &mut part) {
                            Ok(p) => p.expect("a group quantized on its own has its own parameters"),
                            Err(err) => {
                                result = Err(err);
                                break 'blocks;
                            }
                        };
                        writer.finish();
                        out.set_params((rb + i) * lay.groups_per_row + j - first_group, &params);
                        if STATS {
                            parts[i * lay.groups_per_row + j] = part;
                        }
                    }
                }
            }
            if STATS {
                let rows = block_end(rb) - rb;
                parts[..rows * lay.groups_per_row].iter().for_each(|part| acc.merge(part));
            }
            starts = next_starts;
            rb = block_end(rb);
        }
        TILE.with(|t| *t.borrow_mut() = block);
        result.map(|()| acc)
    }

    /// Quantize flat elements `e0..e1` group after group, in flat order.
    #[inline(always)]
    fn run_rows<const STATS: bool>(&self, e0: usize, e1: usize, mut out: ChunkOut<'_>) -> Result<StatsAcc> {
        let lay = self.layout;
        if e0 == e1 {
            return Ok(StatsAcc::default());
        }
        let mut writer = CodeWriter::new(std::mem::take(&mut out.codes), self.writer_bits() as u8);
        let mut acc = StatsAcc::default();
        let mut scratch: Vec<f32> = Vec::new();
        // Whole rows of a view whose last axis is strided, gathered a few at a time.
        let strided = self.data.col_stride() != 1;
        let vector_kernels = self.cpu.is_some();
        let mut tile: Vec<f32> = if strided { TILE.with(|t| std::mem::take(&mut *t.borrow_mut())) } else { Vec::new() };
        let mut tile_rows = 0..0;
        // Batches need each group's own parameters, a contiguous row, and the element type
        // the per-group path would encode from (half precision is widened first below for
        // the portable kernel; the vector kernels widen it in registers, statistics too).
        let batching =
            self.fixed.is_none() && lay.group_len < lay.cols && (strided || T::DTYPE == DType::F32 || vector_kernels);
        let mut batch = [GroupParams::default(); BATCH_GROUPS];
        let mut batch_accs = [StatsAcc::default(); BATCH_GROUPS];
        let rows_follow = self.data.rows_follow();
        // Groups per batch: as many as the kernels take, or fewer when smaller batches
        // keep memory busier (`Avx2::batch_groups`); a gathered tile is in cache already.
        #[cfg(target_arch = "x86_64")]
        let batch_cap = match self.cpu {
            Some(cpu) if !strided => cpu.batch_groups(lay.group_len * std::mem::size_of::<T>(), BATCH_GROUPS),
            _ => BATCH_GROUPS,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let batch_cap = BATCH_GROUPS;
        let mut group = 0;
        let (mut row, mut col) = (e0 / lay.cols, e0 % lay.cols);
        let mut row_offset = self.data.row_offset(row);
        let mut e = e0;
        while e < e1 {
            let len = lay.group_len.min(lay.cols - col).min(e1 - e);
            if strided && col == 0 && !tile_rows.contains(&row) {
                let rows = rows_per_tile(lay, e, e1);
                if rows >= 2 {
                    self.data.gather(&self.data.row_starts(row..row + rows), 0..lay.cols, &mut tile, self.cpu);
                    tile_rows = row..row + rows;
                }
            }
            // Whole groups of a contiguous row, several at a time: their parameters first,
            // then their codes (see `batch_params`).
            let batch_groups =
                if batching { ((lay.cols - col).min(e1 - e) / lay.group_len).min(batch_cap) } else { 0 };
            let batched = batch_groups >= 2
                && if tile_rows.contains(&row) {
                    let at = (row - tile_rows.start) * lay.cols + col;
                    self.encode_batch::<f32, STATS>(&tile[at..at + batch_groups * lay.group_len], lay.group_len, batch_groups, &mut batch, &mut writer, &mut batch_accs, &[])
                } else {
                    let len = batch_groups * lay.group_len;
                    match self.data.contiguous_run(row_offset, col, len) {
                        Some(run) => {
                            // What this chunk reads next, for the kernel to ask memory for.
                            let next = self.data.after_run(row_offset, col, len, (2 * len).min(e1 - e - len), rows_follow);
                            self.encode_batch::<T, STATS>(run, lay.group_len, batch_groups, &mut batch, &mut writer, &mut batch_accs, next)
                        }
                        None => false,
                    }
                };
            if batched {
                for (p, part) in batch[..batch_groups].iter().zip(&batch_accs) {
                    out.set_params(group, p);
                    group += 1;
                    if STATS {
                        acc.merge(part);
                    }
                }
            }
            let len = if batched {
                batch_groups * lay.group_len
            } else {
                let fresh = if tile_rows.contains(&row) {
                    let at = (row - tile_rows.start) * lay.cols + col;
                    self.group::<f32, STATS>(&tile[at..at + len], e, &mut writer, &mut acc)
                } else {
                    match self.data.contiguous_run(row_offset, col, len) {
                        // Without the vector kernels (which widen in registers), half and double
                        // precision groups are widened to float32 once (exact for f16/bf16; f64
                        // rounds exactly as `to_f32` does everywhere), so the float32 loops do
                        // the rest.
                        Some(run) if T::DTYPE != DType::F32 && !vector_kernels => {
                            scratch.clear();
                            scratch.extend(run.iter().map(|x| x.to_f32()));
                            self.group::<f32, STATS>(&scratch, e, &mut writer, &mut acc)
                        }
                        Some(run) => self.group::<T, STATS>(run, e, &mut writer, &mut acc),
                        None => {
                            self.data.read_run(row_offset, col, len, &mut scratch, self.cpu);
                            self.group::<f32, STATS>(&scratch, e, &mut writer, &mut acc)
                        }
                    }
                }?;
                if let Some(p) = fresh {
                    out.set_params(group, &p);
                    group += 1;
                }
                len
            };
            e += len;
            col += len;
            if col == lay.cols {
                col = 0;
                row += 1;
                if e < e1 {
                    row_offset = self.data.row_offset(row);
                }
            }
        }
        writer.finish();
        if strided {
            TILE.with(|t| *t.borrow_mut() = tile);
        }
        Ok(acc)
    }

    /// Encode the `count` whole groups of `run` (consecutive, `group_len` each: the
    /// layout's, or a column block's narrower last group) as one batch: their parameters
    /// first (into `batch`), then their codes. With `STATS`, group `k`'s statistics go to
    /// `accs[k]`, reset first: the caller adds them up in flat order (a fresh
    /// accumulator's one segment, merged, adds exactly what the segment would add
    /// directly). `next` is what the caller reads after `run` when it follows `run` in
    /// memory (else empty): the vector kernels ask memory for part of it while they
    /// encode (`Avx2::encode_groups`). `false` (nothing written) when a group is not
    /// finite or has no representable scale.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn encode_batch<S: Element, const STATS: bool>(
        &self,
        run: &[S],
        group_len: usize,
        count: usize,
        batch: &mut [GroupParams; BATCH_GROUPS],
        writer: &mut CodeWriter<'_>,
        accs: &mut [StatsAcc; BATCH_GROUPS],
        next: &[S],
    ) -> bool {
        if !self.batch_params(run, group_len, count, batch) {
            return false;
        }
        let params = &batch[..count];
        let accs = &mut accs[..count];
        if STATS {
            accs.fill(StatsAcc::default());
        }
        match self.cpu {
            // The whole batch in one kernel call (its set-up paid once).
            #[cfg(target_arch = "x86_64")]
            Some(cpu) if writer.byte_aligned() && group_len.is_multiple_of(BLOCK) => {
                let (bits, bytes) = (writer.bits(), run.len() / writer.codes_per_byte());
                cpu.encode_groups(run, group_len, params, bits, writer.next_bytes(bytes), STATS.then_some(accs), next);
            }
            _ => {
                for ((p, xs), acc) in params.iter().zip(run.chunks_exact(group_len)).zip(accs) {
                    self.encode_group::<S, STATS>(xs, *p, writer, acc);
                }
            }
        }
        true
    }

    /// Quantize one group (or, per-tensor, one row segment) starting at flat index `e`.
    /// Returns the group's new parameters when it has its own scale.
    #[inline(always)]
    fn group<S: Element, const STATS: bool>(
        &self,
        xs: &[S],
        e: usize,
        writer: &mut CodeWriter<'_>,
        acc: &mut StatsAcc,
    ) -> Result<Option<GroupParams>> {
        let (params, fresh) = match self.fixed {
            Some(p) => (*p, false),
            None => {
                let (mn, mx) = min_max(xs, e, self.cpu)?;
                let p = group_params(mn, mx, self.spec)
                    .ok_or_else(|| scale_error(self.spec, self.layout.group_of(e)))?;
                (p, true)
            }
        };
        self.encode_group::<S, STATS>(xs, params, writer, acc);
        Ok(fresh.then_some(params))
    }

    /// The parameters of the `count` consecutive groups that start `run` (each
    /// `group_len` long), all found before any of them is encoded, into `params`. Each
    /// group's extremes and divisions form a long dependent chain; found one group at a
    /// time, the next group's chain waits behind the previous group's encode, and found
    /// together the CPU overlaps them. `false` when a group is not finite or has no
    /// representable scale: the caller then takes the groups one at a time, which reports
    /// the first such group as a sequential scan would.
    #[inline(always)]
    fn batch_params<S: Element>(&self, run: &[S], group_len: usize, count: usize, params: &mut [GroupParams; BATCH_GROUPS]) -> bool {
        let (mut mn, mut mx) = ([0f32; PARAM_LANES], [0f32; PARAM_LANES]);
        #[cfg(target_arch = "x86_64")]
        let together = self.cpu.and_then(|cpu| cpu.group_extremes(run, group_len, count, &mut mn, &mut mx));
        #[cfg(not(target_arch = "x86_64"))]
        let together: Option<bool> = None;
        match together {
            Some(false) => return false, // a value is not finite
            Some(true) => {}
            None => {
                for (i, xs) in run.chunks_exact(group_len).take(count).enumerate() {
                    let Ok(range) = min_max(xs, 0, self.cpu) else {
                        return false;
                    };
                    (mn[i], mx[i]) = range;
                }
            }
        }
        if self.spec.scale_dtype == ScaleDType::F32 {
            let mut lanes = ParamLanes::default();
            if !group_params_lanes(&mn, &mx, self.spec, &mut lanes) {
                return false;
            }
            let (lo, hi, offset) = code_bounds(self.spec);
            for (i, p) in params.iter_mut().take(count).enumerate() {
                *p = GroupParams { scale: lanes.scale[i], inv: lanes.inv[i], zp: lanes.zp[i], lo, hi, offset };
            }
            return true;
        }
        // Scales rounded to a half-precision dtype: one group at a time.
        for (i, p) in params.iter_mut().take(count).enumerate() {
            match group_params(mn[i], mx[i], self.spec) {
                Some(found) => *p = found,
                None => return false,
            }
        }
        true
    }

    /// Encode one group (or per-tensor row segment) `xs` with `params`, and with `STATS`
    /// add its error statistics to `acc`.
    #[inline(always)]
    fn encode_group<S: Element, const STATS: bool>(
        &self,
        xs: &[S],
        params: GroupParams,
        writer: &mut CodeWriter<'_>,
        acc: &mut StatsAcc,
    ) {
        // Statistics come from the vector encode itself (its code values, in registers)
        // when it runs, else from a pass over the group while it is still in L1.
        let fused = STATS && self.cpu.is_some() && writer.byte_aligned();
        if STATS && !fused {
            segment_stats(xs, &params, acc, self.cpu);
        }
        let mut rest = xs;
        #[cfg(target_arch = "x86_64")]
        if writer.byte_aligned() {
            if let Some(cpu) = self.cpu {
                // Encoded and packed in registers, straight into the stream.
                let bytes = BLOCK / writer.codes_per_byte();
                let whole = xs.len() / BLOCK * BLOCK;
                if fused {
                    // BLOCK is STAT_BLOCK: the whole blocks are whole statistics blocks, and
                    // the rest (encoded below) the segment's last block.
                    rest = &xs[whole..];
                    let tail = (!rest.is_empty()).then(|| {
                        let mut last = BlockSums::default();
                        for (k, &x) in rest.iter().enumerate() {
                            let x = x.to_f32();
                            last.lane(k % 8, x, params.code_value(x) - params.zp, params.inv, params.scale);
                        }
                        last
                    });
                    let bits = writer.bits();
                    cpu.encode_with_stats(&xs[..whole], params, bits, writer.next_bytes(whole / BLOCK * bytes), tail.as_ref(), acc);
                } else {
                    // One call for the whole blocks: the kernel's set-up is paid once a group.
                    if whole > 0 {
                        cpu.encode(&xs[..whole], params, writer.bits(), writer.next_bytes(whole / BLOCK * bytes)); // a multiple of 32
                    }
                    rest = &xs[whole..];
                    // A short group (or a row's end) that fills whole bytes: in registers too.
                    if !rest.is_empty() && rest.len().is_multiple_of(writer.codes_per_byte()) {
                        cpu.encode_short(rest, params, writer.bits(), writer.next_bytes(rest.len() / writer.codes_per_byte()));
                        rest = &[];
                    }
                }
            }
        }
        if writer.byte_aligned() {
            // Blocks of BLOCK codes: encode into a small buffer, then pack whole bytes.
            // Both loops are branch-free and vectorize; the math is `encode`, unchanged.
            let mut codes = [0u8; BLOCK];
            let mut blocks = rest.chunks_exact(BLOCK);
            for block in &mut blocks {
                for (c, &x) in codes.iter_mut().zip(block) {
                    *c = params.encode(x.to_f32());
                }
                writer.push_whole_bytes(&codes);
            }
            rest = blocks.remainder();
        }
        for &x in rest {
            writer.push(params.encode(x.to_f32()));
        }
    }
}

/// The error statistics of one segment (a group's elements within one row) into `acc`:
/// blocks of values and their dequantized values, summed in [`SegmentLanes`] order.
#[inline(always)]
fn segment_stats<S: Element>(xs: &[S], params: &GroupParams, acc: &mut StatsAcc, cpu: Option<Avx2>) {
    let mut lanes = SegmentLanes::default();
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = cpu {
        cpu.segment_stats(xs, *params, &mut lanes);
        lanes.finish(acc, params.scale);
        return;
    }
    let (mut values, mut offsets) = ([0f32; STAT_BLOCK], [0f32; STAT_BLOCK]);
    for block in xs.chunks(STAT_BLOCK) {
        for ((v, d), &x) in values.iter_mut().zip(offsets.iter_mut()).zip(block) {
            *v = x.to_f32();
            *d = params.code_value(*v) - params.zp;
        }
        lanes.add(&values[..block.len()], &offsets[..block.len()], params.inv, params.scale);
    }
    lanes.finish(acc, params.scale);
}

/// Codes encoded per block by the vectorizable path (a multiple of 8, so blocks fill whole
/// bytes at every width; and one statistics block, so the vector encode sums its errors).
const BLOCK: usize = STAT_BLOCK;
/// Most float32 values a tile of whole strided rows holds (2 MiB: in L2 and L3; used for
/// per-channel and per-tensor, whose groups span whole rows).
const TILE_ELEMENTS: usize = 1 << 19;
thread_local! {
    /// Each worker thread's tile, kept between chunks: a fresh multi-MiB allocation per
    /// chunk would fault in (and zero) its pages every time.
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}
/// Largest chunk of a strided view, in elements.
const MAX_STRIDED_CHUNK: usize = 1 << 22;
/// Rows per block of [`Chunk::run_column_blocks`]: 2 KiB of each float32 column of a
/// transposed weight per page visited (128 rows ran 1.3× slower: TLB misses).
const BLOCK_ROWS: usize = 512;
/// Widest group [`Chunk::run_column_blocks`] takes (a block of 512 × 256 floats is 512 KiB,
/// within L2).
const MAX_BLOCK_COLS: usize = 256;
/// Most rows per tile: 256 bytes of a transposed weight's column per page visited (16 rows
/// ran 1.7× slower).
const MAX_TILE_ROWS: usize = 64;
/// Most groups [`Chunk::batch_params`] finds the parameters of before encoding them (16
/// groups of 128 float32 values, 8 KiB, are still in L1 when encoded).
const BATCH_GROUPS: usize = PARAM_LANES;
/// Independent accumulators in [`min_max`], so the reduction vectorizes.
const LANES: usize = 16;

/// Smallest and largest element, or the flat index of the first non-finite one.
///
/// Lane-wise compare-and-select instead of `f32::min` (whose NaN rule blocks
/// vectorization): for finite inputs the extremes are the same whatever the order (a
/// `-0.0`/`0.0` tie cannot change a scale or zero point), and a non-finite input is found
/// by the separate check and reported, not used.
#[inline(always)]
fn min_max<S: Element>(xs: &[S], first_index: usize, cpu: Option<Avx2>) -> Result<(f32, f32)> {
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = cpu {
        let (mn, mx, finite) = cpu.min_max(xs);
        if finite {
            return Ok((mn, mx));
        }
        return Err(first_non_finite(xs, first_index));
    }
    let (mut lo, mut hi) = ([f32::INFINITY; LANES], [f32::NEG_INFINITY; LANES]);
    let mut finite = [true; LANES];
    let mut blocks = xs.chunks_exact(LANES);
    for block in &mut blocks {
        for j in 0..LANES {
            let v = block[j].to_f32();
            lo[j] = if v < lo[j] { v } else { lo[j] };
            hi[j] = if v > hi[j] { v } else { hi[j] };
            finite[j] &= v.abs() < f32::INFINITY;
        }
    }
    let (mut mn, mut mx) = (f32::INFINITY, f32::NEG_INFINITY);
    let mut finite = finite.iter().all(|&f| f);
    for j in 0..LANES {
        mn = if lo[j] < mn { lo[j] } else { mn };
        mx = if hi[j] > mx { hi[j] } else { mx };
    }
    for &x in blocks.remainder() {
        let v = x.to_f32();
        mn = mn.min(v);
        mx = mx.max(v);
        finite &= v.is_finite();
    }
    if finite {
        return Ok((mn, mx));
    }
    Err(first_non_finite(xs, first_index))
}

/// The error for the first non-finite element of `xs`, which a first pass saw. Finding
/// none now means the caller's memory changed between the two reads (another thread
/// writing to the tensor during the call): that is said, not treated as a bug.
#[cold]
fn first_non_finite<S: Element>(xs: &[S], first_index: usize) -> Error {
    match xs.iter().map(|x| x.to_f32()).enumerate().find(|(_, v)| !v.is_finite()) {
        Some((k, value)) => Error::NonFinite { index: first_index + k, value },
        None => Error::InputChanged { what: "the tensor".into() },
    }
}

/// Whole rows a tile gathers from flat element `e` (a row start) of a chunk ending at `e1`.
#[inline(always)]
fn rows_per_tile(lay: &Layout, e: usize, e1: usize) -> usize {
    ((e1 - e) / lay.cols).min(TILE_ELEMENTS / lay.cols).min(MAX_TILE_ROWS)
}

/// Range of flat elements `e0..e1` for per-tensor quantization.
fn tensor_range<T: Element>(data: &Strided<'_, '_, T>, lay: &Layout, e0: usize, e1: usize, cpu: Option<Avx2>) -> Result<(f32, f32)> {
    let (mut mn, mut mx) = (f32::INFINITY, f32::NEG_INFINITY);
    if e0 == e1 {
        return Ok((mn, mx));
    }
    let (mut row, mut col) = (e0 / lay.cols, e0 % lay.cols);
    let mut e = e0;
    let mut scratch = Vec::new();
    let strided = data.col_stride() != 1;
    while e < e1 {
        // A strided view's whole rows a tile at a time, gathered as `run_rows` gathers them:
        // read one row at a time, a transposed weight would use one value of each cache
        // line it loads. The tile is row-major, so a non-finite value's index in it is its
        // flat offset from `e`.
        let rows = if strided && col == 0 { rows_per_tile(lay, e, e1) } else { 0 };
        if rows >= 2 {
            data.gather(&data.row_starts(row..row + rows), 0..lay.cols, &mut scratch, cpu);
            let (a, b) = min_max(&scratch, e, cpu)?;
            (mn, mx) = (mn.min(a), mx.max(b));
            e += rows * lay.cols;
            row += rows;
            continue;
        }
        let len = (lay.cols - col).min(e1 - e);
        let row_offset = data.row_offset(row);
        let (a, b) = match data.contiguous_run(row_offset, col, len) {
            Some(run) => min_max(run, e, cpu)?,
            None => {
                data.read_run(row_offset, col, len, &mut scratch, cpu);
                min_max(&scratch, e, cpu)?
            }
        };
        (mn, mx) = (mn.min(a), mx.max(b));
        e += len;
        col = 0;
        row += 1;
    }
    Ok((mn, mx))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first pass saw a non-finite value and the second finds none: the caller's memory
    /// changed during the call. That is an error that says so, not a panic.
    #[test]
    fn a_value_that_vanished_between_two_reads_is_an_input_change() {
        assert!(matches!(first_non_finite(&[1.0f32, 2.0], 0), Error::InputChanged { .. }));
        assert!(matches!(first_non_finite(&[1.0f32, f32::NAN], 5), Error::NonFinite { index: 6, .. }));
    }
}
