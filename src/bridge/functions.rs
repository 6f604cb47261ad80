//! The module-level functions of SPEC §4.

use pyo3::prelude::*;

use crate::bridge::errors::LayerError;
use crate::bridge::import::borrow_tensor;
use crate::bridge::native_tensor::NativeTensor;
use crate::bridge::quantized_tensor::QuantizedTensor;
use crate::bridge::run::detached;
use crate::quant::{self, QuantSpec};

/// Name used in messages when the caller gave none.
const UNNAMED: &str = "tensor";

/// Quantize one tensor (SPEC §2). The input is borrowed, never copied, and the GIL is
/// released while the engine runs.
#[pyfunction]
#[pyo3(signature = (tensor, *, bits=4, group_size=Some(128), symmetric=false, granularity="group", scale_dtype="float32", pack=true, stats=false, name=None))]
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
) -> PyResult<QuantizedTensor> {
    let layer = name.unwrap_or(UNNAMED);
    let spec = QuantSpec::from_options(bits, group_size, symmetric, granularity, scale_dtype, pack, stats)
        .map_err(|e| LayerError::new(layer, e).into_pyerr(py))?;
    let guard = borrow_tensor(tensor, layer)?;
    let view = guard.view();
    let q = detached(py, layer, || quant::quantize(&view, &spec))?;
    drop(view);
    drop(guard); // releases the producer's memory, after the last read
    QuantizedTensor::new(py, q)
}

/// `q.dequantize()`: float32 values of the source shape.
#[pyfunction]
pub fn dequantize(py: Python<'_>, q: &Bound<'_, QuantizedTensor>) -> PyResult<NativeTensor> {
    q.get().dequantize_tensor(py)
}
