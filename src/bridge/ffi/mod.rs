//! Foreign memory crossing the boundary: `from_python` imports, `to_python` exports.

pub mod from_python;
pub mod to_python;
