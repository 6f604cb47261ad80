//! Importers: each turns a Python producer into a [`crate::bridge::borrowed::BorrowedTensor`].

pub mod dlpack;
pub mod arrow;
pub mod legacy;
