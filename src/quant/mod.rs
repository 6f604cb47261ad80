//! The quantization engine: pure Rust, no Python; its only `unsafe` is the run-time
//! choice of vector unit in `simd`.
//!
//! Input is a [`TensorView`] (a checked, possibly strided slice); output is a [`Quantized`].
//! [`quantize`] is the fast parallel path and [`quantize_reference`] the scalar one it is
//! tested against.

mod engine;
pub mod layout;
pub mod math;
pub mod pack;
mod quantized;
mod reference;
mod simd;
#[doc(hidden)]
pub use simd::allow_vector_units;
mod spec;
mod view;

pub use engine::{output_sizes, quantize, quantize_into, OutBuffers};
pub use layout::Layout;
pub use quantized::{Quantized, Scales, Stats, StatsAcc};
pub use reference::{quantize_reference, read_row_major};
pub use spec::{Granularity, QuantSpec, ScaleDtype};
pub use view::{checked_numel, contiguous_strides, reachable_offsets, DType, ElemSlice, Element, Strided, TensorView};
