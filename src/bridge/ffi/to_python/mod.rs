//! Exporters: Rust-owned memory to Python protocols.

pub mod dlpack;
