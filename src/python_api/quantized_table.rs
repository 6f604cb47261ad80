//! `quantize_arrow` / `quantize_arrow_batch` (docs/formats.md (Arrow tables)) and their result, `QuantizedTable`:
//! a record batch built in Rust that leaves through the Arrow PyCapsule Interface.

use arrow_array::RecordBatch;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict, PyTuple};

use crate::error::Error;
use crate::foreign::from_python::arrow_table::table_layers;
use crate::foreign::to_python::arrow::{batch_capsules, stream_capsule};
use crate::python_api::batch::{batch_error, failure_dict};
use crate::python_api::metrics::{record, CallRecord, PhaseTimer};
use crate::python_api::run::detached;
use crate::python_api::spec_args::spec_from_tuple;
use crate::quant::TensorView;
use crate::tables::{quantize_rows, FailedRows, TableFailure};

/// The quantized layers of a table: columns `layer_name`, `codes` (large_binary), `scales`,
/// `zero_points`, `shape`, `bits`, `group_size`, `symmetric`. Take it with
/// `pyarrow.table(result)` or `polars.from_arrow(result)`; nothing is copied.
#[pyclass(frozen, module = "quantbridge", name = "QuantizedTable")]
pub struct QuantizedTable {
    batch: RecordBatch,
    /// `(layer name, reason)` of the rows left out (`continue_on_error=True`).
    failures: Vec<(String, String)>,
}

#[pymethods]
impl QuantizedTable {
    /// The Arrow C stream of this table (one record batch).
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(&self, py: Python<'py>, requested_schema: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyCapsule>> {
        Ok(stream_capsule(py, &self.batch, requested_schema)?)
    }

    /// The table as one Arrow struct array (a record batch).
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(&self, py: Python<'py>, requested_schema: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyTuple>> {
        Ok(batch_capsules(py, &self.batch, requested_schema)?)
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

    /// `{layer name: reason}` for the rows left out with `continue_on_error=True`.
    #[getter]
    fn failures<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        failure_dict(py, &self.failures)
    }

    fn __len__(&self) -> usize {
        self.batch.num_rows()
    }

    fn __repr__(&self) -> String {
        format!("QuantizedTable(num_rows={}, columns={:?})", self.batch.num_rows(), self.column_names())
    }
}

/// Which schema a table call returns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TableLayout {
    /// docs/formats.md (Arrow tables).
    Quantbridge,
    /// The original system's (docs/compat.md).
    ArrowQuantV2,
}

impl TableLayout {
    fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "quantbridge" => Ok(TableLayout::Quantbridge),
            "arrow_quant_v2" => Ok(TableLayout::ArrowQuantV2),
            other => Err(Error::validation(format!("layout={other:?}"), "\"quantbridge\" or \"arrow_quant_v2\"", "leave layout at its default")),
        }
    }
}

/// How a table call runs: its API name (metrics), failure policy and output schema.
struct TableCall<'a> {
    api: &'a str,
    continue_on_error: bool,
    layout: TableLayout,
}

/// Quantize every row of `table_like` into one [`QuantizedTable`].
fn quantize_table(
    py: Python<'_>,
    table_like: &Bound<'_, PyAny>,
    prefer_stream: bool,
    call: TableCall<'_>,
    spec: &Bound<'_, PyTuple>,
) -> PyResult<QuantizedTable> {
    let spec = spec_from_tuple(spec)?;
    let mut timer = PhaseTimer::start();
    let (layers, import_failures) = table_layers(table_like, prefer_stream)?;
    if !import_failures.is_empty() && !call.continue_on_error {
        return Err(batch_error(py, &import_failures));
    }
    let import_s = timer.lap();
    let views: Vec<(String, TensorView<'_>)> = layers.iter().map(|l| (l.name.clone(), l.tensor.view())).collect();
    let failed = if call.continue_on_error { FailedRows::Skip } else { FailedRows::Fail };
    let outcome = detached(py, None, || Ok::<_, Error>(quantize_rows(&views, &spec, failed)))?;
    let quantize_s = timer.lap();
    let input_bytes: usize = layers.iter().map(|l| l.tensor.nbytes()).sum();
    drop(views);
    drop(layers); // the producer's buffers are released here, after the last read
    let rows = outcome.map_err(|failure| match failure {
        TableFailure::Table(e) => PyErr::from(e),
        TableFailure::Rows(failures) => batch_error(py, &failures),
    })?;
    let parts = rows.parts;
    let mut failures: Vec<(String, String)> = import_failures.into_iter().map(|(n, e)| (n, e.to_string())).collect();
    failures.extend(rows.skipped.into_iter().map(|(n, e)| (n, e.to_string())));
    let tensors = parts.names.len();
    let output_bytes = parts.codes.len() + parts.scales.len() + parts.zero_points.len();
    let batch = match call.layout {
        TableLayout::Quantbridge => parts.into_batch(),
        TableLayout::ArrowQuantV2 => parts.into_legacy_batch(),
    }
    .map_err(|e| Error::Internal(format!("building the Arrow output failed: {e}")))?;
    let rec = CallRecord {
        api: call.api.to_owned(),
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
    Ok(QuantizedTable { batch, failures })
}

/// `quantize_arrow(table_like, spec, api=None, continue_on_error=False, layout="quantbridge")`:
/// a table (anything with `__arrow_c_stream__` or `__arrow_c_array__`) with columns
/// `layer_name`, `weights`[, `shape`].
#[pyfunction]
#[pyo3(signature = (table_like, spec, api=None, continue_on_error=false, layout="quantbridge"))]
pub fn quantize_arrow(
    py: Python<'_>,
    table_like: &Bound<'_, PyAny>,
    spec: &Bound<'_, PyTuple>,
    api: Option<&str>,
    continue_on_error: bool,
    layout: &str,
) -> PyResult<QuantizedTable> {
    let call = TableCall { api: api.unwrap_or("quantize_arrow"), continue_on_error, layout: TableLayout::parse(layout)? };
    quantize_table(py, table_like, true, call, spec)
}

/// `quantize_arrow_batch(record_batch_like, spec, ...)`: one record batch (`__arrow_c_array__`
/// preferred) with the same columns.
#[pyfunction]
#[pyo3(signature = (record_batch_like, spec, api=None, continue_on_error=false, layout="quantbridge"))]
pub fn quantize_arrow_batch(
    py: Python<'_>,
    record_batch_like: &Bound<'_, PyAny>,
    spec: &Bound<'_, PyTuple>,
    api: Option<&str>,
    continue_on_error: bool,
    layout: &str,
) -> PyResult<QuantizedTable> {
    let call = TableCall { api: api.unwrap_or("quantize_arrow_batch"), continue_on_error, layout: TableLayout::parse(layout)? };
    quantize_table(py, record_batch_like, false, call, spec)
}
