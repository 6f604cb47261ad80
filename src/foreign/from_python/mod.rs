//! Importers: each turns a Python producer into a [`crate::foreign::borrowed::BorrowedTensor`]
//! (or, for tables, one per row).

pub mod arrow;
pub mod arrow_table;
pub mod arrow_tensor;
pub mod dlpack;
pub mod legacy;
