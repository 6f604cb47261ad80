//! The module-level functions for one tensor: `quantize` and `dequantize`.

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::foreign::import::import_tensor;
use crate::foreign::storage::RESULT_POOL;
use crate::python_api::errors::InLayer;
use crate::python_api::metrics::{record, CallRecord, PhaseTimer};
use crate::python_api::native_tensor::NativeTensor;
use crate::python_api::quantized_tensor::QuantizedTensor;
use crate::python_api::run::detached;
use crate::python_api::spec_args::spec_from_tuple;
use crate::quant::gguf::GgufType;
use crate::quant::{Engine, Kernel};

/// Name used in messages when the caller gave none.
pub const UNNAMED: &str = "tensor";

/// The engine the Python surface runs: the best kernel, results from [`RESULT_POOL`].
pub fn engine() -> Engine<'static> {
    Engine::new(Kernel::best(), &RESULT_POOL)
}

/// Quantize one tensor (docs/math.md). The input is borrowed, never copied (except on the
/// legacy list/buffer path, which is counted and announced), and the GIL is released
/// while the engine runs. `spec` is the tuple `_api._spec` builds; `api` names the public
/// entry point in `metrics()`. `gguf_type` ("Q4_0", …) replaces the spec's scheme by a
/// ggml block type (docs/gguf.md); only the spec's `stats` still applies.
#[pyfunction]
#[pyo3(signature = (tensor, spec, name=None, api=None, gguf_type=None))]
pub fn quantize(
    py: Python<'_>,
    tensor: &Bound<'_, PyAny>,
    spec: &Bound<'_, PyTuple>,
    name: Option<&str>,
    api: Option<&str>,
    gguf_type: Option<&str>,
) -> PyResult<QuantizedTensor> {
    let layer = name.unwrap_or(UNNAMED);
    let spec = spec_from_tuple(spec).in_layer(py, layer)?;
    let gguf_type = gguf_type.map(GgufType::parse).transpose().in_layer(py, layer)?;
    let mut timer = PhaseTimer::start();
    let imported = import_tensor(tensor).in_layer(py, layer)?;
    let import_s = timer.lap();
    let view = imported.tensor.view();
    let q = detached(py, Some(layer), || match gguf_type {
        Some(ty) => engine().quantize_gguf(&view, ty, spec.stats),
        None => engine().quantize(&view, &spec),
    })?;
    let quantize_s = timer.lap();
    let input_bytes = imported.tensor.nbytes();
    drop(view);
    drop(imported.tensor); // releases the producer's memory, after the last read
    let result = QuantizedTensor::new(q, name.map(str::to_owned));
    let rec = CallRecord {
        api: api.unwrap_or("quantize").to_owned(),
        tensors: 1,
        input_bytes,
        output_bytes: result.inner().nbytes(),
        bytes_copied: imported.bytes_copied,
        copy_reason: imported.copy_reason,
        import_s,
        quantize_s,
        export_s: timer.lap(),
    };
    record(py, &rec)?;
    Ok(result)
}

/// `q.dequantize()`: float32 values of the source shape.
#[pyfunction]
pub fn dequantize(py: Python<'_>, q: &Bound<'_, QuantizedTensor>) -> PyResult<NativeTensor> {
    q.get().dequantize_tensor(py)
}
