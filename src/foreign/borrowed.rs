//! The one borrowed-pointer abstraction every entry point goes through.
//!
//! A [`BorrowedTensor`] pairs an *owner* (whatever keeps foreign memory alive and releases
//! it on drop: a consumed DLPack capsule, an imported Arrow array, or the legacy path's
//! owned copy) with a *layout* checked once at construction. The engine only ever sees [`TensorView`]s
//! borrowed from the guard, so a view outliving its memory does not compile, and the
//! owner's release runs exactly once, when the guard drops, after all reads.

use std::ptr::NonNull;

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::quant::{checked_numel, contiguous_strides, reachable_offsets, DType, ElemSlice, TensorView};

/// Keeps borrowed memory alive; dropping it releases the memory (exactly once).
pub trait Owner {
    /// What produced the memory, for messages and metrics ("dlpack", "arrow", …).
    fn kind(&self) -> &'static str;
}

/// A producer's description of a tensor, untrusted until [`CheckedLayout::check`] passes.
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'d> {
    /// Address of element `[0, …, 0]` (any byte offset already applied).
    pub data: *const u8,
    /// Element type.
    pub dtype: DType,
    /// Extent of each axis, as the producer wrote it.
    pub shape: &'d [i64],
    /// Element strides, or `None` for row-major contiguous.
    pub strides: Option<&'d [i64]>,
    /// The producer's buffer as `(start address, byte length)`, when it is known (Arrow),
    /// so every reachable element can be checked to lie inside it.
    pub buffer: Option<(usize, usize)>,
}

/// A layout whose every reachable element has been checked to be addressable.
#[derive(Debug, Clone)]
struct CheckedLayout {
    dtype: DType,
    /// Lowest reachable address (aligned, non-null; dangling when the tensor is empty).
    base: NonNull<u8>,
    /// Elements from `base` to the highest reachable one, inclusive.
    span: usize,
    /// Index (from `base`) of element `[0, …, 0]`.
    origin: usize,
    shape: Vec<usize>,
    strides: Vec<isize>,
    /// Address of element `[0, …, 0]`, for zero-copy checks.
    data_addr: usize,
}

fn corrupt(found: String) -> Error {
    Error::validation(
        found,
        "a shape, strides and data pointer that describe addressable memory",
        "the producer handed over a corrupt tensor description; make a fresh one (e.g. x.contiguous() or numpy.ascontiguousarray(x))",
    )
}

impl CheckedLayout {
    fn check(raw: &RawTensor<'_>) -> Result<Self> {
        if raw.shape.is_empty() {
            return Err(Error::validation(
                "a 0-d tensor (a scalar)",
                "a tensor with at least one dimension",
                "reshape it to (1,) first, e.g. x.reshape(1)",
            ));
        }
        let mut shape = Vec::with_capacity(raw.shape.len());
        for &d in raw.shape {
            shape.push(usize::try_from(d).map_err(|_| corrupt(format!("a negative extent in shape {:?}", raw.shape)))?);
        }
        let numel = checked_numel(&shape)?;
        let itemsize = raw.dtype.itemsize();
        numel
            .checked_mul(itemsize)
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(|| corrupt(format!("shape {:?} whose byte size overflows", raw.shape)))?;
        let strides: Vec<isize> = match raw.strides {
            None => contiguous_strides(&shape),
            Some(s) if s.len() != shape.len() => {
                return Err(corrupt(format!("{} strides for {} dimensions", s.len(), shape.len())))
            }
            Some(s) => s
                .iter()
                .map(|&v| isize::try_from(v).map_err(|_| corrupt(format!("stride {v} out of range"))))
                .collect::<Result<_>>()?,
        };
        let data_addr = raw.data as usize;
        let Some((lo, hi)) = reachable_offsets(&shape, &strides) else {
            // Empty: nothing is read, so no pointer requirement applies.
            return Ok(CheckedLayout {
                dtype: raw.dtype,
                base: NonNull::<f64>::dangling().cast(),
                span: 0,
                origin: 0,
                shape,
                strides,
                data_addr,
            });
        };
        if raw.data.is_null() {
            return Err(corrupt(format!("a null data pointer for {numel} elements")));
        }
        if !data_addr.is_multiple_of(itemsize) {
            return Err(Error::validation(
                format!("a data pointer {data_addr:#x} not aligned to {itemsize} bytes for {}", raw.dtype.name()),
                format!("{itemsize}-byte aligned {} elements", raw.dtype.name()),
                "make an aligned copy first (numpy.ascontiguousarray(x) or x.clone())",
            ));
        }
        let size = itemsize as i128;
        let first = data_addr as i128 + lo * size;
        let end = data_addr as i128 + (hi + 1) * size;
        let span_bytes = end - first;
        if first <= 0 || end > usize::MAX as i128 || span_bytes > isize::MAX as i128 {
            return Err(corrupt(format!(
                "strides {:?} that reach outside the address space from {data_addr:#x}",
                raw.strides
            )));
        }
        if let Some((start, len)) = raw.buffer {
            if first < start as i128 || end > start as i128 + len as i128 {
                return Err(corrupt(format!(
                    "a view reaching bytes {}..{} of a {len}-byte buffer",
                    first - start as i128,
                    end - start as i128
                )));
            }
        }
        Ok(CheckedLayout {
            dtype: raw.dtype,
            base: NonNull::new(first as usize as *mut u8).expect("first > 0 was checked"),
            span: (span_bytes / size) as usize,
            origin: (-lo) as usize,
            shape,
            strides,
            data_addr,
        })
    }
}

/// Check a producer's description without borrowing anything (the validation every
/// import runs first; the `layout` fuzz target drives it). Never dereferences `raw.data`.
pub fn check_layout(raw: &RawTensor<'_>) -> Result<()> {
    CheckedLayout::check(raw).map(drop)
}

/// Borrowed tensor memory plus the owner that keeps it alive. See the module docs.
pub struct BorrowedTensor {
    layout: CheckedLayout,
    // Declared last so it drops last: nothing that points into the memory outlives it.
    owner: Box<dyn Owner>,
}

impl BorrowedTensor {
    /// Check `raw` and take `owner` as the keeper of its memory.
    ///
    /// On error the owner is dropped here, so its release still runs exactly once.
    ///
    /// # Safety
    ///
    /// Until `owner` is dropped, every element `raw` can reach must be initialized memory
    /// of `raw.dtype` that nobody writes to, and the whole address range between the
    /// lowest and highest reachable element must belong to one allocation (true of every
    /// strided view a DLPack or Arrow producer can describe).
    pub unsafe fn new(raw: &RawTensor<'_>, owner: Box<dyn Owner>) -> Result<Self> {
        let layout = CheckedLayout::check(raw)?;
        Ok(BorrowedTensor { layout, owner })
    }

    /// A view of the memory; it cannot outlive the guard.
    pub fn view(&self) -> TensorView<'_> {
        let l = &self.layout;
        let ptr = l.base.as_ptr();
        // SAFETY: `check` proved `ptr` non-null, aligned for `dtype` (the data pointer is
        // aligned and every element offset is a multiple of the itemsize) and that `span`
        // elements from it stay inside the address space; `new`'s contract makes them one
        // initialized, unwritten allocation for as long as `self.owner` lives, and the
        // returned slice borrows `self`. An empty tensor gets a dangling pointer with span 0.
        let data = unsafe {
            match l.dtype {
                DType::F32 => ElemSlice::F32(std::slice::from_raw_parts(ptr.cast::<f32>(), l.span)),
                DType::F16 => ElemSlice::F16(std::slice::from_raw_parts(ptr.cast::<f16>(), l.span)),
                DType::BF16 => ElemSlice::BF16(std::slice::from_raw_parts(ptr.cast::<bf16>(), l.span)),
                DType::F64 => ElemSlice::F64(std::slice::from_raw_parts(ptr.cast::<f64>(), l.span)),
            }
        };
        TensorView::new(data, l.origin, l.shape.clone(), l.strides.clone())
            .expect("the layout was checked when the guard was built")
    }

    /// Address of element `[0, …, 0]` in the producer's memory (zero-copy checks).
    pub fn data_addr(&self) -> usize {
        self.layout.data_addr
    }

    /// What produced the memory.
    pub fn kind(&self) -> &'static str {
        self.owner.kind()
    }

    /// Bytes of the tensor's elements (not of the span).
    pub fn nbytes(&self) -> usize {
        self.layout.shape.iter().product::<usize>() * self.layout.dtype.itemsize()
    }
}
