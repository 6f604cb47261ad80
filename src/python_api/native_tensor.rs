//! `quantbridge.NativeTensor`: a read-only Rust-owned tensor that leaves through DLPack.

use std::sync::Arc;

use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule, PyTuple};

use arrow_data::ArrayData;
use arrow_schema::{DataType, Field};

use crate::foreign::to_python::{arrow, dlpack};
use crate::files::mmap::shared_arrow_buffer;
use crate::foreign::storage::{ResultDType, Storage};
use crate::error::Error;
use crate::tables::BF16_METADATA;

/// A read-only, row-major tensor owned by quantbridge. Take it with `numpy.from_dlpack`,
/// `torch.from_dlpack` or `jax.numpy.from_dlpack`: no copy is made.
#[pyclass(frozen, module = "quantbridge", name = "NativeTensor")]
pub struct NativeTensor {
    storage: Arc<Storage>,
    shape: Vec<i64>,
    dtype: ResultDType,
}

impl NativeTensor {
    /// A tensor over `storage`, whose bytes must be exactly `shape` × `dtype`.
    pub fn new(storage: Arc<Storage>, shape: Vec<usize>, dtype: ResultDType) -> Self {
        debug_assert_eq!(storage.bytes().len(), shape.iter().product::<usize>() * dtype.itemsize());
        NativeTensor { storage, shape: shape.into_iter().map(|d| d as i64).collect(), dtype }
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }
}

#[pymethods]
impl NativeTensor {
    /// Export as a DLPack capsule (DLPack >= 1.0 when `max_version` allows, read-only).
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(u32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        // CPU memory has no streams: any stream value asks for nothing.
        let _ = stream;
        if let Some((device_type, _)) = dl_device {
            if device_type != 1 {
                // The DLPack protocol asks for BufferError here: consumers catch it to fall
                // back to another device or a copy.
                return Err(PyBufferError::new_err(format!(
                    "quantbridge tensors live in CPU memory; cannot export to DLPack device type {device_type}"
                )));
            }
        }
        let versioned = max_version.is_some_and(|(major, _)| major >= 1);
        let copied = copy == Some(true);
        let storage = if copied { Arc::new(self.storage.copied()) } else { self.storage.clone() };
        dlpack::export(py, storage, &self.shape, self.dtype, versioned, copied)
    }

    /// Export as a flat Arrow array (`pyarrow.array(t)` takes it without a copy): uint8 /
    /// int8 / float32 / float16 values, or bfloat16 as uint16 bit patterns whose field
    /// carries the metadata `{"quantbridge.dtype": "bfloat16"}`. n-d tensors are flattened
    /// row-major; `shape` says how to fold them back.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (data_type, metadata) = match self.dtype {
            ResultDType::U8 => (DataType::UInt8, None),
            ResultDType::I8 => (DataType::Int8, None),
            ResultDType::F32 => (DataType::Float32, None),
            ResultDType::F16 => (DataType::Float16, None),
            ResultDType::BF16 => (DataType::UInt16, Some(BF16_METADATA)),
            ResultDType::I32 => (DataType::Int32, None),
            ResultDType::U32 => (DataType::UInt32, None),
            ResultDType::I64 => (DataType::Int64, None),
        };
        let mut field = Field::new("", data_type.clone(), false);
        if let Some((k, v)) = metadata {
            field = field.with_metadata([(k.to_owned(), v.to_owned())].into_iter().collect::<std::collections::HashMap<_, _>>());
        }
        arrow::check_requested_schema(requested_schema, &field)?;
        let len = self.shape.iter().product::<i64>() as usize;
        let data = ArrayData::builder(data_type)
            .len(len)
            .add_buffer(shared_arrow_buffer(self.storage.clone()))
            .build()
            .map_err(|e| Error::Internal(format!("Arrow export failed: {e}")))?;
        Ok(arrow::array_capsules(py, &field, &data)?)
    }

    /// The buffer protocol, read-only: `memoryview(t)`, `bytes(t)`, `numpy.frombuffer(t, …)`
    /// see the raw bytes (format "B", flat) without a copy; the view keeps `t` alive.
    ///
    /// # Safety
    /// Called by CPython with a `Py_buffer` to fill (the protocol's contract).
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut pyo3::ffi::Py_buffer, flags: std::os::raw::c_int) -> PyResult<()> {
        if flags & pyo3::ffi::PyBUF_WRITABLE == pyo3::ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err(
                "quantbridge results are read-only; copy them (bytes(t), numpy.array(t)) to get writable memory",
            ));
        }
        let bytes = slf.get().storage.bytes();
        // SAFETY: `view` is the caller's Py_buffer to fill (buffer protocol). The bytes belong
        // to `slf`'s storage, which never changes or moves while `slf` lives (frozen class,
        // `Arc<Storage>` never written after construction), and PyBuffer_FillInfo stores a
        // new reference to `slf` in `view.obj`, so the memory outlives every view of it.
        // `readonly = 1`, and writable requests were refused above.
        let rc = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                bytes.as_ptr() as *mut std::os::raw::c_void,
                bytes.len() as pyo3::ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    /// `(kDLCPU, 0)`.
    fn __dlpack_device__(&self) -> (u32, i32) {
        (1, 0)
    }

    /// The shape.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.shape)
    }

    /// The dtype name ("uint8", "int8", "float32", "float16", "bfloat16", "int32", "uint32", "int64").
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }

    /// Number of dimensions.
    #[getter]
    fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Bytes of data.
    #[getter]
    fn nbytes(&self) -> usize {
        self.storage.bytes().len()
    }

    /// A copy of the raw bytes (row-major, native byte order).
    fn tobytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.storage.bytes())
    }

    fn __len__(&self) -> usize {
        self.shape.first().copied().unwrap_or(0) as usize
    }

    fn __repr__(&self) -> String {
        format!("NativeTensor(shape={:?}, dtype={})", self.shape, self.dtype.name())
    }
}
