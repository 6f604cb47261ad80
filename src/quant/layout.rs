//! Rows, columns, groups, and how the flat element stream is cut into parallel chunks.

use super::spec::Granularity;

/// Elements per parallel chunk (about 256 KiB of float32). A function of the tensor only,
/// never of the thread count, so results and stats are the same on any machine.
pub const CHUNK_ELEMENTS: usize = 1 << 16;

/// How a `rows × cols` tensor is divided into groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Product of all axes but the last (1 for 1-D).
    pub rows: usize,
    /// Length of the last axis.
    pub cols: usize,
    /// Elements per group inside a row (the last group of a row may be shorter);
    /// `cols` for per-channel and per-tensor.
    pub group_len: usize,
    /// Groups per row (0 when `cols == 0`).
    pub groups_per_row: usize,
    /// One group (one scale) for the whole tensor.
    pub per_tensor: bool,
}

impl Layout {
    /// The layout of a `rows × cols` tensor under `granularity` (validated: `Group(g)` has g > 0).
    pub fn new(rows: usize, cols: usize, granularity: Granularity) -> Self {
        let (group_len, per_tensor) = match granularity {
            Granularity::Tensor => (cols, true),
            Granularity::Channel => (cols, false),
            Granularity::Group(g) => (g.min(cols), false),
        };
        let groups_per_row = if cols == 0 { 0 } else { cols.div_ceil(group_len) };
        Layout { rows, cols, group_len, groups_per_row, per_tensor }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    /// Shape of the scales (and zero points): `(rows, groups_per_row)`, or `(1,)` per-tensor.
    pub fn scales_shape(&self) -> Vec<usize> {
        if self.per_tensor {
            vec![1]
        } else {
            vec![self.rows, self.groups_per_row]
        }
    }

    /// Number of scales.
    pub fn num_groups(&self) -> usize {
        self.scales_shape().iter().product()
    }

    /// Scale index of the group that flat element `e` belongs to.
    #[inline]
    pub fn group_of(&self, e: usize) -> usize {
        if self.per_tensor {
            0
        } else {
            (e / self.cols) * self.groups_per_row + (e % self.cols) / self.group_len
        }
    }

    /// Flat starts of the parallel chunks, ending with `numel()`.
    ///
    /// Every start is a multiple of 8 elements (so it falls on a byte boundary of the packed
    /// stream for 2, 4 and 8 bits) and, unless per-tensor, the start of a group (so a chunk
    /// owns whole groups and their scales).
    pub fn chunk_bounds(&self) -> Vec<usize> {
        self.chunk_bounds_of(CHUNK_ELEMENTS)
    }

    /// [`Self::chunk_bounds`] with chunks of at least `size` elements (where the input can
    /// provide them): larger chunks let strided views be gathered in taller tiles.
    pub fn chunk_bounds_of(&self, size: usize) -> Vec<usize> {
        let size = size.max(1);
        let n = self.numel();
        let mut bounds = vec![0];
        let mut target = size;
        while target < n {
            let start = self.aligned_start_at_or_after(target);
            if start >= n {
                break;
            }
            bounds.push(start);
            target = start + size;
        }
        bounds.push(n);
        bounds
    }

    /// The first chunk-start candidate at or after flat index `t` (or `numel()`).
    fn aligned_start_at_or_after(&self, t: usize) -> usize {
        if self.per_tensor {
            return t.next_multiple_of(8).min(self.numel());
        }
        // Group starts are r*cols + j*group_len. Their residues mod 8 repeat every 8 rows
        // and every 8 groups, and row starts r*cols with r a multiple of 8 are always
        // aligned, so looking 8 rows and 8 groups ahead always finds one if any exists.
        let first_row = t / self.cols;
        for r in first_row..=first_row + 8 {
            if r >= self.rows {
                break;
            }
            let row_start = r * self.cols;
            let j0 = if r == first_row { (t - row_start).div_ceil(self.group_len) } else { 0 };
            for j in j0..(j0 + 8).min(self.groups_per_row) {
                let e = row_start + j * self.group_len;
                if e.is_multiple_of(8) {
                    return e;
                }
            }
        }
        self.numel()
    }
}

/// Split `data` into consecutive pieces at the given ascending `cuts` (relative positions).
pub fn split_at_cuts<'d, T>(mut data: &'d mut [T], cuts: &[usize]) -> Vec<&'d mut [T]> {
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut consumed = 0;
    for &cut in cuts {
        let (head, tail) = std::mem::take(&mut data).split_at_mut(cut - consumed);
        pieces.push(head);
        data = tail;
        consumed = cut;
    }
    pieces.push(data);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_starts_are_aligned_group_starts() {
        for (rows, cols, g) in [(1000, 333, 128), (3, 100_001, 7), (70_000, 3, 2), (1, 1 << 20, 128)] {
            let lay = Layout::new(rows, cols, Granularity::Group(g));
            let b = lay.chunk_bounds();
            assert_eq!(*b.last().unwrap(), lay.numel());
            assert!(b.windows(2).all(|w| w[0] < w[1]));
            for &e in &b[..b.len() - 1] {
                assert_eq!(e % 8, 0);
                assert_eq!((e % cols) % g.min(cols), 0, "{e} not a group start");
            }
            if lay.numel() > 4 * CHUNK_ELEMENTS {
                assert!(b.len() > 3, "large tensors are split: {rows}x{cols}");
            }
        }
    }

    #[test]
    fn split_at_cuts_covers_everything() {
        let mut v: Vec<u32> = (0..10).collect();
        let parts = split_at_cuts(&mut v, &[2, 2, 7]);
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        assert_eq!(lens, vec![2, 0, 5, 3]);
    }
}
