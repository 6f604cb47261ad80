//! DLPack consumer: `__dlpack__` capsules to [`BorrowedTensor`]s.
//!
//! Protocol, in order: check `__dlpack_device__` (so a GPU tensor is refused before
//! anything is consumed), call `__dlpack__(max_version=(1, 0))` and fall back to the legacy
//! call on `TypeError`, accept `dltensor_versioned` or `dltensor`, refuse `used_*`, rename
//! the capsule to `used_*` (the producer's capsule destructor then leaves the tensor to
//! us), and hand the managed tensor to a [`DlpackOwner`] at once, so that every later
//! error path, a major-version mismatch included, calls the deleter exactly once.
//!
//! A plain CPU `torch.Tensor` is exported by torch's C function instead of its Python
//! methods (see [`torch_c_exporter`]); its capsule takes the same path from there.

use std::ffi::CStr;
use std::ptr::NonNull;

use dlpack_rs::ffi::{DLDataTypeCode, DLDeviceType, DLManagedTensor, DLManagedTensorVersioned, DLTensor};
use pyo3::exceptions::PyTypeError;
use pyo3::ffi as pyffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyType};

use crate::foreign::borrowed::{BorrowedTensor, Owner, RawTensor};
use crate::foreign::capsule_names::{DLTENSOR, DLTENSOR_VERSIONED, USED_DLTENSOR, USED_DLTENSOR_VERSIONED};
use crate::foreign::{BridgeError, BridgeResult};
use crate::quant::DType;

/// Most dimensions a producer may claim before we read its shape array.
const MAX_NDIM: i32 = 64;

/// A consumed managed tensor; dropping it calls the producer's deleter once.
enum Managed {
    Versioned(NonNull<DLManagedTensorVersioned>),
    Legacy(NonNull<DLManagedTensor>),
}

/// Owns a consumed DLPack tensor and a strong reference to its producer.
pub struct DlpackOwner {
    managed: Managed,
    // Held so the producer (and its memory) outlives every read, even if the caller drops it.
    _producer: Py<PyAny>,
    _capsule: Py<PyAny>,
    // A torch tensor's storage, held for the call: torch's export shares the tensor object,
    // so another thread's `tensor.set_(...)` would otherwise free the memory being read.
    _torch_storage: Option<Py<PyAny>>,
}

impl Owner for DlpackOwner {
    fn kind(&self) -> &'static str {
        "dlpack"
    }
}

impl Drop for DlpackOwner {
    fn drop(&mut self) {
        // Deleters (torch's among them) may re-enter Python, so run them attached.
        Python::attach(|_py| match self.managed {
            Managed::Versioned(m) => {
                // SAFETY: `m` came from a capsule we renamed to `used_*`, so we are its only
                // owner; the deleter field is read from the producer's struct, which is alive
                // until the deleter itself runs; this Drop runs once, so the deleter does too.
                unsafe {
                    if let Some(deleter) = (*m.as_ptr()).deleter {
                        deleter(m.as_ptr());
                    }
                }
            }
            Managed::Legacy(m) => {
                // SAFETY: as for the versioned case above.
                unsafe {
                    if let Some(deleter) = (*m.as_ptr()).deleter {
                        deleter(m.as_ptr());
                    }
                }
            }
        });
    }
}

/// Devices whose memory the CPU can read.
fn readable_device(device_type: u32) -> bool {
    matches!(device_type, DLDeviceType::kDLCPU | DLDeviceType::kDLCUDAHost | DLDeviceType::kDLCUDAManaged)
}

fn device_name(device_type: u32) -> String {
    let name = match device_type {
        DLDeviceType::kDLCPU => "cpu",
        DLDeviceType::kDLCUDA => "cuda",
        DLDeviceType::kDLCUDAHost => "cuda_host",
        DLDeviceType::kDLOpenCL => "opencl",
        DLDeviceType::kDLVulkan => "vulkan",
        DLDeviceType::kDLMetal => "metal (mps)",
        DLDeviceType::kDLROCM => "rocm",
        DLDeviceType::kDLROCMHost => "rocm_host",
        DLDeviceType::kDLCUDAManaged => "cuda_managed",
        DLDeviceType::kDLOneAPI => "oneapi (xpu)",
        DLDeviceType::kDLTPU => "tpu",
        _ => "unknown",
    };
    format!("{name} (DLPack device type {device_type})")
}

fn device_error(device_type: u32) -> BridgeError {
    BridgeError::refused(format!("a tensor on device {}", device_name(device_type)),
        "a tensor in CPU memory (cpu, cuda_host or cuda_managed)",
        "move it to the CPU first, e.g. x.cpu() (torch) or jax.device_get(x)",
    )
}

/// The engine dtype of a DLPack dtype, or a message naming it.
fn engine_dtype(code: u8, bits: u8, lanes: u16) -> Result<DType, String> {
    let code32 = code as u32;
    let name = match code32 {
        DLDataTypeCode::kDLInt => format!("int{bits}"),
        DLDataTypeCode::kDLUInt => format!("uint{bits}"),
        DLDataTypeCode::kDLFloat => format!("float{bits}"),
        DLDataTypeCode::kDLBfloat => format!("bfloat{bits}"),
        DLDataTypeCode::kDLComplex => format!("complex{bits}"),
        DLDataTypeCode::kDLBool => "bool".to_string(),
        7..=14 => format!("float8 (DLPack code {code})"),
        15..=17 => format!("a sub-byte float (DLPack code {code})"),
        _ => format!("an unknown dtype (DLPack code {code}, {bits} bits)"),
    };
    if lanes != 1 {
        return Err(format!("{name} with {lanes} lanes"));
    }
    match (code32, bits) {
        (DLDataTypeCode::kDLFloat, 32) => Ok(DType::F32),
        (DLDataTypeCode::kDLFloat, 16) => Ok(DType::F16),
        (DLDataTypeCode::kDLFloat, 64) => Ok(DType::F64),
        (DLDataTypeCode::kDLBfloat, 16) => Ok(DType::BF16),
        _ => Err(name),
    }
}

/// Get a capsule from the producer, asking for a versioned one first.
fn call_dlpack<'py>(obj: &Bound<'py, PyAny>) -> BridgeResult<Bound<'py, PyAny>> {
    let py = obj.py();
    // The same `{"max_version": (1, 0)}` for every call (producers get their own **kwargs).
    static MAX_VERSION: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    let kwargs = MAX_VERSION
        .get_or_try_init(py, || {
            let d = PyDict::new(py);
            d.set_item("max_version", (1, 0))?;
            Ok::<_, PyErr>(d.unbind())
        })?
        .bind(py);
    let method = obj.getattr(intern!(py, "__dlpack__"))?;
    let result = match method.call((), Some(kwargs)) {
        Err(e) if e.is_instance_of::<PyTypeError>(py) => method.call0(),
        other => other,
    };
    result.map_err(|cause| BridgeError::ProducerRaised {
        method: "__dlpack__",
        fix: "export a plain CPU tensor (for torch: x.detach().cpu(); for numpy: a native-byte-order array)",
        cause,
    })
}

/// How many times a torch tensor that another thread re-points mid-import is exported again.
const REPOINT_RETRIES: u32 = 3;

/// Import `obj` through `__dlpack__`. The caller has checked that the attribute exists.
pub fn import_dlpack(obj: &Bound<'_, PyAny>) -> BridgeResult<BorrowedTensor> {
    import_attempt(obj, REPOINT_RETRIES)
}

/// [`import_dlpack`], exporting again at most `retries` times when a torch tensor's storage
/// changed between our look at the storage and its export.
fn import_attempt(obj: &Bound<'_, PyAny>, retries: u32) -> BridgeResult<BorrowedTensor> {
    let py = obj.py();
    let torch_exporter = torch_c_exporter(obj);
    if torch_exporter.is_none() {
        if let Ok(device) = obj.call_method0(intern!(py, "__dlpack_device__")) {
            if let Ok((device_type, _id)) = device.extract::<(u32, i32)>() {
                if !readable_device(device_type) {
                    return Err(device_error(device_type));
                }
            }
        }
    }
    // The storage is taken before the export: if another thread re-points the tensor
    // between the two, the export describes memory outside the storage held (refused and
    // retried below), never memory that nothing holds.
    let storage = torch_storage(obj);
    if storage.is_some() {
        refuse_negative_view(obj)?;
    }
    // A failed C export (a tensor without storage, a sparse one) goes through the public
    // protocol, whose refusal is the one to report.
    let exported = torch_exporter.and_then(|export| export.call1((obj,)).ok());
    let capsule = match exported.map_or_else(|| call_dlpack(obj), Ok) {
        // torch refuses to export a tensor that requires grad; `.detach()` shares its
        // memory without a copy, and quantizing `layer.weight` is the common case. The
        // attribute decides, not the message, and only after a refusal, so the usual
        // call pays for no attribute lookup.
        Err(refusal @ BridgeError::ProducerRaised { .. }) if requires_grad(obj) => {
            let detached = obj.call_method0(intern!(py, "detach"))?;
            if detached.is(obj) || requires_grad(&detached) {
                return Err(refusal);
            }
            return import_attempt(&detached, retries);
        }
        other => other?,
    };
    // SAFETY: `capsule` is a live object; PyCapsule_CheckExact only reads its type.
    if unsafe { pyffi::PyCapsule_CheckExact(capsule.as_ptr()) } == 0 {
        return Err(BridgeError::refused(format!("__dlpack__() returning a {} instead of a PyCapsule", capsule.get_type().name()?),
            "a PyCapsule named \"dltensor_versioned\" or \"dltensor\"",
            "fix the producer's __dlpack__, or pass a numpy array or torch tensor",
        ));
    }
    // SAFETY: `capsule` is a PyCapsule (checked above); the name pointer stays valid while
    // the capsule lives and is copied out at once.
    let name_ptr = unsafe { pyffi::PyCapsule_GetName(capsule.as_ptr()) };
    let name = if name_ptr.is_null() {
        PyErr::take(py);
        String::new()
    } else {
        // SAFETY: non-null capsule names are NUL-terminated C strings.
        unsafe { CStr::from_ptr(name_ptr) }.to_string_lossy().into_owned()
    };
    let (fresh, used, versioned) = match name.as_str() {
        "dltensor_versioned" => (DLTENSOR_VERSIONED, USED_DLTENSOR_VERSIONED, true),
        "dltensor" => (DLTENSOR, USED_DLTENSOR, false),
        "used_dltensor_versioned" | "used_dltensor" => {
            return Err(BridgeError::refused(format!("a capsule named {name:?}: it was already consumed"),
                "a fresh capsule",
                "call __dlpack__() again for a new capsule; a DLPack capsule can be consumed only once",
            ))
        }
        _ => {
            return Err(BridgeError::refused(format!("a capsule named {name:?}"),
                "a capsule named \"dltensor_versioned\" or \"dltensor\"",
                "fix the producer's __dlpack__, or pass a numpy array or torch tensor",
            ))
        }
    };
    // SAFETY: the name matches, so this returns the producer's managed-tensor pointer.
    let ptr = unsafe { pyffi::PyCapsule_GetPointer(capsule.as_ptr(), fresh.as_ptr()) };
    let Some(ptr) = NonNull::new(ptr) else {
        PyErr::take(py);
        return Err(BridgeError::refused(
            "a DLPack capsule holding a NULL pointer",
            "a capsule holding a managed tensor",
            "fix the producer's __dlpack__",
        ));
    };
    // SAFETY: `used` is a 'static C string, as PyCapsule_SetName requires. After this the
    // producer's capsule destructor no longer deletes the tensor: we own it.
    if unsafe { pyffi::PyCapsule_SetName(capsule.as_ptr(), used.as_ptr()) } != 0 {
        return Err(PyErr::fetch(py).into());
    }
    let buffer = storage.as_ref().map(|s| (s.start, s.nbytes));
    let owner = Box::new(DlpackOwner {
        managed: if versioned { Managed::Versioned(ptr.cast()) } else { Managed::Legacy(ptr.cast()) },
        _producer: obj.clone().unbind(),
        _capsule: capsule.unbind(),
        _torch_storage: storage.map(|s| s.object),
    });
    // From here on, returning drops `owner`, which calls the deleter exactly once.
    let tensor: &DLTensor = if versioned {
        let m = ptr.cast::<DLManagedTensorVersioned>();
        // SAFETY: a "dltensor_versioned" capsule holds a DLManagedTensorVersioned; the
        // version field sits first in every ABI version, so reading it is always allowed.
        let version = unsafe { (*m.as_ptr()).version };
        if version.major != 1 {
            return Err(BridgeError::refused(format!("DLPack version {}.{}", version.major, version.minor),
                "DLPack major version 1",
                "upgrade or downgrade the producer library so it speaks DLPack 1.x",
            ));
        }
        // SAFETY: major version 1 has this layout; the struct lives until the deleter runs,
        // which happens only when `owner` drops, after the last use of this reference.
        unsafe { &(*m.as_ptr()).dl_tensor }
    } else {
        // SAFETY: a "dltensor" capsule holds a DLManagedTensor, alive until its deleter runs.
        unsafe { &(*ptr.cast::<DLManagedTensor>().as_ptr()).dl_tensor }
    };
    let borrowed = borrow_dltensor(tensor, owner, buffer);
    if let (Err(_), Some((start, _))) = (&borrowed, buffer) {
        // torch's `__dlpack__` runs Python code, so another thread may `set_()` the tensor
        // between `untyped_storage()` and the export: the capsule then describes memory
        // outside the storage we hold, and is refused above (its deleter has run). A
        // storage that moved meanwhile says that is what happened: export again.
        if retries > 0 && torch_storage(obj).map(|s| s.start) != Some(start) {
            return import_attempt(obj, retries - 1);
        }
    }
    borrowed
}

/// A torch tensor's storage: the object that keeps its memory alive, and that memory.
struct TorchStorage {
    object: Py<PyAny>,
    start: usize,
    nbytes: usize,
}

/// The storage behind `obj` when it is a torch tensor, else `None`.
///
/// Holding it guards against another thread re-pointing the tensor with `set_()` while we
/// read (the old storage then stays alive until the call ends), and the storage's extent
/// bounds every element the capsule describes. It cannot guard against `resize_()`, which
/// reallocates the storage itself; docs/trust-model.md says so. Cost: an `isinstance` and
/// three attribute calls, about 0.2 µs, paid only for torch tensors.
fn torch_storage(obj: &Bound<'_, PyAny>) -> Option<TorchStorage> {
    let py = obj.py();
    if !obj.is_instance(torch_tensor_type(py)?).unwrap_or(false) {
        return None;
    }
    let storage = obj.call_method0(intern!(py, "untyped_storage")).ok()?;
    let start: usize = storage.call_method0(intern!(py, "data_ptr")).ok()?.extract().ok()?;
    let nbytes: usize = storage.call_method0(intern!(py, "nbytes")).ok()?.extract().ok()?;
    Some(TorchStorage { object: storage.unbind(), start, nbytes })
}

/// torch's documented C exporter, `torch.utils.dlpack.to_dlpack`, when `obj` is a plain
/// CPU `torch.Tensor`; `None` sends it through the public protocol.
///
/// `Tensor.__dlpack__` and `__dlpack_device__` are Python methods: 3.1 µs of a 5.5 µs
/// quantize() of a 16×16 tensor. What they do for a CPU tensor, the rest of the import does
/// too: the device is checked here (`is_cpu`) and again on the capsule, `requires_grad` is
/// no reason to refuse a read (the protocol path detaches), a complex dtype (the conjugate
/// bit) is refused by dtype, and the negative bit is refused for both paths. A subclass
/// that overrides the DLPack methods or `__torch_function__` (`nn.Parameter` does neither),
/// a tensor under a `__torch_function__` mode, and a torch without these functions keep
/// the public protocol. The capsule is validated exactly like a `__dlpack__` one.
fn torch_c_exporter<'py>(obj: &Bound<'py, PyAny>) -> Option<&'py Bound<'py, PyAny>> {
    struct TorchExport {
        to_dlpack: Py<PyAny>,
        has_torch_function_unary: Py<PyAny>,
    }
    static EXPORT: PyOnceLock<Option<TorchExport>> = PyOnceLock::new();
    let py = obj.py();
    let tensor_type = torch_tensor_type(py)?;
    let class = obj.get_type();
    let plain_class = class.is(tensor_type) || (obj.is_instance(tensor_type).ok()? && same_dlpack_methods(&class, tensor_type));
    if !plain_class {
        return None;
    }
    let export = EXPORT
        .get_or_init(py, || {
            let function = |module: &str, name: &str| py.import(module).and_then(|m| m.getattr(name)).ok();
            Some(TorchExport {
                to_dlpack: function("torch.utils.dlpack", "to_dlpack")?.unbind(),
                has_torch_function_unary: function("torch.overrides", "has_torch_function_unary")?.unbind(),
            })
        })
        .as_ref()?;
    let overridden = export.has_torch_function_unary.bind(py).call1((obj,)).and_then(|b| b.is_truthy());
    let on_cpu = obj.getattr(intern!(py, "is_cpu")).and_then(|b| b.is_truthy());
    (matches!(overridden, Ok(false)) && matches!(on_cpu, Ok(true))).then(|| export.to_dlpack.bind(py))
}

/// Whether `class` inherits `torch.Tensor`'s DLPack methods unchanged (`nn.Parameter` does).
fn same_dlpack_methods(class: &Bound<'_, PyType>, tensor_type: &Bound<'_, PyType>) -> bool {
    let py = class.py();
    [intern!(py, "__dlpack__"), intern!(py, "__dlpack_device__")].into_iter().all(|name| {
        match (class.getattr(name), tensor_type.getattr(name)) {
            (Ok(ours), Ok(torchs)) => ours.is(&torchs),
            _ => false,
        }
    })
}

/// Refuse a torch view with the negative bit set (`z.conj().imag`): torch's DLPack export
/// drops the bit, so the values read would have the wrong sign. torch's own `.numpy()`
/// refuses it the same way.
fn refuse_negative_view(obj: &Bound<'_, PyAny>) -> BridgeResult<()> {
    let py = obj.py();
    let negative = obj.call_method0(intern!(py, "is_neg")).and_then(|b| b.is_truthy()).unwrap_or(false);
    if negative {
        return Err(BridgeError::refused("a torch tensor with the negative bit set (a lazy negation, e.g. z.conj().imag)",
            "a tensor whose memory holds its values",
            "call x.resolve_neg() first: DLPack cannot carry the bit, so the values would be read with the wrong sign",
        ));
    }
    Ok(())
}

/// `torch.Tensor`, once torch has been imported by someone; never imports it ourselves.
fn torch_tensor_type(py: Python<'_>) -> Option<&Bound<'_, PyType>> {
    static TENSOR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    loaded_type(py, &TENSOR, intern!(py, "torch"), intern!(py, "Tensor"))
}

/// `module.name` once `module` is in `sys.modules` (cached in `cell` from then on); never
/// imports it ourselves, so a caller without torch pays one dict lookup, not an import.
pub(crate) fn loaded_type<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    module: &Bound<'py, PyString>,
    name: &Bound<'py, PyString>,
) -> Option<&'py Bound<'py, PyType>> {
    static MODULES: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    if let Some(t) = cell.get(py) {
        return Some(t.bind(py));
    }
    let modules = MODULES
        .get_or_try_init(py, || {
            let modules = py.import(intern!(py, "sys"))?.getattr(intern!(py, "modules"))?;
            Ok::<_, PyErr>(modules.cast_into::<PyDict>()?.unbind())
        })
        .ok()?
        .bind(py);
    let loaded = modules.get_item(module).ok()??;
    let class = loaded.getattr(name).ok()?.cast_into::<PyType>().ok()?;
    Some(cell.get_or_init(py, || class.unbind()).bind(py))
}

/// Validate a producer's `DLTensor` and wrap it in the guard; `buffer` is the producer's
/// allocation when it is known.
fn borrow_dltensor(
    t: &DLTensor,
    owner: Box<DlpackOwner>,
    buffer: Option<(usize, usize)>,
) -> BridgeResult<BorrowedTensor> {
    if !readable_device(t.device.device_type) {
        return Err(device_error(t.device.device_type));
    }
    let dtype = engine_dtype(t.dtype.code, t.dtype.bits, t.dtype.lanes).map_err(|name| {
        BridgeError::refused(format!("dtype {name}"),
            "float32, float16, bfloat16 or float64",
            "convert first, e.g. x.float() (torch) or x.astype(numpy.float32)",
        )
    })?;
    if !(0..=MAX_NDIM).contains(&t.ndim) {
        return Err(BridgeError::refused(format!("ndim={}", t.ndim),
            format!("between 1 and {MAX_NDIM} dimensions"),
            "the producer's tensor description is corrupt",
        ));
    }
    let ndim = t.ndim as usize;
    let shape: &[i64] = if ndim == 0 {
        &[]
    } else if t.shape.is_null() {
        return Err(BridgeError::refused(format!("a NULL shape pointer for ndim={ndim}"),
            "a shape array",
            "the producer's tensor description is corrupt",
        ));
    } else {
        // SAFETY: DLPack requires `shape` to point at `ndim` int64 values that live as long
        // as the managed tensor, i.e. until `owner` drops; ndim was bounded above.
        unsafe { std::slice::from_raw_parts(t.shape, ndim) }
    };
    let strides: Option<&[i64]> = if t.strides.is_null() || ndim == 0 {
        None // DLPack < 1.2 allows NULL strides for row-major contiguous data.
    } else {
        // SAFETY: as for `shape`: `ndim` int64 values owned by the managed tensor.
        Some(unsafe { std::slice::from_raw_parts(t.strides, ndim) })
    };
    let data = (t.data as usize).wrapping_add(t.byte_offset as usize) as *const u8;
    let raw = RawTensor { data: if t.data.is_null() { std::ptr::null() } else { data }, dtype, shape, strides, buffer };
    // SAFETY: the owner holds the consumed managed tensor and a strong reference to the
    // producer, so the memory stays valid until it drops; DLPack describes strided views of
    // one allocation; the engine only reads.
    Ok(unsafe { BorrowedTensor::new(&raw, owner) }?)
}

/// Whether `obj` has a true `requires_grad` attribute (a torch tensor that is part of an
/// autograd graph) and a `detach` method.
fn requires_grad(obj: &Bound<'_, PyAny>) -> bool {
    let py = obj.py();
    obj.getattr(intern!(py, "requires_grad")).and_then(|v| v.is_truthy()).unwrap_or(false)
        && obj.hasattr(intern!(py, "detach")).unwrap_or(false)
}
