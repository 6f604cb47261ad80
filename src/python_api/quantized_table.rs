//! `quantize_arrow` / `quantize_arrow_batch` (docs/formats.md (Arrow tables)) and their result, `QuantizedTable`:
//! a record batch built in Rust that leaves through the Arrow PyCapsule Interface.

use arrow_array::RecordBatch;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyTuple};

use crate::error::Error;
use crate::foreign::from_python::arrow_table::table_layers;
use crate::foreign::to_python::arrow::{batch_capsules, stream_capsule};
use crate::python_api::batch::batch_error;
use crate::python_api::metrics::{record, CallRecord, PhaseTimer};
use crate::python_api::run::detached;
use crate::python_api::spec_args::spec_from_tuple;
use crate::quant::TensorView;
use crate::tables::{quantize_rows, TableFailure};

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

    fn __len__(&self) -> usize {
        self.batch.num_rows()
    }

    fn __repr__(&self) -> String {
        format!("QuantizedTable(num_rows={}, columns={:?})", self.batch.num_rows(), self.column_names())
    }
}

/// Quantize every row of `table_like` into one [`QuantizedTable`].
fn quantize_table(
    py: Python<'_>,
    table_like: &Bound<'_, PyAny>,
    prefer_stream: bool,
    api: &str,
    spec: &Bound<'_, PyTuple>,
) -> PyResult<QuantizedTable> {
    let spec = spec_from_tuple(spec)?;
    let mut timer = PhaseTimer::start();
    let (layers, failures) = table_layers(table_like, prefer_stream)?;
    if !failures.is_empty() {
        return Err(batch_error(py, &failures));
    }
    let import_s = timer.lap();
    let views: Vec<(String, TensorView<'_>)> = layers.iter().map(|l| (l.name.clone(), l.tensor.view())).collect();
    let outcome = detached(py, None, || Ok::<_, Error>(quantize_rows(&views, &spec)))?;
    let quantize_s = timer.lap();
    let input_bytes: usize = layers.iter().map(|l| l.tensor.nbytes()).sum();
    drop(views);
    drop(layers); // the producer's buffers are released here, after the last read
    let (parts, _stats) = outcome.map_err(|failure| match failure {
        TableFailure::Table(e) => PyErr::from(e),
        TableFailure::Rows(failures) => batch_error(py, &failures),
    })?;
    let tensors = parts.names.len();
    let output_bytes = parts.codes.len() + parts.scales.len() + parts.zero_points.len();
    let batch = parts
        .into_batch()
        .map_err(|e| Error::Internal(format!("building the Arrow output failed: {e}")))?;
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

/// `quantize_arrow(table_like, spec)`: a table (anything with `__arrow_c_stream__` or
/// `__arrow_c_array__`) with columns `layer_name`, `weights`[, `shape`].
#[pyfunction]
#[pyo3(signature = (table_like, spec, api=None))]
pub fn quantize_arrow(
    py: Python<'_>,
    table_like: &Bound<'_, PyAny>,
    spec: &Bound<'_, PyTuple>,
    api: Option<&str>,
) -> PyResult<QuantizedTable> {
    quantize_table(py, table_like, true, api.unwrap_or("quantize_arrow"), spec)
}

/// `quantize_arrow_batch(record_batch_like, spec)`: one record batch (`__arrow_c_array__`
/// preferred) with the same columns.
#[pyfunction]
#[pyo3(signature = (record_batch_like, spec, api=None))]
pub fn quantize_arrow_batch(
    py: Python<'_>,
    record_batch_like: &Bound<'_, PyAny>,
    spec: &Bound<'_, PyTuple>,
    api: Option<&str>,
) -> PyResult<QuantizedTable> {
    quantize_table(py, record_batch_like, false, api.unwrap_or("quantize_arrow_batch"), spec)
}
