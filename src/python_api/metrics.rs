//! Process-wide metrics (docs/api.md (metrics)): what every call imported, copied, computed and exported,
//! the throughput per API, the `PerformanceWarning`s, and a `logging` debug record per call.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::Mutex;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use crate::python_api::errors::PerformanceWarning;

/// What one call across the boundary did.
#[derive(Debug, Clone, Default)]
pub struct CallRecord {
    /// The API's public name ("quantize", "Quantizer.quantize_numpy", …).
    pub api: String,
    /// Tensors quantized (or dequantized).
    pub tensors: usize,
    /// Bytes of input tensors.
    pub input_bytes: usize,
    /// Bytes of results.
    pub output_bytes: usize,
    /// Bytes copied to import inputs (0 on every zero-copy path).
    pub bytes_copied: usize,
    /// Why the input had to be copied, when it was.
    pub copy_reason: Option<&'static str>,
    /// Seconds importing (borrowing, validating, or copying on the legacy path).
    pub import_s: f64,
    /// Seconds in the engine.
    pub quantize_s: f64,
    /// Seconds building the results.
    pub export_s: f64,
}

/// Measures the three phases of a call.
pub struct PhaseTimer {
    last: Instant,
}

impl PhaseTimer {
    /// Start timing.
    pub fn start() -> Self {
        PhaseTimer { last: Instant::now() }
    }

    /// Seconds since the previous lap (or the start).
    pub fn lap(&mut self) -> f64 {
        let now = Instant::now();
        let s = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        s
    }
}

#[derive(Debug, Default, Clone)]
struct ApiStats {
    calls: u64,
    /// Calls large enough to say something about throughput.
    samples: u64,
    last_gbps: Option<f64>,
    average_gbps: Option<f64>,
}

#[derive(Debug, Default)]
struct Totals {
    apis: BTreeMap<String, ApiStats>,
    crossings: u64,
    tensors: u64,
    input_bytes: u64,
    output_bytes: u64,
    bytes_copied: u64,
    import_s: f64,
    quantize_s: f64,
    export_s: f64,
}

/// When the degradation warning fires.
#[derive(Debug, Clone, Copy)]
struct WarnConfig {
    /// Warn when a call runs below this fraction of its API's moving average (0 disables).
    fraction: f64,
    /// Only calls with at least this many input bytes are measured (small calls are noise).
    min_bytes: usize,
    /// Calls the moving average needs before it is trusted.
    min_samples: u64,
}

/// Weight of the newest call in the exponential moving average.
const EMA_ALPHA: f64 = 0.2;

static TOTALS: Mutex<Option<Totals>> = Mutex::new(None);
static CONFIG: Mutex<WarnConfig> =
    Mutex::new(WarnConfig { fraction: 0.1, min_bytes: 1 << 20, min_samples: 3 });
static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn with_totals<R>(f: impl FnOnce(&mut Totals) -> R) -> R {
    let mut guard = TOTALS.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(Totals::default))
}

/// What the moving average said about a call.
struct Verdict {
    gbps: f64,
    average: f64,
}

/// Fold `rec` into the totals; emit its warnings and its debug record.
pub fn record(py: Python<'_>, rec: &CallRecord) -> PyResult<()> {
    let config = *CONFIG.lock().unwrap_or_else(|p| p.into_inner());
    let seconds = rec.import_s + rec.quantize_s + rec.export_s;
    let gbps = if seconds > 0.0 { rec.input_bytes as f64 / seconds / 1e9 } else { 0.0 };
    let slow = with_totals(|t| {
        t.crossings += 1;
        t.tensors += rec.tensors as u64;
        t.input_bytes += rec.input_bytes as u64;
        t.output_bytes += rec.output_bytes as u64;
        t.bytes_copied += rec.bytes_copied as u64;
        t.import_s += rec.import_s;
        t.quantize_s += rec.quantize_s;
        t.export_s += rec.export_s;
        let api = t.apis.entry(rec.api.clone()).or_default();
        api.calls += 1;
        if seconds > 0.0 {
            api.last_gbps = Some(gbps);
        }
        // Small calls are dominated by fixed costs: they do not move the average.
        if rec.input_bytes < config.min_bytes || seconds <= 0.0 {
            return None;
        }
        let verdict = match api.average_gbps {
            Some(average) if api.samples >= config.min_samples && gbps < config.fraction * average => {
                Some(Verdict { gbps, average })
            }
            _ => None,
        };
        api.samples += 1;
        api.average_gbps = Some(api.average_gbps.map_or(gbps, |a| a + EMA_ALPHA * (gbps - a)));
        verdict
    });
    if let Some(reason) = rec.copy_reason {
        warn(
            py,
            &format!(
                "{}: {reason} was copied ({} bytes) because it cannot be borrowed; pass a numpy array, torch tensor or pyarrow array to avoid the copy",
                rec.api, rec.bytes_copied
            ),
        )?;
    }
    if let Some(v) = slow {
        warn(
            py,
            &format!(
                "{}: {:.3} GB/s, below {:.0}% of this API's moving average ({:.3} GB/s); see quantbridge.configure_metrics()",
                rec.api,
                v.gbps,
                config.fraction * 100.0,
                v.average
            ),
        )?;
    }
    log_debug(py, rec, gbps)
}

fn warn(py: Python<'_>, message: &str) -> PyResult<()> {
    let message = CString::new(message.replace('\0', " ")).expect("NULs were replaced");
    PyErr::warn(py, &py.get_type::<PerformanceWarning>(), &message, 2)
}

fn log_debug(py: Python<'_>, rec: &CallRecord, gbps: f64) -> PyResult<()> {
    let logger = LOGGER.get_or_try_init(py, || {
        py.import("logging")?.call_method1("getLogger", ("quantbridge",)).map(Bound::unbind)
    })?;
    let logger = logger.bind(py);
    if !logger.call_method1("isEnabledFor", (10,))?.is_truthy()? {
        return Ok(());
    }
    let figures = PyDict::new(py);
    figures.set_item("api", &rec.api)?;
    figures.set_item("tensors", rec.tensors)?;
    figures.set_item("input_bytes", rec.input_bytes)?;
    figures.set_item("output_bytes", rec.output_bytes)?;
    figures.set_item("bytes_copied", rec.bytes_copied)?;
    figures.set_item("import_seconds", rec.import_s)?;
    figures.set_item("quantize_seconds", rec.quantize_s)?;
    figures.set_item("export_seconds", rec.export_s)?;
    figures.set_item("throughput_gbps", gbps)?;
    let extra = PyDict::new(py);
    extra.set_item("quantbridge", &figures)?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("extra", extra)?;
    logger.call_method(
        "debug",
        (
            "%s: %d tensor(s), %d bytes in, %d bytes out, %d bytes copied, %.3f GB/s",
            &rec.api,
            rec.tensors,
            rec.input_bytes,
            rec.output_bytes,
            rec.bytes_copied,
            gbps,
        ),
        Some(&kwargs),
    )?;
    Ok(())
}

/// A snapshot of every figure since the last reset.
///
/// Returns:
///     dict: ``calls`` per API, ``boundary_crossings``, ``tensors``, ``input_bytes``,
///     ``output_bytes``, ``bytes_copied`` (0 on every zero-copy path), seconds in
///     ``import`` / ``quantize`` / ``export``, and per API the last and moving-average
///     throughput in GB/s (docs/api.md).
#[pyfunction]
pub fn metrics(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let (apis, t) = with_totals(|t| {
        (
            t.apis.clone(),
            (t.crossings, t.tensors, t.input_bytes, t.output_bytes, t.bytes_copied, t.import_s, t.quantize_s, t.export_s),
        )
    });
    let d = PyDict::new(py);
    let calls = PyDict::new(py);
    let throughput = PyDict::new(py);
    for (name, s) in &apis {
        calls.set_item(name, s.calls)?;
        let tp = PyDict::new(py);
        tp.set_item("last", s.last_gbps)?;
        tp.set_item("moving_average", s.average_gbps)?;
        throughput.set_item(name, tp)?;
    }
    d.set_item("calls", calls)?;
    d.set_item("boundary_crossings", t.0)?;
    d.set_item("tensors", t.1)?;
    d.set_item("input_bytes", t.2)?;
    d.set_item("output_bytes", t.3)?;
    d.set_item("bytes_copied", t.4)?;
    d.set_item("import_seconds", t.5)?;
    d.set_item("quantize_seconds", t.6)?;
    d.set_item("export_seconds", t.7)?;
    d.set_item("throughput_gbps", throughput)?;
    Ok(d)
}

/// Clear every figure; the settings of ``configure_metrics`` stay.
///
/// Returns:
///     None.
#[pyfunction]
pub fn reset_metrics() {
    with_totals(|t| *t = Totals::default());
}

/// Set when the slow-call ``PerformanceWarning`` fires; arguments left None keep their value.
///
/// Args:
///     degradation_fraction: warn when a call runs below this fraction (0 never warns) of its API's
///         moving-average throughput (default 0.1).
///     min_bytes: only calls reading at least this many bytes are judged (default 1 MiB).
///     min_samples: calls of an API needed before its average is trusted (default 3).
///
/// Returns:
///     dict: the settings now in force.
///
/// Raises:
///     ValueError: a fraction outside [0, 1] (0 never warns).
#[pyfunction]
#[pyo3(signature = (*, degradation_fraction=None, min_bytes=None, min_samples=None))]
pub fn configure_metrics(
    py: Python<'_>,
    degradation_fraction: Option<f64>,
    min_bytes: Option<usize>,
    min_samples: Option<u64>,
) -> PyResult<Bound<'_, PyDict>> {
    if let Some(f) = degradation_fraction {
        if !(0.0..=1.0).contains(&f) {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "degradation_fraction={f}: expected a fraction between 0 (never warn) and 1"
            )));
        }
    }
    let mut c = CONFIG.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = degradation_fraction {
        c.fraction = f;
    }
    if let Some(b) = min_bytes {
        c.min_bytes = b;
    }
    if let Some(s) = min_samples {
        c.min_samples = s;
    }
    let d = PyDict::new(py);
    d.set_item("degradation_fraction", c.fraction)?;
    d.set_item("min_bytes", c.min_bytes)?;
    d.set_item("min_samples", c.min_samples)?;
    Ok(d)
}
