//! The Python extension module `quantbridge._native`: the only code that touches foreign
//! memory or the interpreter. The engine in [`crate::quant`] knows nothing of it.

pub mod arrow_tensor;
mod batch;
mod buffer_pool;
pub mod borrowed;
pub mod capsule_names;
pub mod errors;
pub mod ffi;
mod files;
mod functions;
mod import;
pub mod native_tensor;
pub mod metrics;
pub mod quantized_table;
pub mod quantized_tensor;
mod run;
pub mod storage;
pub mod table;

use std::sync::atomic::Ordering;

use pyo3::prelude::*;

/// Number of exported DLPack tensors whose deleter has not run (for leak tests).
#[pyfunction]
fn _live_exports() -> usize {
    ffi::to_python::dlpack::LIVE_EXPORTS.load(Ordering::SeqCst)
}

/// How `obj` would be borrowed: `(kind, data address, nbytes)`. Lets tests prove that the
/// engine reads the producer's own memory. Consumes one capsule, released at once.
#[pyfunction]
fn _borrow_info(obj: &Bound<'_, PyAny>) -> PyResult<(&'static str, usize, usize)> {
    let imported = import::import_tensor(obj, "tensor")?;
    let guard = imported.tensor;
    let _ = guard.view();
    Ok((guard.kind(), guard.data_addr(), guard.nbytes()))
}

/// Panics inside the detached region, to prove panics are contained (tests only).
#[pyfunction]
fn _panic_in_engine(py: Python<'_>) -> PyResult<()> {
    run::detached(py, "tensor", || -> crate::Result<()> { panic!("deliberate panic for a test") })
}

/// A fresh `quantbridge._native` module object, for Rust tests that drive an embedded
/// interpreter (the wheel's module is created by the import machinery instead).
#[doc(hidden)]
pub fn native_module(py: Python<'_>) -> Py<PyModule> {
    pyo3::wrap_pymodule!(_native)(py)
}

/// `quantbridge._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<native_tensor::NativeTensor>()?;
    m.add_class::<quantized_tensor::QuantizedTensor>()?;
    m.add_function(wrap_pyfunction!(functions::quantize, m)?)?;
    m.add_function(wrap_pyfunction!(functions::dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(batch::quantize_batch, m)?)?;
    m.add_function(wrap_pyfunction!(quantized_table::quantize_arrow, m)?)?;
    m.add_function(wrap_pyfunction!(quantized_table::quantize_arrow_batch, m)?)?;
    m.add_function(wrap_pyfunction!(files::quantize_file, m)?)?;
    m.add_function(wrap_pyfunction!(files::dequantize_file, m)?)?;
    m.add_function(wrap_pyfunction!(files::inspect_file, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::metrics, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::reset_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::configure_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(buffer_pool::configure_buffer_pool, m)?)?;
    m.add_class::<quantized_table::QuantizedTable>()?;
    m.add("BatchResult", batch::batch_result_type(py)?)?;
    m.add("QuantizationWarning", py.get_type::<errors::QuantizationWarning>())?;
    m.add_function(wrap_pyfunction!(_live_exports, m)?)?;
    m.add_function(wrap_pyfunction!(_borrow_info, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_in_engine, m)?)?;
    m.add("QuantizationError", py.get_type::<errors::QuantizationError>())?;
    m.add("ValidationError", errors::validation_error_type(py)?)?;
    m.add("BatchQuantizationError", py.get_type::<errors::BatchQuantizationError>())?;
    m.add("PerformanceWarning", py.get_type::<errors::PerformanceWarning>())?;
    Ok(())
}
