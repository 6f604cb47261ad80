//! Every PyCapsule name quantbridge reads or writes, in one place.

use std::ffi::CStr;

/// A fresh DLPack >= 1.0 capsule (`DLManagedTensorVersioned`).
pub const DLTENSOR_VERSIONED: &CStr = c"dltensor_versioned";
/// A consumed DLPack >= 1.0 capsule.
pub const USED_DLTENSOR_VERSIONED: &CStr = c"used_dltensor_versioned";
/// A fresh legacy DLPack capsule (`DLManagedTensor`).
pub const DLTENSOR: &CStr = c"dltensor";
/// A consumed legacy DLPack capsule.
pub const USED_DLTENSOR: &CStr = c"used_dltensor";
/// An Arrow C Data Interface schema (`ArrowSchema`).
pub const ARROW_SCHEMA: &CStr = c"arrow_schema";
/// An Arrow C Data Interface array (`ArrowArray`).
pub const ARROW_ARRAY: &CStr = c"arrow_array";
/// An Arrow C Stream Interface stream (`ArrowArrayStream`).
pub const ARROW_ARRAY_STREAM: &CStr = c"arrow_array_stream";
