//! quantbridge: zero-copy int8/int4/int2 quantization of tensors from any framework.
//!
//! [`quant`] is the engine (pure Rust). The Python extension module `quantbridge._native`
//! lives in `bridge`, the only place that touches foreign memory.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod bridge;
#[doc(hidden)]
pub use bridge::native_module;
#[doc(hidden)]
pub use bridge::borrowed::{check_layout, RawTensor};
pub mod arrow_table;
pub mod buffer_pool;
pub mod error;
pub mod files;
pub mod quant;

pub use error::{Error, Result};
