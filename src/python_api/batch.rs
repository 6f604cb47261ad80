//! `quantize_batch` (docs/api.md): one boundary crossing for any number of layers.
//!
//! Every layer is imported under the GIL (each through the one guard), then all of them are
//! quantized in parallel with the GIL released. Failures are collected for EVERY layer,
//! import and engine alike, and reported together.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};
use rayon::prelude::*;

use crate::error::Error;
use crate::foreign::import::{import_tensor, Imported};
use crate::python_api::errors::{batch_error_type, python_type, QuantizationWarning};
use crate::python_api::functions::engine;
use crate::python_api::metrics::{record, CallRecord, PhaseTimer};
use crate::python_api::quantized_tensor::QuantizedTensor;
use crate::python_api::run::contain;
use crate::python_api::spec_args::spec_from_tuple;
use crate::quant::{QuantSpec, Quantized, TensorView};

static BATCH_RESULT: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// `BatchResult(dict)`: the good layers, plus `.failures` (`{name: reason}`).
pub fn batch_result_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    BATCH_RESULT
        .get_or_try_init(py, || {
            let doc = "The layers of a batch that quantized, by name; `.failures` maps each failed layer to its reason.";
            let no_failures = PyDict::new(py).into_any();
            python_type(py, "BatchResult", [py.get_type::<PyDict>()], doc, &[("failures", no_failures)])
        })
        .map(|t| t.bind(py))
}

/// A progress sink: a Python callable `(name, fraction)`, or a tqdm bar.
enum Progress {
    None,
    Callback(Py<PyAny>),
    Bar(Py<PyAny>),
    /// `progress=True` without tqdm: plain lines on stderr.
    Lines,
}

impl Progress {
    fn from_arg(py: Python<'_>, progress: Option<&Bound<'_, PyAny>>, total: usize) -> PyResult<Self> {
        let Some(p) = progress else { return Ok(Progress::None) };
        if p.is_none() || p.is(pyo3::types::PyBool::new(py, false)) {
            return Ok(Progress::None);
        }
        if p.is(pyo3::types::PyBool::new(py, true)) {
            return Ok(match py.import("tqdm") {
                Ok(tqdm) => {
                    let kwargs = PyDict::new(py);
                    kwargs.set_item("total", total)?;
                    kwargs.set_item("unit", "layer")?;
                    kwargs.set_item("desc", "quantizing")?;
                    Progress::Bar(tqdm.getattr("tqdm")?.call((), Some(&kwargs))?.unbind())
                }
                Err(_) => Progress::Lines,
            });
        }
        if !p.is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "progress must be None, True (a tqdm bar) or a callable taking (name, fraction)",
            ));
        }
        Ok(Progress::Callback(p.clone().unbind()))
    }

    fn report(&self, py: Python<'_>, name: &str, done: usize, total: usize, fraction: f64) -> PyResult<()> {
        match self {
            Progress::None => Ok(()),
            Progress::Callback(f) => f.bind(py).call1((name, fraction)).map(drop),
            Progress::Bar(bar) => {
                let bar = bar.bind(py);
                bar.call_method1(intern!(py, "set_postfix_str"), (name,))?;
                bar.call_method1(intern!(py, "update"), (1,)).map(drop)
            }
            Progress::Lines => {
                eprintln!("quantbridge: {done}/{total} layers ({:.0}%) {name}", fraction * 100.0);
                Ok(())
            }
        }
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if let Progress::Bar(bar) = self {
            bar.bind(py).call_method0(intern!(py, "close"))?;
        }
        Ok(())
    }
}

/// One layer's engine outcome.
type Outcome = Result<Quantized, Error>;

fn quantize_one(view: &TensorView<'_>, spec: &QuantSpec, cancelled: &AtomicBool) -> Outcome {
    if cancelled.load(Ordering::Relaxed) {
        return Err(Error::Internal("cancelled: the progress callback raised".into()));
    }
    contain(|| engine().quantize(view, spec))
}

/// Quantize `views` in parallel with the GIL released, reporting each finished layer to
/// `progress` from the calling thread (the only one that takes the GIL back).
fn run_parallel(
    py: Python<'_>,
    names: &[String],
    views: &[TensorView<'_>],
    spec: &QuantSpec,
    progress: &Progress,
) -> (Vec<Outcome>, Option<PyErr>) {
    let cancelled = AtomicBool::new(false);
    if matches!(progress, Progress::None) {
        let outcomes = py.detach(|| views.par_iter().map(|v| quantize_one(v, spec, &cancelled)).collect());
        return (outcomes, None);
    }
    let weights: Vec<usize> = views.iter().map(|v| v.numel().max(1)).collect();
    let total_weight: usize = weights.iter().sum();
    let mut callback_error = None;
    let outcomes = py.detach(|| {
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<usize>();
            let cancelled = &cancelled;
            let worker = scope.spawn(move || {
                views
                    .par_iter()
                    .enumerate()
                    .map_with(tx, |tx, (i, v)| {
                        let outcome = quantize_one(v, spec, cancelled);
                        let _ = tx.send(i);
                        outcome
                    })
                    .collect::<Vec<_>>()
            });
            let (mut done, mut done_weight) = (0, 0);
            for i in rx {
                done += 1;
                done_weight += weights[i];
                if callback_error.is_some() {
                    continue;
                }
                let fraction = if done == views.len() { 1.0 } else { done_weight as f64 / total_weight as f64 };
                if let Err(e) = Python::attach(|py| progress.report(py, &names[i], done, views.len(), fraction)) {
                    cancelled.store(true, Ordering::Relaxed);
                    callback_error = Some(e);
                }
            }
            worker.join().unwrap_or_else(|_| Vec::new())
        })
    });
    (outcomes, callback_error)
}

/// `quantize_batch(mapping, spec, continue_on_error=False, progress=None, api=None)`.
#[pyfunction]
#[pyo3(signature = (mapping, spec, continue_on_error=false, progress=None, api=None))]
pub fn quantize_batch<'py>(
    py: Python<'py>,
    mapping: &Bound<'py, PyAny>,
    spec: &Bound<'py, PyTuple>,
    continue_on_error: bool,
    progress: Option<&Bound<'py, PyAny>>,
    api: Option<&str>,
) -> PyResult<Bound<'py, PyAny>> {
    let api = api.unwrap_or("quantize_batch");
    let spec = spec_from_tuple(spec)?;
    let mut timer = PhaseTimer::start();

    // 1. Import every layer under the GIL; remember every failure.
    let mut names: Vec<String> = Vec::new();
    let mut imports: Vec<Imported> = Vec::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    let items = mapping.call_method0(intern!(py, "items")).map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "quantize_batch takes a mapping of layer name to tensor (e.g. a dict or model.state_dict()), not {}",
            mapping.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })?;
    for item in items.try_iter()? {
        let (key, value): (Bound<'py, PyAny>, Bound<'py, PyAny>) = item?.extract()?;
        let name = match key.cast::<PyString>() {
            Ok(s) => s.to_str()?.to_owned(),
            Err(_) => key.str()?.to_str()?.to_owned(),
        };
        match import_tensor(&value) {
            Ok(imp) => {
                names.push(name);
                imports.push(imp);
            }
            Err(e) => failures.push((name, e.to_string())),
        }
    }
    let import_s = timer.lap();

    // 2. Quantize them all in parallel, detached.
    let progress = Progress::from_arg(py, progress, names.len())?;
    let views: Vec<TensorView<'_>> = imports.iter().map(|imp| imp.tensor.view()).collect();
    let (outcomes, callback_error) = run_parallel(py, &names, &views, &spec, &progress);
    drop(views);
    progress.close(py)?;
    let quantize_s = timer.lap();
    let input_bytes: usize = imports.iter().map(|i| i.tensor.nbytes()).sum();
    let bytes_copied: usize = imports.iter().map(|i| i.bytes_copied).sum();
    let copy_reason = imports.iter().find_map(|i| i.copy_reason);
    drop(imports); // every producer's memory is released here, after the last read
    if let Some(e) = callback_error {
        return Err(e);
    }

    // 3. Results, in the mapping's order.
    let results = PyDict::new(py);
    let mut output_bytes = 0;
    let mut tensors = 0;
    for (name, outcome) in names.into_iter().zip(outcomes) {
        match outcome {
            Ok(q) => {
                output_bytes += q.nbytes();
                tensors += 1;
                let t = QuantizedTensor::new(q, Some(name.clone()));
                results.set_item(&name, Py::new(py, t)?)?;
            }
            Err(e) => failures.push((name, e.to_string())),
        }
    }
    let rec = CallRecord {
        api: api.to_owned(),
        tensors,
        input_bytes,
        output_bytes,
        bytes_copied,
        copy_reason,
        import_s,
        quantize_s,
        export_s: timer.lap(),
    };
    record(py, &rec)?;
    if !failures.is_empty() && !continue_on_error {
        return Err(batch_error(py, &failures));
    }
    let out = batch_result_type(py)?.call1((results,))?;
    out.setattr("failures", failure_dict(py, &failures)?)?;
    if !failures.is_empty() {
        let message = failure_message(&failures);
        let msg = std::ffi::CString::new(message.replace('\0', " ")).expect("NULs were replaced");
        PyErr::warn(py, &py.get_type::<QuantizationWarning>(), &msg, 1)?;
    }
    Ok(out)
}

/// `{name: reason}` for every failed layer.
pub fn failure_dict<'py, R: Display>(py: Python<'py>, failures: &[(String, R)]) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, reason) in failures {
        dict.set_item(name, reason.to_string())?;
    }
    Ok(dict)
}

/// `BatchQuantizationError` naming every failed layer, in its message and `.failures`
/// (batches and Arrow tables alike).
pub fn batch_error<R: Display>(py: Python<'_>, failures: &[(String, R)]) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let err = batch_error_type(py)?.call1((failure_message(failures),))?;
        err.setattr("failures", failure_dict(py, failures)?)?;
        Ok(PyErr::from_value(err))
    };
    build().unwrap_or_else(|e| e)
}

/// "Quantization failed for N layer(s):" (the original system's words) and one line per layer.
pub fn failure_message<R: Display>(failures: &[(String, R)]) -> String {
    let mut message = format!("Quantization failed for {} layer(s):", failures.len());
    for (name, reason) in failures {
        message.push_str(&format!("\n  {name}: {reason}"));
    }
    message
}
