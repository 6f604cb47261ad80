//! The engine's seam: a read-only, possibly strided view of a tensor.
//!
//! A [`TensorView`] is a slice that covers every element the view can reach, plus the
//! position of element `[0, …, 0]` in it, a shape and element strides. The bridge builds
//! the slice from a borrowed pointer (that is where the `unsafe` lives); everything here
//! is safe indexing, and [`TensorView::new`] proves once that every reachable element is
//! inside the slice.

use half::{bf16, f16};

use crate::error::{Error, Result};

/// Element types the engine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE float32.
    F32,
    /// IEEE float16.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE float64 (rounded to float32 on read).
    F64,
}

impl DType {
    /// The name numpy and torch use.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F64 => "float64",
        }
    }

    /// Bytes per element.
    pub fn itemsize(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }
}

/// A float type the engine can read; it is converted to float32 on load.
pub trait Element: super::simd::Lane + Send + Sync {
    /// The runtime tag of this type.
    const DTYPE: DType;
    /// The slice inside `data` when it holds this type.
    fn unwrap_slice(data: ElemSlice<'_>) -> Option<&[Self]>;
    /// `xs` itself when this type is float32 (the SIMD kernels' input).
    #[inline(always)]
    fn as_f32s(xs: &[Self]) -> Option<&[f32]> {
        let _ = xs;
        None
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn as_f32s(xs: &[Self]) -> Option<&[f32]> {
        Some(xs)
    }
    fn unwrap_slice(data: ElemSlice<'_>) -> Option<&[Self]> {
        match data {
            ElemSlice::F32(s) => Some(s),
            _ => None,
        }
    }
}
impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn unwrap_slice(data: ElemSlice<'_>) -> Option<&[Self]> {
        match data {
            ElemSlice::F64(s) => Some(s),
            _ => None,
        }
    }
}
impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn unwrap_slice(data: ElemSlice<'_>) -> Option<&[Self]> {
        match data {
            ElemSlice::F16(s) => Some(s),
            _ => None,
        }
    }
}
impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn unwrap_slice(data: ElemSlice<'_>) -> Option<&[Self]> {
        match data {
            ElemSlice::BF16(s) => Some(s),
            _ => None,
        }
    }
}

/// The memory a view reads, typed.
#[derive(Debug, Clone, Copy)]
pub enum ElemSlice<'a> {
    /// float32 elements.
    F32(&'a [f32]),
    /// float16 elements.
    F16(&'a [f16]),
    /// bfloat16 elements.
    BF16(&'a [bf16]),
    /// float64 elements.
    F64(&'a [f64]),
}

impl ElemSlice<'_> {
    /// Number of elements in the slice.
    pub fn len(&self) -> usize {
        match self {
            ElemSlice::F32(s) => s.len(),
            ElemSlice::F16(s) => s.len(),
            ElemSlice::BF16(s) => s.len(),
            ElemSlice::F64(s) => s.len(),
        }
    }

    /// True when the slice holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            ElemSlice::F32(_) => DType::F32,
            ElemSlice::F16(_) => DType::F16,
            ElemSlice::BF16(_) => DType::BF16,
            ElemSlice::F64(_) => DType::F64,
        }
    }

    /// The elements' bytes, as they lie in memory.
    pub fn bytes(&self) -> &[u8] {
        match self {
            ElemSlice::F32(s) => bytemuck::cast_slice(s),
            ElemSlice::F16(s) => bytemuck::cast_slice(s),
            ElemSlice::BF16(s) => bytemuck::cast_slice(s),
            ElemSlice::F64(s) => bytemuck::cast_slice(s),
        }
    }

    /// Address of the first element (for zero-copy checks in tests and metrics).
    pub fn as_ptr(&self) -> *const u8 {
        match self {
            ElemSlice::F32(s) => s.as_ptr().cast(),
            ElemSlice::F16(s) => s.as_ptr().cast(),
            ElemSlice::BF16(s) => s.as_ptr().cast(),
            ElemSlice::F64(s) => s.as_ptr().cast(),
        }
    }
}

/// Where each element of an n-d layout sits relative to element `[0, …, 0]`.
///
/// Returns `(lowest, highest)` element offsets reachable through `shape`/`strides`, or
/// `None` when the tensor is empty. Works in i128 so hostile strides cannot overflow.
pub fn reachable_offsets(shape: &[usize], strides: &[isize]) -> Option<(i128, i128)> {
    if shape.contains(&0) {
        return None;
    }
    let (mut lo, mut hi) = (0i128, 0i128);
    for (&n, &s) in shape.iter().zip(strides) {
        let reach = (n as i128 - 1) * s as i128;
        if reach < 0 {
            lo += reach;
        } else {
            hi += reach;
        }
    }
    Some((lo, hi))
}

/// Number of elements of `shape`, or a validation error when the product overflows.
pub fn checked_numel(shape: &[usize]) -> Result<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
        Error::validation(
            format!("shape {shape:?} whose element count overflows"),
            "a shape whose product fits in 64 bits",
            "check the producer's shape; it is corrupt",
        )
    })
}

/// A read-only view of an n-d float tensor with arbitrary element strides.
#[derive(Debug, Clone)]
pub struct TensorView<'a> {
    data: ElemSlice<'a>,
    origin: usize,
    shape: Vec<usize>,
    strides: Vec<isize>,
}

impl<'a> TensorView<'a> {
    /// A view of `data` where element `[0, …, 0]` is `data[origin]`.
    ///
    /// Fails unless `ndim >= 1`, the shape's product fits in `usize`, and every element
    /// reachable through `shape`/`strides` lies inside `data`.
    pub fn new(
        data: ElemSlice<'a>,
        origin: usize,
        shape: Vec<usize>,
        strides: Vec<isize>,
    ) -> Result<Self> {
        if shape.is_empty() {
            return Err(Error::validation(
                "a 0-d tensor (a scalar)",
                "a tensor with at least one dimension",
                "reshape it to (1,) first, e.g. x.reshape(1)",
            ));
        }
        if shape.len() != strides.len() {
            return Err(Error::validation(
                format!("{} dimensions but {} strides", shape.len(), strides.len()),
                "one stride per dimension",
                "check the producer; its strides are corrupt",
            ));
        }
        checked_numel(&shape)?;
        if let Some((lo, hi)) = reachable_offsets(&shape, &strides) {
            let first = origin as i128 + lo;
            let last = origin as i128 + hi;
            if first < 0 || last >= data.len() as i128 {
                return Err(Error::validation(
                    format!(
                        "a view (shape {shape:?}, strides {strides:?}) that reaches elements {first}..={last} of a {}-element buffer",
                        data.len()
                    ),
                    "every reachable element inside the buffer",
                    "check the producer's shape, strides and offset; they are inconsistent",
                ));
            }
        }
        Ok(TensorView { data, origin, shape, strides })
    }

    /// A C-contiguous view of the whole of `data`.
    pub fn contiguous(data: ElemSlice<'a>, shape: Vec<usize>) -> Result<Self> {
        let strides = contiguous_strides(&shape);
        Self::new(data, 0, shape, strides)
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Element strides.
    pub fn strides(&self) -> &[isize] {
        &self.strides
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The memory the view reads.
    pub fn data(&self) -> ElemSlice<'a> {
        self.data
    }
    /// Index in [`Self::data`] of element `[0, …, 0]`.
    pub fn origin(&self) -> usize {
        self.origin
    }
    /// True when the elements are laid out row-major with no gaps.
    pub fn is_c_contiguous(&self) -> bool {
        row_major_without_gaps(&self.shape, &self.strides)
    }
    /// `rows × cols` with cols the last axis (docs/math.md).
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = *self.shape.last().expect("ndim >= 1 is checked in new()");
        let rows = self.shape[..self.shape.len() - 1].iter().product();
        (rows, cols)
    }

    /// The typed form the kernels use; `None` unless `T` is [`Self::dtype`].
    pub fn typed<T: Element>(&self) -> Option<Strided<'a, '_, T>> {
        let data = T::unwrap_slice(self.data)?;
        Some(Strided { data, origin: self.origin, shape: &self.shape, strides: &self.strides })
    }
}

/// Whether `strides` lay `shape` out row-major with no gaps (axes of length 1 may have
/// any stride).
fn row_major_without_gaps(shape: &[usize], strides: &[isize]) -> bool {
    let mut expected = 1isize;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected = expected.wrapping_mul(n as isize);
    }
    true
}

/// Row-major element strides for `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![0isize; shape.len()];
    let mut acc = 1isize;
    for (s, &n) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(n.max(1) as isize);
    }
    strides
}

/// A [`TensorView`] with its element type resolved.
#[derive(Debug, Clone, Copy)]
pub struct Strided<'a, 'v, T> {
    data: &'a [T],
    origin: usize,
    shape: &'v [usize],
    strides: &'v [isize],
}

impl<'a, T: Element> Strided<'a, '_, T> {
    /// Offset (in elements, from `origin`) of the first element of row `row`,
    /// rows being the flattened leading axes.
    pub fn row_offset(&self, mut row: usize) -> isize {
        let lead = self.shape.len() - 1;
        let mut offset = 0isize;
        for d in (0..lead).rev() {
            let n = self.shape[d];
            offset += (row % n) as isize * self.strides[d];
            row /= n;
        }
        offset
    }

    /// How many elements past the start of its 64-byte cache line row `row` starts.
    pub fn line_offset(&self, row: usize) -> usize {
        let size = std::mem::size_of::<T>();
        let at = (self.origin as isize + self.row_offset(row)) as usize;
        (self.data.as_ptr() as usize / size + at) % (64 / size)
    }

    /// Stride of the last axis.
    pub fn col_stride(&self) -> isize {
        self.strides[self.shape.len() - 1]
    }

    /// `len` elements of a row starting at `row_offset + col*col_stride`, when the last
    /// axis is unit-stride (so they are one contiguous slice).
    #[inline]
    pub fn contiguous_run(&self, row_offset: isize, col: usize, len: usize) -> Option<&'a [T]> {
        let stride = self.col_stride();
        if stride != 1 && len > 1 {
            return None;
        }
        let start = (self.origin as isize + row_offset + col as isize * stride) as usize;
        Some(&self.data[start..start + len])
    }

    /// Up to `limit` elements that a row-by-row read takes next after the `len`-element
    /// run at `row_offset`, `col` (one [`Self::contiguous_run`]), and which follow it in
    /// memory: the rest of its row, then, when `rows_follow` (the rows lie end to end, as
    /// in a row-major view without gaps), the rows after it. Empty unless the last axis
    /// has stride 1.
    #[inline]
    pub fn after_run(&self, row_offset: isize, col: usize, len: usize, limit: usize, rows_follow: bool) -> &'a [T] {
        let cols = self.shape[self.shape.len() - 1];
        if self.col_stride() != 1 || col + len > cols {
            return &[];
        }
        let end = (self.origin as isize + row_offset) as usize + col + len;
        let limit = if rows_follow { limit } else { limit.min(cols - col - len) };
        &self.data[end.min(self.data.len())..(end + limit).min(self.data.len())]
    }

    /// Whether the rows lie end to end in memory: the last axis has stride 1 and each row
    /// starts where the previous one ends (a row-major view without gaps).
    pub fn rows_follow(&self) -> bool {
        row_major_without_gaps(self.shape, self.strides)
    }

    /// `len` elements of a row starting at `row_offset + col*col_stride`, as float32, into
    /// `out` (replacing its contents): one slice widened (eight values per vector with
    /// `cpu`) when the last axis has stride ±1, else one element at a time.
    #[inline]
    pub fn read_run(&self, row_offset: isize, col: usize, len: usize, out: &mut Vec<f32>, cpu: Option<super::simd::Avx2>) {
        out.clear();
        let stride = self.col_stride();
        if (stride == 1 || stride == -1) && len > 0 {
            // The run is one slice, read forwards or backwards.
            let first = self.origin as isize + row_offset + col as isize * stride;
            let start = if stride == 1 { first } else { first + 1 - len as isize } as usize;
            let src = &self.data[start..start + len];
            #[cfg(target_arch = "x86_64")]
            if let Some(cpu) = cpu {
                out.resize(len, 0.0);
                cpu.widen(src, out, stride == -1);
                return;
            }
            let _ = cpu;
            if stride == 1 {
                out.extend(src.iter().map(|x| x.to_f32()));
            } else {
                out.extend(src.iter().rev().map(|x| x.to_f32()));
            }
        } else {
            out.extend((0..len).map(|k| self.get(row_offset, col + k)));
        }
    }

    /// Where each of `rows` starts in the data (for [`Self::gather`]).
    pub fn row_starts(&self, rows: std::ops::Range<usize>) -> Vec<isize> {
        rows.map(|r| self.origin as isize + self.row_offset(r)).collect()
    }

    /// The rows starting at `offsets` (from [`Self::row_starts`]), columns `cols` of each,
    /// as float32 into `out` (row-major with `cols.len()` values per row; resized to fit and
    /// overwritten), for views whose last axis is not unit-stride (a transposed weight).
    /// Column by column: when consecutive rows are adjacent in memory (stride 1 on the row
    /// axis) each column's values are one short slice, so every cache line read is used
    /// whole instead of once per row.
    #[inline(always)]
    pub fn gather(&self, offsets: &[isize], cols: std::ops::Range<usize>, out: &mut Vec<f32>, cpu: Option<super::simd::Avx2>) {
        let rows = offsets.len();
        let width = cols.len();
        // Every value is overwritten below, so a reused buffer is not cleared first.
        out.resize(rows * width, 0.0);
        let stride = self.col_stride();
        let adjacent = offsets.windows(2).all(|w| w[1] == w[0] + 1);
        let mut c = 0;
        #[cfg(target_arch = "x86_64")]
        if adjacent && stride > 0 {
            if let Some(cpu) = cpu {
                // Square blocks transposed in registers (16×16 on 512-bit vectors, else 8×8),
                // half precision widened as it is loaded: 2n vector loads and stores per n²
                // values instead of n² scalar ones.
                let data = self.data;
                let stride = stride as usize;
                let side = cpu.transpose_side();
                while c + side <= width {
                    let at = (offsets[0] + ((cols.start + c) * stride) as isize) as usize;
                    for r in (0..rows - rows % side).step_by(side) {
                        cpu.transpose(&data[at + r..], stride, &mut out[r * width + c..], width);
                    }
                    for r in rows - rows % side..rows {
                        for j in 0..side {
                            out[r * width + c + j] = data[at + j * stride + r].to_f32();
                        }
                    }
                    c += side;
                }
            }
        }
        if adjacent {
            for c in c..width {
                let start = (offsets[0] + (cols.start + c) as isize * stride) as usize;
                for (i, x) in self.data[start..start + rows].iter().enumerate() {
                    out[i * width + c] = x.to_f32();
                }
            }
            return;
        }
        // Rows apart in memory: each row is read along its own axis, which is where its
        // values lie closest (a reversed row is one slice read backwards).
        for (&o, dst) in offsets.iter().zip(out.chunks_exact_mut(width)) {
            let first = o + cols.start as isize * stride;
            if stride == -1 && width > 0 {
                let last = (first + 1 - width as isize) as usize;
                let src = &self.data[last..last + width];
                #[cfg(target_arch = "x86_64")]
                if let Some(cpu) = cpu {
                    cpu.widen(src, dst, true);
                    continue;
                }
                for (d, x) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = x.to_f32();
                }
            } else {
                for (k, d) in dst.iter_mut().enumerate() {
                    *d = self.data[(first + k as isize * stride) as usize].to_f32();
                }
            }
        }
    }

    /// The memory the view's elements fill exactly, when they fill one contiguous span:
    /// the view is a permutation of a dense block (transposed, reversed, axes reordered),
    /// every element once, in another order. Order-free passes (a range) read it in
    /// memory order.
    pub fn dense_span(&self) -> Option<&'a [T]> {
        let mut dims: Vec<(usize, usize)> =
            self.shape.iter().zip(self.strides).filter(|&(&n, _)| n != 1).map(|(&n, &s)| (s.unsigned_abs(), n)).collect();
        if dims.iter().any(|&(_, n)| n == 0) {
            return Some(&self.data[..0]);
        }
        dims.sort_unstable();
        let mut len = 1usize;
        for (stride, n) in dims {
            if stride != len {
                return None;
            }
            len = len.checked_mul(n)?;
        }
        // The lowest address: every reversed axis at its last index.
        let reversed = self.shape.iter().zip(self.strides).filter(|&(_, &s)| s < 0);
        let low = reversed.fold(self.origin as isize, |at, (&n, &s)| at + (n as isize - 1) * s);
        self.data.get(low as usize..low as usize + len)
    }

    /// Whether consecutive rows start one element apart (the rows axis has stride 1, as in
    /// a transposed weight), so a column's values for a run of rows are one short slice.
    pub fn rows_adjacent(&self) -> bool {
        let ndim = self.shape.len();
        ndim >= 2 && self.strides[ndim - 2] == 1
    }

    /// Ask the CPU to start loading what [`Self::gather`] of `offsets` × `cols` will read,
    /// a cache line at a time: only when the rows are adjacent (each column one short run;
    /// other layouts are left to the hardware). A hint: nothing is read here.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub fn prefetch_gather(&self, offsets: &[isize], cols: std::ops::Range<usize>, cpu: super::simd::Avx2) {
        let stride = self.col_stride();
        let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else { return };
        if stride <= 0 || last - first != offsets.len() as isize - 1 {
            return;
        }
        let line = 64 / std::mem::size_of::<T>();
        let base = self.data.as_ptr();
        for c in cols {
            let start = first + c as isize * stride;
            let end = last + c as isize * stride;
            let mut at = start;
            while at <= end {
                cpu.prefetch(base.wrapping_offset(at).cast());
                at += line as isize;
            }
        }
    }

    /// Element `col` of the row at `row_offset`, as float32.
    #[inline(always)]
    pub fn get(&self, row_offset: isize, col: usize) -> f32 {
        let at = self.origin as isize + row_offset + col as isize * self.col_stride();
        self.data[at as usize].to_f32()
    }

    /// Element at a full multi-index (the reference implementation's accessor).
    pub fn at(&self, index: &[usize]) -> f32 {
        let offset: isize = index.iter().zip(self.strides).map(|(&i, &s)| i as isize * s).sum();
        self.data[(self.origin as isize + offset) as usize].to_f32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The span a view fills: the whole buffer for a transpose, a reversal or a reversed
    /// transpose; none for a row slice, a step of 2 or a broadcast axis.
    #[test]
    fn dense_spans_are_found_only_for_permutations_of_a_block() {
        let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let span = |origin: usize, shape: Vec<usize>, strides: Vec<isize>| {
            let view = TensorView::new(ElemSlice::F32(&data), origin, shape, strides).unwrap();
            view.typed::<f32>().unwrap().dense_span().map(|s| (s.as_ptr() as usize - data.as_ptr() as usize) / 4..s.len())
        };
        assert_eq!(span(0, vec![4, 6], vec![1, 4]), Some(0..24)); // transposed
        assert_eq!(span(5, vec![4, 6], vec![6, -1]), Some(0..24)); // last axis reversed
        assert_eq!(span(23, vec![4, 6], vec![-1, -4]), Some(0..24)); // both, transposed
        assert_eq!(span(6, vec![3, 6], vec![6, 1]), Some(6..18)); // a block of whole rows
        assert_eq!(span(0, vec![4, 5], vec![6, 1]), None); // rows sliced
        assert_eq!(span(0, vec![4, 3], vec![6, 2]), None); // every other column
        assert_eq!(span(0, vec![4, 6], vec![0, 1]), None); // broadcast rows
    }

    /// What follows a run: the next rows too when they lie end to end, else only the rest
    /// of the run's row; never past the buffer, and nothing for a strided last axis.
    #[test]
    fn after_a_run_comes_the_rest_of_its_row_and_rows_that_follow() {
        let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let after = |shape: Vec<usize>, strides: Vec<isize>, row: usize, col: usize, len: usize, limit: usize| {
            let view = TensorView::new(ElemSlice::F32(&data), 0, shape, strides).unwrap();
            let typed = view.typed::<f32>().unwrap();
            let rows_follow = typed.rows_follow();
            let next = typed.after_run(typed.row_offset(row), col, len, limit, rows_follow);
            (rows_follow, next.first().copied(), next.len())
        };
        assert_eq!(after(vec![4, 6], vec![6, 1], 1, 2, 2, 5), (true, Some(10.0), 5)); // into row 2
        assert_eq!(after(vec![4, 6], vec![6, 1], 3, 2, 2, 5), (true, Some(22.0), 2)); // buffer's end
        assert_eq!(after(vec![4, 4], vec![6, 1], 1, 0, 2, 5), (false, Some(8.0), 2)); // rows sliced
        assert_eq!(after(vec![4, 6], vec![1, 4], 0, 0, 1, 5), (false, None, 0)); // transposed
    }
}
