//! `quantbridge.QuantizedTensor`: an immutable quantization result (docs/formats.md).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

use arrow_array::RecordBatch;

use std::borrow::Cow;

use safetensors::Dtype;

use crate::error::Error;
use crate::python_api::errors::to_pyerr;
use crate::serving::{module_of, EngineResult, ServingFormat};
use crate::files::mmap::shared_arrow_buffer;
use crate::foreign::storage::{ResultDType, Part, SharedResult, Storage};
use crate::foreign::to_python::arrow::batch_capsules;
use crate::python_api::functions::engine;
use crate::python_api::metrics::{record, CallRecord, PhaseTimer};
use crate::python_api::native_tensor::NativeTensor;
use crate::python_api::run::detached;
use crate::quant::{Granularity, Quantized, Scales};
use crate::tables::TableParts;

/// The result of `quantize`: codes, scales and zero points as `NativeTensor`s, plus the
/// spec that produced them.
#[pyclass(frozen, module = "quantbridge", name = "QuantizedTensor")]
pub struct QuantizedTensor {
    q: Arc<SharedResult>,
    name: Option<String>,
    // Made on first access (most batch results are only written out, never looked at),
    // then the same object every time.
    codes: PyOnceLock<Py<NativeTensor>>,
    scales: PyOnceLock<Py<NativeTensor>>,
    zero_points: PyOnceLock<Py<NativeTensor>>,
}

impl QuantizedTensor {
    /// Wrap an engine result; its buffers are shared, not copied.
    pub fn new(q: Quantized, name: Option<String>) -> Self {
        QuantizedTensor {
            q: SharedResult::new(q),
            name,
            codes: PyOnceLock::new(),
            scales: PyOnceLock::new(),
            zero_points: PyOnceLock::new(),
        }
    }

    /// The `NativeTensor` over one part, made once.
    fn part(&self, py: Python<'_>, which: Part) -> PyResult<Py<NativeTensor>> {
        let q = &self.q;
        let (cell, shape, dtype) = match which {
            // Packed codes are a flat byte stream; unpacked ones keep the tensor's shape.
            Part::Codes => (
                &self.codes,
                if q.spec.pack { vec![q.codes.len()] } else { q.shape.clone() },
                if !q.spec.pack && q.spec.symmetric { ResultDType::I8 } else { ResultDType::U8 },
            ),
            Part::Scales => (
                &self.scales,
                q.layout.scales_shape(),
                match q.scales {
                    Scales::F32(_) => ResultDType::F32,
                    Scales::F16(_) => ResultDType::F16,
                    Scales::BF16(_) => ResultDType::BF16,
                },
            ),
            Part::ZeroPoints => (&self.zero_points, q.layout.scales_shape(), ResultDType::U8),
        };
        cell.get_or_try_init(py, || Py::new(py, NativeTensor::new(Arc::new(Storage::Part(q.clone(), which)), shape, dtype)))
            .map(|t| t.clone_ref(py))
    }

    /// The engine result.
    pub fn inner(&self) -> &Quantized {
        &self.q
    }

    /// Dequantize with the GIL released into a float32 tensor of the source shape.
    pub fn dequantize_tensor(&self, py: Python<'_>) -> PyResult<NativeTensor> {
        let mut timer = PhaseTimer::start();
        let q = self.q.clone();
        let values = detached(py, Some(self.name.as_deref().unwrap_or("dequantize")), move || engine().dequantize(&q))?;
        let quantize_s = timer.lap();
        let output_bytes = values.len() * 4;
        let tensor = NativeTensor::new(Arc::new(Storage::F32(values)), self.q.shape.clone(), ResultDType::F32);
        let rec = CallRecord {
            api: "dequantize".into(),
            tensors: 1,
            input_bytes: self.q.nbytes(),
            output_bytes,
            quantize_s,
            export_s: timer.lap(),
            ..CallRecord::default()
        };
        record(py, &rec)?;
        Ok(tensor)
    }

    /// This result as one row of the §5 output table, sharing its buffers.
    fn table_row(&self) -> Result<RecordBatch, Error> {
        let q = &self.q;
        if let Some(ty) = q.gguf {
            return Err(Error::validation(
                format!("a {} result", ty.name()),
                "a result of the SPEC math (the Arrow table layout has no GGUF blocks)",
                "export its .codes (the GGUF block bytes) instead",
            ));
        }
        let part = |p: Part| shared_arrow_buffer(Arc::new(Storage::Part(q.clone(), p)));
        let n_zps = q.zero_points.as_ref().map_or(0, Vec::len);
        let parts = TableParts {
            names: vec![self.name.clone().unwrap_or_else(|| "tensor".to_owned())],
            codes: part(Part::Codes),
            code_offsets: vec![0, q.codes.len() as i64],
            scales: part(Part::Scales),
            scale_offsets: vec![0, q.scales.len() as i32],
            zero_points: part(Part::ZeroPoints),
            zp_offsets: vec![0, n_zps as i32],
            shapes: vec![q.shape.clone()],
            spec: q.spec,
            passthrough: false,
        };
        parts.into_batch().map_err(|e| Error::Internal(format!("Arrow export failed: {e}")))
    }
}

#[pymethods]
impl QuantizedTensor {
    /// Shape of the source tensor.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.q.shape)
    }

    /// dtype name of the source tensor.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.q.dtype.name()
    }

    /// Bits per code.
    #[getter]
    fn bits(&self) -> u8 {
        self.q.spec.bits
    }

    /// Elements per group, or None for per-channel and per-tensor.
    #[getter]
    fn group_size(&self) -> Option<usize> {
        match self.q.spec.granularity {
            Granularity::Group(g) => Some(g),
            _ => None,
        }
    }

    /// "group", "channel" or "tensor".
    #[getter]
    fn granularity(&self) -> &'static str {
        match self.q.spec.granularity {
            Granularity::Group(_) => "group",
            Granularity::Channel => "channel",
            Granularity::Tensor => "tensor",
        }
    }

    /// Symmetric (no zero points) or asymmetric.
    #[getter]
    fn symmetric(&self) -> bool {
        self.q.spec.symmetric
    }

    /// Whether codes are packed `bits` per code (else one byte each).
    #[getter]
    fn packed(&self) -> bool {
        self.q.spec.pack
    }

    /// dtype name of the scales.
    #[getter]
    fn scale_dtype(&self) -> &'static str {
        self.q.spec.scale_dtype.name()
    }

    /// The codes: a flat uint8 stream when packed, else one code per element in the
    /// tensor's shape (uint8, or int8 when symmetric).
    #[getter]
    fn codes(&self, py: Python<'_>) -> PyResult<Py<NativeTensor>> {
        self.part(py, Part::Codes)
    }

    /// Scales, shape (rows, groups_per_row), or (1,) per-tensor; None for a GGUF type
    /// (its scales live inside the blocks).
    #[getter]
    fn scales(&self, py: Python<'_>) -> PyResult<Option<Py<NativeTensor>>> {
        match self.q.gguf {
            Some(_) => Ok(None),
            None => self.part(py, Part::Scales).map(Some),
        }
    }

    /// The GGUF block type ("Q4_K", …) when quantized with `gguf_type`, else None.
    #[getter]
    fn gguf_type(&self) -> Option<&'static str> {
        self.q.gguf.map(|t| t.name())
    }

    /// Zero points (uint8, same shape as scales), or None when symmetric.
    #[getter]
    fn zero_points(&self, py: Python<'_>) -> PyResult<Option<Py<NativeTensor>>> {
        match self.q.zero_points {
            Some(_) => self.part(py, Part::ZeroPoints).map(Some),
            None => Ok(None),
        }
    }

    /// Bytes of codes + scales + zero points.
    #[getter]
    fn nbytes(&self) -> usize {
        self.q.nbytes()
    }

    /// Source bytes / `nbytes`.
    #[getter]
    fn compression_ratio(&self) -> f64 {
        self.q.compression_ratio()
    }

    /// `{"mse", "max_abs_error", "sqnr_db"}` when quantized with `stats=True`, else None.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(s) = self.q.stats else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("mse", s.mse)?;
        d.set_item("max_abs_error", s.max_abs_error)?;
        d.set_item("sqnr_db", s.sqnr_db)?;
        Ok(Some(d))
    }

    /// The layer name given to `quantize(name=...)` or the batch key, if any.
    #[getter]
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// One struct row with the §5 output columns (`pyarrow.array(q)`), sharing the buffers.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        Ok(batch_capsules(py, &self.table_row()?, requested_schema)?)
    }

    /// `(q - zp) * scale` as a float32 `NativeTensor` of the source shape.
    fn dequantize(&self, py: Python<'_>) -> PyResult<NativeTensor> {
        self.dequantize_tensor(py)
    }

    /// This weight in a serving format's tensors (docs/formats.md (serving formats)):
    /// `{"<module>.weight_packed": …, …}` for compressed-tensors, `{"<module>.weight",
    /// "<module>.scales", "<module>.biases"}` for MLX, where `module` is `name` (default:
    /// this tensor's name) without its `.weight` suffix; bare part names when there is no
    /// name. The codes are shared, not copied, wherever their bytes are the format's.
    #[pyo3(signature = (format, name=None))]
    fn to_format<'py>(&self, py: Python<'py>, format: &str, name: Option<&str>) -> PyResult<Bound<'py, PyDict>> {
        let layer = || Some(self.name.as_deref().unwrap_or("to_format"));
        let q = &self.q;
        if let Some(ty) = q.gguf {
            return Err(to_pyerr(py, Error::validation(
                format!("a {} result", ty.name()),
                "a result of quantize() without gguf_type",
                "quantize the weight again without gguf_type; GGUF blocks go into GGUF files",
            ).into(), layer()));
        }
        let format = match ServingFormat::parse(format) {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(to_pyerr(py, Error::validation(
                    "format \"quantbridge\"",
                    "compressed-tensors or mlx",
                    "this QuantizedTensor is already in quantbridge's layout: use .codes, .scales and .zero_points",
                ).into(), layer()))
            }
            Err(e) => return Err(to_pyerr(py, e.into(), layer())),
        };
        if !q.spec.pack {
            return Err(to_pyerr(py, Error::validation(
                "unpacked codes (pack=False)",
                "packed codes",
                "quantize with pack=True (the default)",
            ).into(), layer()));
        }
        format.check_spec(&q.spec).map_err(|e| to_pyerr(py, e.into(), layer()))?;
        if let Some(why) = format.unfit_shape(&q.shape, &q.spec) {
            return Err(to_pyerr(py, Error::validation(
                format!("a tensor of shape {:?}: {why}", q.shape),
                format!("a 2-D weight the {} format can store", format.name()),
                "quantize the Linear weight itself (2-D, columns a multiple of the group size)",
            ).into(), layer()));
        }
        let full_name = name.or(self.name.as_deref()).unwrap_or("");
        let module = module_of(full_name).unwrap_or(full_name);
        let scales: Vec<f32> = (0..q.scales.len()).map(|i| q.scales.get(i)).collect();
        let result = EngineResult { codes: &q.codes, scales: &scales, zero_points: q.zero_points.as_deref().unwrap_or(&[]) };
        let dict = PyDict::new(py);
        for (part, bytes) in format.module_parts(module, &q.shape, &q.spec).into_iter().zip(format.encode(&q.shape, &q.spec, &result)) {
            let dtype = match part.dtype {
                Dtype::I32 => ResultDType::I32,
                Dtype::U32 => ResultDType::U32,
                Dtype::I64 => ResultDType::I64,
                Dtype::F16 => ResultDType::F16,
                Dtype::BF16 => ResultDType::BF16,
                _ => ResultDType::F32,
            };
            // The codes are the format's words as they are: share them when they sit on a
            // word boundary (they do: the pool allocates aligned), else copy.
            let shared = matches!(bytes, Cow::Borrowed(_)) && (q.codes.as_ptr() as usize).is_multiple_of(dtype.itemsize());
            let storage = if shared { Storage::Part(q.clone(), Part::Codes) } else { Storage::aligned_copy(&bytes) };
            dict.set_item(part.name, Py::new(py, NativeTensor::new(Arc::new(storage), part.shape, dtype))?)?;
        }
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        if let Some(ty) = self.q.gguf {
            return format!(
                "QuantizedTensor(shape={:?}, dtype={}, gguf_type={}, nbytes={}, compression={:.2}x)",
                self.q.shape,
                self.q.dtype.name(),
                ty.name(),
                self.q.nbytes(),
                self.q.compression_ratio()
            );
        }
        let group = match self.q.spec.granularity {
            Granularity::Group(g) => format!("group_size={g}"),
            Granularity::Channel => "granularity=channel".into(),
            Granularity::Tensor => "granularity=tensor".into(),
        };
        format!(
            "QuantizedTensor(shape={:?}, dtype={}, bits={}, {group}, symmetric={}, nbytes={}, compression={:.2}x)",
            self.q.shape,
            self.q.dtype.name(),
            self.q.spec.bits,
            if self.q.spec.symmetric { "True" } else { "False" },
            self.q.nbytes(),
            self.q.compression_ratio()
        )
    }
}
