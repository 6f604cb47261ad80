//! The quantization engine: pure Rust, no Python (docs/architecture.md). Its only
//! `unsafe` is the run-time choice of vector unit in `simd`.
//!
//! Input is a [`TensorView`] (a checked, possibly strided slice); output is a [`Quantized`].
//! An [`Engine`] says which kernel build runs and where result buffers come from;
//! [`quantize`] uses the default one. [`quantize_reference`] is the scalar oracle every
//! kernel build is tested against, bit for bit.

pub mod alloc;
mod engine;
pub mod gguf;
pub mod layout;
pub mod math;
pub mod pack;
mod quantized;
mod reference;
mod simd;
mod spec;
mod tasks;
mod view;

pub use alloc::{Allocator, BufferPool, Fresh};
pub use engine::{output_sizes, quantize, quantize_into, Engine, OutBuffers};
pub use layout::{split_at_cuts, Layout};
pub use quantized::{Quantized, Scales, Stats, StatsAcc};
pub use reference::{quantize_reference, read_row_major};
pub use simd::Kernel;
pub use spec::{Granularity, QuantSpec, ScaleDType};
pub use view::{checked_numel, contiguous_strides, reachable_offsets, DType, ElemSlice, Element, Strided, TensorView};
