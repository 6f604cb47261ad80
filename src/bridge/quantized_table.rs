//! `quantize_arrow` / `quantize_arrow_batch` (SPEC §5) and their result, `QuantizedTable`:
//! a record batch built in Rust that leaves through the Arrow PyCapsule Interface.

use arrow_array::RecordBatch;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyTuple};

use crate::bridge::ffi::to_python::arrow::{batch_capsules, stream_capsule};
use crate::bridge::functions::spec_from_options;
use crate::bridge::metrics::{record, CallRecord, PhaseTimer};
use crate::bridge::run::detached;
use crate::bridge::batch::batch_error;
use crate::bridge::table::{quantize_rows, table_layers};
use crate::error::Error;
use crate::quant::TensorView;

/// The quantized layers of a table: columns `layer_name`, `codes` (large_binary), `scales`,
/// `zero_points`, `shape`, `bits`, `group_size`, `symmetric`. Take it with
/// `pyarrow.table(result)` or `polars.from_arrow(result)`; nothing is copied.
#[pyclass(frozen, module = "quantbridge", name = "QuantizedTable")]
pub struct QuantizedTable {
    batch: RecordBatch,
}

#[pymethods]
impl QuantizedTable {
    /// The Arrow C stream of this table (one record batch).
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(&self, py: Python<'py>, requested_schema: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyCapsule>> {
        stream_capsule(py, &self.batch, requested_schema)
    }

    /// The table as one Arrow struct array (a record batch).
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(&self, py: Python<'py>, requested_schema: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyTuple>> {
        batch_capsules(py, &self.batch, requested_schema)
    }

    /// Number of layers (rows).
    #[getter]
    fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// Column names.
    #[getter]
    fn column_names(&self) -> Vec<String> {
        self.batch.schema().fields().iter().map(|f| f.name().clone()).collect()
    }

    fn __len__(&self) -> usize {
        self.batch.num_rows()
    }

    fn __repr__(&self) -> String {
        format!("QuantizedTable(num_rows={}, columns={:?})", self.batch.num_rows(), self.column_names())
    }
}

/// Quantize every row of `table_like` into one [`QuantizedTable`].
#[allow(clippy::too_many_arguments)]
fn quantize_table(
    py: Python<'_>,
    table_like: &Bound<'_, PyAny>,
    prefer_stream: bool,
    api: &str,
    bits: i64,
    group_size: Option<i64>,
    symmetric: bool,
    granularity: &str,
    scale_dtype: &str,
) -> PyResult<QuantizedTable> {
    let spec = spec_from_options(py, "table", bits, group_size, symmetric, granularity, scale_dtype, true, false)?;
    let mut timer = PhaseTimer::start();
    let (layers, failures) = table_layers(table_like, prefer_stream)?;
    if !failures.is_empty() {
        return Err(batch_error(py, &failures));
    }
    let import_s = timer.lap();
    let views: Vec<(String, TensorView<'_>)> = layers.iter().map(|l| (l.name.clone(), l.tensor.view())).collect();
    let outcome = detached(py, "table", || Ok::<_, Error>(quantize_rows(&views, &spec)))?;
    let quantize_s = timer.lap();
    let input_bytes: usize = layers.iter().map(|l| l.tensor.nbytes()).sum();
    drop(views);
    drop(layers); // the producer's buffers are released here, after the last read
    let (parts, _stats) = outcome.map_err(|failures| batch_error(py, &failures))?;
    let tensors = parts.names.len();
    let output_bytes = parts.codes.len() + parts.scales.len() + parts.zero_points.len();
    let batch = parts
        .into_batch()
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("building the Arrow output failed: {e}")))?;
    let rec = CallRecord {
        api: api.to_owned(),
        tensors,
        input_bytes,
        output_bytes,
        bytes_copied: 0,
        copy_reason: None,
        import_s,
        quantize_s,
        export_s: timer.lap(),
    };
    record(py, &rec)?;
    Ok(QuantizedTable { batch })
}

/// `quantize_arrow(table_like, **spec)`: a table (anything with `__arrow_c_stream__` or
/// `__arrow_c_array__`) with columns `layer_name`, `weights`[, `shape`].
#[pyfunction]
#[pyo3(signature = (table_like, *, bits=4, group_size=Some(128), symmetric=false, granularity="group", scale_dtype="float32", _api=None))]
#[allow(clippy::too_many_arguments)]
pub fn quantize_arrow(
    py: Python<'_>,
    table_like: &Bound<'_, PyAny>,
    bits: i64,
    group_size: Option<i64>,
    symmetric: bool,
    granularity: &str,
    scale_dtype: &str,
    _api: Option<&str>,
) -> PyResult<QuantizedTable> {
    let api = _api.unwrap_or("quantize_arrow");
    quantize_table(py, table_like, true, api, bits, group_size, symmetric, granularity, scale_dtype)
}

/// `quantize_arrow_batch(record_batch_like, **spec)`: one record batch (`__arrow_c_array__`
/// preferred) with the same columns.
#[pyfunction]
#[pyo3(signature = (record_batch_like, *, bits=4, group_size=Some(128), symmetric=false, granularity="group", scale_dtype="float32", _api=None))]
#[allow(clippy::too_many_arguments)]
pub fn quantize_arrow_batch(
    py: Python<'_>,
    record_batch_like: &Bound<'_, PyAny>,
    bits: i64,
    group_size: Option<i64>,
    symmetric: bool,
    granularity: &str,
    scale_dtype: &str,
    _api: Option<&str>,
) -> PyResult<QuantizedTable> {
    let api = _api.unwrap_or("quantize_arrow_batch");
    quantize_table(py, record_batch_like, false, api, bits, group_size, symmetric, granularity, scale_dtype)
}
