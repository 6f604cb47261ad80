//! The main job from Python: `quantize_file`, `dequantize_file`, `inspect_file` over
//! [`crate::files`]. The job runs with the GIL released; it takes the GIL back only to call
//! the caller's `select` and `progress` callables (and to notice Ctrl-C).

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::python_api::errors::to_pyerr;
use crate::python_api::spec_args::spec_from_tuple;
use crate::python_api::metrics::{record, CallRecord, PhaseTimer};
use crate::error::Error;
use crate::files::checkpoint::{Checkpoint, Entry};
use crate::files::job::{dequantize_checkpoint, quantize_checkpoint, LayerReport};
use crate::files::gguf_job::{quantize_gguf_file, GgufTarget};
use crate::files::model_folder::{quantize_model_folder, FolderJob};
use crate::files::select::Choice;
use crate::files::shards::{self, ShardedJob};
use crate::serving::ServingFormat;

fn report_dict<'py>(py: Python<'py>, r: &LayerReport, bits: u8) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &r.name)?;
    d.set_item("dtype", format!("{:?}", r.dtype))?;
    d.set_item("shape", &r.shape)?;
    d.set_item("quantized", r.quantized)?;
    let bits = r.gguf_type.map_or(bits, |t| t.bits());
    d.set_item("bits", if r.quantized { Some(bits) } else { None })?;
    d.set_item("gguf_type", r.gguf_type.map(|t| t.name()))?;
    d.set_item("sqnr_db", r.stats.map(|s| s.sqnr_db))?;
    d.set_item("max_abs_error", r.stats.map(|s| s.max_abs_error))?;
    d.set_item("mse", r.stats.map(|s| s.mse))?;
    d.set_item("input_bytes", r.input_bytes)?;
    d.set_item("output_bytes", r.output_bytes)?;
    d.set_item("compression", r.input_bytes as f64 / r.output_bytes.max(1) as f64)?;
    d.set_item("kept_because", r.kept_because.as_deref())?;
    Ok(d)
}

fn report_list<'py>(py: Python<'py>, reports: &[LayerReport], bits: u8) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for r in reports {
        list.append(report_dict(py, r, bits)?)?;
    }
    Ok(list)
}

/// A Python error raised inside a callback, carried through the Rust job.
struct CallbackError(PyErr);

/// After each tensor: notice Ctrl-C and call the caller's `progress(report, done, total)`,
/// with the GIL taken back. A Python error is kept in `callback_error` and stops the job.
fn report_progress(
    progress: Option<&Py<PyAny>>,
    callback_error: &mut Option<CallbackError>,
    report: &LayerReport,
    bits: u8,
    done: usize,
    total: usize,
) -> crate::Result<()> {
    Python::attach(|py| {
        let outcome = py.check_signals().and_then(|()| match progress {
            Some(f) => f.bind(py).call1((report_dict(py, report, bits)?, done, total)).map(drop),
            None => Ok(()),
        });
        outcome.map_err(|e| {
            *callback_error = Some(CallbackError(e));
            Error::Internal("stopped by a callback".into())
        })
    })
}

/// Run `job` detached; `callback_error` receives a Python exception raised by a callback.
fn run_job<T: Send>(
    py: Python<'_>,
    job: impl FnOnce(&mut Option<CallbackError>) -> crate::Result<T> + Send,
) -> PyResult<T> {
    let mut callback_error: Option<CallbackError> = None;
    let result = py.detach(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut callback_error)))
            .unwrap_or_else(|_| Err(Error::Internal("a Rust panic was contained; no output was written".into())))
    });
    if let Some(CallbackError(e)) = callback_error {
        return Err(e);
    }
    result.map_err(|e| to_pyerr(py, e.into(), None))
}

/// What the caller's `select(name, ndim)` returned: `True` (quantize if the format can),
/// `None` (the default rule decides), or a string (keep the tensor, for that reason).
fn choice_of(value: &Bound<'_, PyAny>) -> PyResult<Choice> {
    if value.is_none() {
        Ok(Choice::Default)
    } else if let Ok(reason) = value.extract::<String>() {
        Ok(Choice::Keep(reason))
    } else if value.is_truthy()? {
        Ok(Choice::Include)
    } else {
        Ok(Choice::Keep("deselected by select()".into()))
    }
}

/// The caller's `select(name, ndim)` as the job's selector; the first Python error it
/// raises is kept and stops the job at its end.
struct Selector<'a> {
    select: Option<&'a Py<PyAny>>,
    error: std::sync::Mutex<Option<PyErr>>,
}

impl<'a> Selector<'a> {
    fn new(select: Option<&'a Py<PyAny>>) -> Self {
        Selector { select, error: std::sync::Mutex::new(None) }
    }

    fn choice(&self, e: &Entry) -> Choice {
        let Some(f) = self.select else { return Choice::Default };
        Python::attach(|py| match f.bind(py).call1((&e.name, e.shape.len())).and_then(|r| choice_of(&r)) {
            Ok(choice) => choice,
            Err(err) => {
                self.error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(err);
                Choice::Keep("select() raised".into())
            }
        })
    }

    /// `result`, with a Python error from `select` moved into `callback_error`.
    fn finish<T>(self, result: crate::Result<T>, callback_error: &mut Option<CallbackError>) -> crate::Result<T> {
        if let Some(e) = self.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            *callback_error = Some(CallbackError(e));
        }
        result
    }
}

/// `quantize_file(input, output, spec, format, scale_dtype_given, force, select, progress)`:
/// returns one report dict per tensor, in file order.
#[pyfunction]
#[pyo3(signature = (input, output, spec, format="quantbridge", scale_dtype_given=false, force=false, select=None, progress=None, gguf_type=None))]
#[allow(clippy::too_many_arguments)]
pub fn quantize_file<'py>(
    py: Python<'py>,
    input: PathBuf,
    output: PathBuf,
    spec: &Bound<'py, PyTuple>,
    format: &str,
    scale_dtype_given: bool,
    force: bool,
    select: Option<Py<PyAny>>,
    progress: Option<Py<PyAny>>,
    gguf_type: Option<&str>,
) -> PyResult<Bound<'py, PyList>> {
    let spec = spec_from_tuple(spec)?;
    let format = ServingFormat::parse(format).map_err(|e| to_pyerr(py, e.into(), None))?;
    let gguf_target = gguf_type.map(GgufTarget::parse).transpose().map_err(|e| to_pyerr(py, e.into(), None))?;
    let mut timer = PhaseTimer::start();
    let reports = run_job(py, |callback_error| {
        let selector = Selector::new(select.as_ref());
        let select_fn = |e: &Entry| selector.choice(e);
        let mut on_layer = |r: &LayerReport, done: usize, total: usize| {
            report_progress(progress.as_ref(), callback_error, r, spec.bits, done, total)
        };
        let result = match (gguf_target, format) {
            (Some(target), _) => quantize_gguf_file(&input, &output, target, force, &select_fn, &mut on_layer),
            (None, None) => quantize_checkpoint(&input, &output, &spec, force, &select_fn, &mut on_layer),
            (None, Some(format)) => {
                let job = FolderJob { format, spec, scale_dtype_given, force, select: &select_fn };
                quantize_model_folder(&input, &output, &job, &mut on_layer)
            }
        };
        selector.finish(result, callback_error)
    })?;
    let list = report_list(py, &reports, spec.bits)?;
    let rec = CallRecord {
        api: "quantize_file".into(),
        tensors: reports.iter().filter(|r| r.quantized).count(),
        input_bytes: reports.iter().map(|r| r.input_bytes).sum(),
        output_bytes: reports.iter().map(|r| r.output_bytes).sum(),
        bytes_copied: reports.iter().map(|r| r.bytes_copied).sum(),
        quantize_s: timer.lap(),
        ..CallRecord::default()
    };
    record(py, &rec)?;
    Ok(list)
}

/// `dequantize_file(input, output, *, force, progress)`: a quantbridge `.safetensors`
/// output back to float32 tensors.
#[pyfunction]
#[pyo3(signature = (input, output, *, force=false, progress=None))]
pub fn dequantize_file<'py>(
    py: Python<'py>,
    input: PathBuf,
    output: PathBuf,
    force: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let reports = run_job(py, |callback_error| {
        let mut on_layer = |r: &LayerReport, done: usize, total: usize| {
            report_progress(progress.as_ref(), callback_error, r, 0, done, total)
        };
        dequantize_checkpoint(&input, &output, force, &mut on_layer)
    })?;
    report_list(py, &reports, 0)
}

/// `inspect_file(path)`: `{"path", "metadata", "tensors": [{"name", "dtype", "shape", "nbytes"}]}`.
#[pyfunction]
pub fn inspect_file(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyDict>> {
    let ck = Checkpoint::open(&path).map_err(|e| to_pyerr(py, e.into(), None))?;
    let d = PyDict::new(py);
    d.set_item("path", ck.path.to_string_lossy().into_owned())?;
    d.set_item("metadata", ck.metadata.clone())?;
    let tensors = PyList::empty(py);
    for e in ck.entries() {
        let t = PyDict::new(py);
        t.set_item("name", &e.name)?;
        t.set_item("dtype", match &e.stored_as {
            Some(label) => label.clone(),
            None => format!("{:?}", e.dtype),
        })?;
        t.set_item("shape", &e.shape)?;
        t.set_item("nbytes", e.nbytes)?;
        tensors.append(t)?;
    }
    d.set_item("tensors", tensors)?;
    Ok(d)
}

/// Run one step of a sharded job (`step` gets the job and the per-tensor progress
/// callback) detached, with the caller's spec tuple, format name ("quantbridge" is
/// quantbridge's layout), `select` and `progress`.
#[allow(clippy::too_many_arguments)]
fn run_sharded<T: Send>(
    py: Python<'_>,
    spec: &Bound<'_, PyTuple>,
    format: &str,
    scale_dtype_given: bool,
    select: Option<Py<PyAny>>,
    progress: Option<Py<PyAny>>,
    step: impl FnOnce(&ShardedJob<'_>, &mut dyn FnMut(&LayerReport, usize, usize) -> crate::Result<()>) -> crate::Result<T> + Send,
) -> PyResult<T> {
    let spec = spec_from_tuple(spec)?;
    let format = ServingFormat::parse(format).map_err(|e| to_pyerr(py, e.into(), None))?;
    run_job(py, |callback_error| {
        let selector = Selector::new(select.as_ref());
        let select_fn = |e: &Entry| selector.choice(e);
        let job = ShardedJob { format, spec, scale_dtype_given, select: &select_fn };
        let mut on_layer = |r: &LayerReport, done: usize, total: usize| {
            report_progress(progress.as_ref(), callback_error, r, spec.bits, done, total)
        };
        let result = step(&job, &mut on_layer);
        selector.finish(result, callback_error)
    })
}

/// `shard_plan(input, output, spec, format, scale_dtype_given, force, select)`: check a
/// sharded job as the serial one would before writing; one dict per input shard (`file`,
/// `input_bytes`, `largest_tensor`, `tensors`), in the index's order.
#[pyfunction]
#[pyo3(signature = (input, output, spec, format="quantbridge", scale_dtype_given=false, force=false, select=None))]
#[allow(clippy::too_many_arguments)]
pub fn shard_plan<'py>(
    py: Python<'py>,
    input: PathBuf,
    output: PathBuf,
    spec: &Bound<'py, PyTuple>,
    format: &str,
    scale_dtype_given: bool,
    force: bool,
    select: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let plan = run_sharded(py, spec, format, scale_dtype_given, select, None, |job, _| shards::plan(&input, &output, force, job))?;
    let list = PyList::empty(py);
    for s in plan {
        let d = PyDict::new(py);
        d.set_item("file", s.file)?;
        d.set_item("input_bytes", s.input_bytes)?;
        d.set_item("largest_tensor", s.largest_tensor)?;
        d.set_item("tensors", s.tensors)?;
        list.append(d)?;
    }
    Ok(list)
}

/// `quantize_shard(input, file, folder, spec, format, scale_dtype_given, select, progress)`:
/// write output shard `file` into `folder` (temporary name, synced, read back, renamed);
/// one report dict per tensor of the shard.
#[pyfunction]
#[pyo3(signature = (input, file, folder, spec, format="quantbridge", scale_dtype_given=false, select=None, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn quantize_shard<'py>(
    py: Python<'py>,
    input: PathBuf,
    file: &str,
    folder: PathBuf,
    spec: &Bound<'py, PyTuple>,
    format: &str,
    scale_dtype_given: bool,
    select: Option<Py<PyAny>>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let reports = run_sharded(py, spec, format, scale_dtype_given, select, progress, |job, on_layer| {
        shards::quantize_shard(&input, file, &folder, job, on_layer)
    })?;
    report_list(py, &reports, spec_from_tuple(spec)?.bits)
}

/// `finish_shards(input, folder, spec, format, scale_dtype_given, select)`: write what needs
/// every shard (the index; for a serving format also `config.json` and the input's other
/// files) into `folder`.
#[pyfunction]
#[pyo3(signature = (input, folder, spec, format="quantbridge", scale_dtype_given=false, select=None))]
pub fn finish_shards<'py>(
    py: Python<'py>,
    input: PathBuf,
    folder: PathBuf,
    spec: &Bound<'py, PyTuple>,
    format: &str,
    scale_dtype_given: bool,
    select: Option<Py<PyAny>>,
) -> PyResult<()> {
    run_sharded(py, spec, format, scale_dtype_given, select, None, |job, _| shards::finish(&input, &folder, job))
}
