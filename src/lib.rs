//! quantbridge: zero-copy int8/int4/int2 quantization of tensors from any framework.
//!
//! The folders say what touches what (docs/architecture.md):
//! * pure Rust, usable without Python: [`quant`] (the engine, with ggml's block types in
//!   [`quant::gguf`]), [`tables`] (the Arrow table
//!   layout), [`serving`] (the layouts inference engines load), [`files`] (checkpoints in
//!   and out), [`error`];
//! * foreign memory: [`foreign`], the one borrowed-pointer guard and the DLPack / Arrow
//!   importers and exporters (every `unsafe` block outside the SIMD kernels is here or in
//!   `files::mmap`);
//! * the Python surface: `python_api`, the `quantbridge._native` extension module.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod error;
pub mod files;
pub mod foreign;
mod python_api;
pub mod quant;
pub mod serving;
pub mod tables;

pub use error::{Error, Result};
#[doc(hidden)]
pub use python_api::native_module;
