//! The module-level functions of SPEC §4 for one tensor: `quantize` and `dequantize`.

use pyo3::prelude::*;

use crate::bridge::errors::LayerError;
use crate::bridge::import::import_tensor;
use crate::bridge::metrics::{record, CallRecord, PhaseTimer};
use crate::bridge::native_tensor::NativeTensor;
use crate::bridge::quantized_tensor::QuantizedTensor;
use crate::bridge::run::detached;
use crate::quant::{self, QuantSpec};

/// Name used in messages when the caller gave none.
pub const UNNAMED: &str = "tensor";

/// The spec from the Python keywords, or a `ValidationError` for `layer`.
#[allow(clippy::too_many_arguments)]
pub fn spec_from_options(
    py: Python<'_>,
    layer: &str,
    bits: i64,
    group_size: Option<i64>,
    symmetric: bool,
    granularity: &str,
    scale_dtype: &str,
    pack: bool,
    stats: bool,
) -> PyResult<QuantSpec> {
    QuantSpec::from_options(bits, group_size, symmetric, granularity, scale_dtype, pack, stats)
        .map_err(|e| LayerError::new(layer, e).into_pyerr(py))
}

/// Quantize one tensor (SPEC §2). The input is borrowed, never copied (except on the
/// legacy list/buffer path, which is counted and announced), and the GIL is released
/// while the engine runs.
#[pyfunction]
#[pyo3(signature = (tensor, *, bits=4, group_size=Some(128), symmetric=false, granularity="group", scale_dtype="float32", pack=true, stats=false, name=None, _api=None))]
#[allow(clippy::too_many_arguments)]
pub fn quantize(
    py: Python<'_>,
    tensor: &Bound<'_, PyAny>,
    bits: i64,
    group_size: Option<i64>,
    symmetric: bool,
    granularity: &str,
    scale_dtype: &str,
    pack: bool,
    stats: bool,
    name: Option<&str>,
    _api: Option<&str>,
) -> PyResult<QuantizedTensor> {
    let layer = name.unwrap_or(UNNAMED);
    let spec = spec_from_options(py, layer, bits, group_size, symmetric, granularity, scale_dtype, pack, stats)?;
    let mut timer = PhaseTimer::start();
    let imported = import_tensor(tensor, layer)?;
    let import_s = timer.lap();
    let view = imported.tensor.view();
    let q = detached(py, layer, || quant::quantize(&view, &spec))?;
    let quantize_s = timer.lap();
    let input_bytes = imported.tensor.nbytes();
    drop(view);
    drop(imported.tensor); // releases the producer's memory, after the last read
    let result = QuantizedTensor::new(py, q, name.map(str::to_owned))?;
    let rec = CallRecord {
        api: _api.unwrap_or("quantize").to_owned(),
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
