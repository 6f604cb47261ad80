//! DLPack producer: Rust-owned [`Storage`] as `dltensor_versioned` / `dltensor` capsules.
//!
//! Each capsule owns one heap block holding the managed struct, its shape and strides, and
//! an `Arc` of the storage. The deleter frees that block exactly once: either the consumer
//! calls it (after renaming the capsule to `used_*`), or the capsule destructor does when
//! nobody consumed it.

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dlpack_rs::ffi::{
    DLDataType, DLDataTypeCode, DLDevice, DLDeviceType, DLManagedTensor, DLManagedTensorVersioned, DLPackVersion,
    DLTensor, DLPACK_FLAG_BITMASK_IS_COPIED, DLPACK_FLAG_BITMASK_READ_ONLY,
};
use pyo3::ffi as pyffi;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

use crate::foreign::capsule_names::{DLTENSOR, DLTENSOR_VERSIONED};
use crate::foreign::storage::{ResultDType, Storage};
use crate::quant::contiguous_strides;

/// Exports whose deleter has not run yet (tests check it returns to its start value).
pub static LIVE_EXPORTS: AtomicUsize = AtomicUsize::new(0);

/// An export's heap block: the managed struct (`DLManagedTensorVersioned` or the legacy
/// `DLManagedTensor`) first, so a pointer to it is a pointer to the whole block.
#[repr(C)]
struct Exported<M> {
    managed: M,
    shape: Vec<i64>,
    strides: Vec<i64>,
    _storage: Arc<Storage>,
}

type ExportedVersioned = Exported<DLManagedTensorVersioned>;
type ExportedLegacy = Exported<DLManagedTensor>;

const _: () = assert!(std::mem::offset_of!(ExportedVersioned, managed) == 0);
const _: () = assert!(std::mem::offset_of!(ExportedLegacy, managed) == 0);

impl<M> Exported<M> {
    /// Leak a block for `managed`, pointing its tensor's shape and strides at the block's
    /// own vectors (`tensor` picks the `DLTensor` out of `M`).
    fn leak(managed: M, shape: &[i64], storage: Arc<Storage>, tensor: fn(&mut M) -> &mut DLTensor) -> NonNull<c_void> {
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let mut block = Box::new(Exported {
            managed,
            shape: shape.to_vec(),
            strides: contiguous_strides(&dims).into_iter().map(|s| s as i64).collect(),
            _storage: storage,
        });
        let (shape_ptr, strides_ptr) = (block.shape.as_mut_ptr(), block.strides.as_mut_ptr());
        let t = tensor(&mut block.managed);
        t.shape = shape_ptr;
        t.strides = strides_ptr;
        NonNull::new(Box::into_raw(block).cast()).expect("Box::into_raw is non-null")
    }
}

unsafe extern "C" fn delete_versioned(managed: *mut DLManagedTensorVersioned) {
    // SAFETY: `managed` is the first field of a Box<ExportedVersioned> leaked in `export`;
    // DLPack calls the deleter once, so the box is reclaimed once. Dropping it frees only
    // Rust memory (an Arc and two Vecs), which needs no interpreter.
    drop(unsafe { Box::from_raw(managed.cast::<ExportedVersioned>()) });
    LIVE_EXPORTS.fetch_sub(1, Ordering::SeqCst);
}

unsafe extern "C" fn delete_legacy(managed: *mut DLManagedTensor) {
    // SAFETY: as in `delete_versioned`, for a Box<ExportedLegacy>.
    drop(unsafe { Box::from_raw(managed.cast::<ExportedLegacy>()) });
    LIVE_EXPORTS.fetch_sub(1, Ordering::SeqCst);
}

/// Runs when a capsule is garbage collected: frees the tensor unless a consumer took it.
unsafe extern "C" fn capsule_destructor(capsule: *mut pyffi::PyObject) {
    // SAFETY: CPython calls this with the dying capsule. PyCapsule_IsValid sets no error;
    // a capsule still carrying its original name was never consumed, so the tensor (and
    // its deleter) is still ours to call, once.
    unsafe {
        if pyffi::PyCapsule_IsValid(capsule, DLTENSOR_VERSIONED.as_ptr()) == 1 {
            let m = pyffi::PyCapsule_GetPointer(capsule, DLTENSOR_VERSIONED.as_ptr()).cast::<DLManagedTensorVersioned>();
            if let Some(deleter) = (*m).deleter {
                deleter(m);
            }
        } else if pyffi::PyCapsule_IsValid(capsule, DLTENSOR.as_ptr()) == 1 {
            let m = pyffi::PyCapsule_GetPointer(capsule, DLTENSOR.as_ptr()).cast::<DLManagedTensor>();
            if let Some(deleter) = (*m).deleter {
                deleter(m);
            }
        }
    }
}

fn dl_dtype(dtype: ResultDType) -> DLDataType {
    let (code, bits) = match dtype {
        ResultDType::U8 => (DLDataTypeCode::kDLUInt, 8),
        ResultDType::I8 => (DLDataTypeCode::kDLInt, 8),
        ResultDType::F32 => (DLDataTypeCode::kDLFloat, 32),
        ResultDType::F16 => (DLDataTypeCode::kDLFloat, 16),
        ResultDType::BF16 => (DLDataTypeCode::kDLBfloat, 16),
        ResultDType::I32 => (DLDataTypeCode::kDLInt, 32),
        ResultDType::U32 => (DLDataTypeCode::kDLUInt, 32),
        ResultDType::I64 => (DLDataTypeCode::kDLInt, 64),
    };
    DLDataType { code: code as u8, bits, lanes: 1 }
}

/// Export `storage` (row-major, `shape`, `dtype`) as a DLPack capsule: versioned and
/// flagged read-only when `versioned`, else a legacy `dltensor`.
pub fn export<'py>(
    py: Python<'py>,
    storage: Arc<Storage>,
    shape: &[i64],
    dtype: ResultDType,
    versioned: bool,
    copied: bool,
) -> PyResult<Bound<'py, PyCapsule>> {
    let data = storage.bytes().as_ptr() as *mut c_void;
    let dl_tensor = DLTensor {
        data,
        device: DLDevice { device_type: DLDeviceType::kDLCPU, device_id: 0 },
        ndim: shape.len() as i32,
        dtype: dl_dtype(dtype),
        shape: std::ptr::null_mut(),
        strides: std::ptr::null_mut(),
        byte_offset: 0,
    };
    let (ptr, name) = if versioned {
        let managed = DLManagedTensorVersioned {
            version: DLPackVersion { major: 1, minor: 0 },
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(delete_versioned),
            flags: DLPACK_FLAG_BITMASK_READ_ONLY | if copied { DLPACK_FLAG_BITMASK_IS_COPIED } else { 0 },
            dl_tensor,
        };
        (Exported::leak(managed, shape, storage, |m| &mut m.dl_tensor), DLTENSOR_VERSIONED)
    } else {
        let managed = DLManagedTensor { dl_tensor, manager_ctx: std::ptr::null_mut(), deleter: Some(delete_legacy) };
        (Exported::leak(managed, shape, storage, |m| &mut m.dl_tensor), DLTENSOR)
    };
    LIVE_EXPORTS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: `ptr` is a leaked export block whose managed struct (first field) is what the
    // name promises; `capsule_destructor` frees it if nobody consumes the capsule.
    let capsule = unsafe { PyCapsule::new_with_pointer_and_destructor(py, ptr, name, Some(capsule_destructor)) };
    if capsule.is_err() {
        // The capsule does not exist, so nothing else will free the block.
        // SAFETY: `ptr` is the managed struct at the start of the block leaked above.
        unsafe {
            if versioned {
                delete_versioned(ptr.as_ptr().cast());
            } else {
                delete_legacy(ptr.as_ptr().cast());
            }
        }
    }
    capsule
}
