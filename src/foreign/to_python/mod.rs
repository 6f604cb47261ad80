//! Exporters: Rust-owned memory to Python protocols.

pub mod dlpack;
pub mod arrow;
