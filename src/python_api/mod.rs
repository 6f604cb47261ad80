//! The Python surface: the extension module `quantbridge._native`. Each Python type has
//! its file; every entry point reads its spec through [`spec_args`], borrows its inputs
//! through [`crate::foreign`], runs the engine detached ([`run`]) and raises through the
//! one conversion in [`errors`]. The public signatures and docstrings are in
//! `python/quantbridge/_api.py`.

mod batch;
mod buffer_reuse;
mod errors;
mod files;
mod functions;
mod metrics;
mod native_tensor;
mod quantized_table;
mod quantized_tensor;
mod run;
mod spec_args;

use std::sync::atomic::Ordering;

use pyo3::prelude::*;

/// Number of exported DLPack tensors whose deleter has not run (for leak tests).
#[pyfunction]
fn _live_exports() -> usize {
    crate::foreign::to_python::dlpack::LIVE_EXPORTS.load(Ordering::SeqCst)
}

/// How `obj` would be borrowed: `(kind, data address, nbytes)`. Lets tests prove that the
/// engine reads the producer's own memory. Consumes one capsule, released at once.
#[pyfunction]
fn _borrow_info(obj: &Bound<'_, PyAny>) -> PyResult<(&'static str, usize, usize)> {
    let imported = crate::foreign::import::import_tensor(obj)?;
    let guard = imported.tensor;
    let _ = guard.view();
    Ok((guard.kind(), guard.data_addr(), guard.nbytes()))
}

/// The kernel build the Python surface runs on this CPU ("avx512", "avx2" or "portable"): what the
/// benchmarks print beside their figures.
#[pyfunction]
fn _kernel() -> &'static str {
    crate::quant::Kernel::best().name()
}

/// Size the engine's thread pool for a task that was given `threads` CPUs (a shard of a
/// sharded job in a worker process), before its first call; returns the pool's size in
/// effect. The pool is built once per process: a pool already running, or one the user
/// sized with `RAYON_NUM_THREADS`, is left as it is.
#[pyfunction]
fn _size_task_pool(threads: usize) -> usize {
    if threads > 0 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // An error means the pool already runs (this process quantized before): keep it.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    }
    rayon::current_num_threads()
}

/// Read every byte of a tensor once, on the engine's threads (a wrapping sum of its 8-byte
/// words; the GIL is released): the read limit the benchmarks compare the kernels with.
/// Unlike `torch.sum` it leaves no OpenMP threads spinning after it, so the benchmark can
/// interleave it with the kernels it is the baseline of.
#[pyfunction]
fn _read_pass(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    use rayon::prelude::*;
    let imported = crate::foreign::import::import_tensor(obj)?;
    let view = imported.tensor.view();
    let data = view.data();
    let bytes = data.bytes();
    Ok(py.detach(|| {
        bytes
            .par_chunks(1 << 18)
            .map(|chunk| {
                let (head, words, tail) = bytemuck::pod_align_to::<u8, u64>(chunk);
                let sum = words.iter().fold(0u64, |a, &w| a.wrapping_add(w));
                head.iter().chain(tail).fold(sum, |a, &b| a.wrapping_add(b as u64))
            })
            .reduce(|| 0, u64::wrapping_add)
    }))
}

/// Panics inside the detached region, to prove panics are contained (tests only).
#[pyfunction]
fn _panic_in_engine(py: Python<'_>) -> PyResult<()> {
    run::detached(py, Some("tensor"), || -> crate::Result<()> { panic!("deliberate panic for a test") })
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
    m.add_function(wrap_pyfunction!(files::shard_plan, m)?)?;
    m.add_function(wrap_pyfunction!(files::quantize_shard, m)?)?;
    m.add_function(wrap_pyfunction!(files::finish_shards, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::metrics, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::reset_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::configure_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(buffer_reuse::configure_buffer_pool, m)?)?;
    m.add_class::<quantized_table::QuantizedTable>()?;
    m.add("BatchResult", batch::batch_result_type(py)?)?;
    m.add("QuantizationWarning", py.get_type::<errors::QuantizationWarning>())?;
    m.add_function(wrap_pyfunction!(_live_exports, m)?)?;
    m.add_function(wrap_pyfunction!(_borrow_info, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_in_engine, m)?)?;
    m.add_function(wrap_pyfunction!(_kernel, m)?)?;
    m.add_function(wrap_pyfunction!(_read_pass, m)?)?;
    m.add_function(wrap_pyfunction!(_size_task_pool, m)?)?;
    m.add("QuantizationError", py.get_type::<errors::QuantizationError>())?;
    m.add("ValidationError", errors::validation_error_type(py)?)?;
    m.add("BatchQuantizationError", errors::batch_error_type(py)?)?;
    m.add("PerformanceWarning", py.get_type::<errors::PerformanceWarning>())?;
    Ok(())
}
