//! Rust-owned memory that results export without copying, and the pool it comes from.

use std::ops::Deref;
use std::sync::Arc;

use crate::quant::alloc::DEFAULT_LIMIT_BYTES;
use crate::quant::{BufferPool, Quantized, Scales};

/// Where the results handed to Python come from, and where they go back to when the last
/// Python object (or export) holding them is freed: the next result of a close size
/// reuses them instead of faulting in fresh pages. `configure_buffer_pool` sets its cap.
pub static RESULT_POOL: BufferPool = BufferPool::new(DEFAULT_LIMIT_BYTES);

/// A quantization result shared by a `QuantizedTensor` and its exports; its vectors go
/// back to [`RESULT_POOL`] when the last holder drops.
#[derive(Debug)]
pub struct SharedResult(Option<Quantized>);

impl SharedResult {
    /// Share `q`.
    pub fn new(q: Quantized) -> Arc<Self> {
        Arc::new(SharedResult(Some(q)))
    }
}

impl Deref for SharedResult {
    type Target = Quantized;
    fn deref(&self) -> &Quantized {
        self.0.as_ref().expect("taken only in Drop")
    }
}

impl Drop for SharedResult {
    fn drop(&mut self) {
        if let Some(q) = self.0.take() {
            q.recycle(&RESULT_POOL);
        }
    }
}

/// Which buffer of a [`Quantized`] a tensor exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The code stream.
    Codes,
    /// The scales.
    Scales,
    /// The zero points.
    ZeroPoints,
}

/// The element type of an exported tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultDType {
    /// uint8 (codes, zero points).
    U8,
    /// int8 (unpacked symmetric codes).
    I8,
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16.
    BF16,
    /// int32 (compressed-tensors' packed words).
    I32,
    /// uint32 (MLX's packed words).
    U32,
    /// int64 (compressed-tensors' `weight_shape`).
    I64,
}

impl ResultDType {
    /// The numpy/torch name.
    pub fn name(self) -> &'static str {
        match self {
            ResultDType::U8 => "uint8",
            ResultDType::I8 => "int8",
            ResultDType::F32 => "float32",
            ResultDType::F16 => "float16",
            ResultDType::BF16 => "bfloat16",
            ResultDType::I32 => "int32",
            ResultDType::U32 => "uint32",
            ResultDType::I64 => "int64",
        }
    }

    /// Bytes per element.
    pub fn itemsize(self) -> usize {
        match self {
            ResultDType::U8 | ResultDType::I8 => 1,
            ResultDType::F16 | ResultDType::BF16 => 2,
            ResultDType::F32 | ResultDType::I32 | ResultDType::U32 => 4,
            ResultDType::I64 => 8,
        }
    }
}

/// Memory owned by Rust and shared by every export of it.
#[derive(Debug)]
pub enum Storage {
    /// One buffer of a quantization result (shared, never copied).
    Part(Arc<SharedResult>, Part),
    /// Float32 values (dequantized output).
    F32(Vec<f32>),
    /// A private copy made for `__dlpack__(copy=True)`; 8-byte aligned.
    Copy(Vec<u64>, usize),
}

/// Dequantized values go back to the pool for the next result of their size.
impl Drop for Storage {
    fn drop(&mut self) {
        if let Storage::F32(values) = self {
            crate::quant::Allocator::recycle_floats(&RESULT_POOL, std::mem::take(values));
        }
    }
}

impl Storage {
    /// The bytes, read-only.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Part(q, Part::Codes) => &q.codes,
            Storage::Part(q, Part::Scales) => match &q.scales {
                Scales::F32(v) => bytemuck::cast_slice(v),
                Scales::F16(v) => bytemuck::cast_slice(v),
                Scales::BF16(v) => bytemuck::cast_slice(v),
            },
            Storage::Part(q, Part::ZeroPoints) => q.zero_points.as_deref().unwrap_or(&[]),
            Storage::F32(v) => bytemuck::cast_slice(v),
            Storage::Copy(words, len) => &bytemuck::cast_slice(words)[..*len],
        }
    }

    /// An aligned private copy of these bytes.
    pub fn copied(&self) -> Storage {
        Storage::aligned_copy(self.bytes())
    }

    /// `bytes` copied into 8-byte-aligned storage.
    pub fn aligned_copy(bytes: &[u8]) -> Storage {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Storage::Copy(words, bytes.len())
    }
}

impl AsRef<[u8]> for Storage {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}
