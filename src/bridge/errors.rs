//! Python exception classes and the one mapping from [`crate::Error`] to them.

use pyo3::exceptions::{PyException, PyUserWarning, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::error::Error;

pyo3::create_exception!(
    quantbridge,
    QuantizationError,
    PyException,
    "Base class of every error quantbridge raises."
);
pyo3::create_exception!(
    quantbridge,
    BatchQuantizationError,
    QuantizationError,
    "One or more layers of a batch failed; `.failures` maps each layer name to its reason."
);
pyo3::create_exception!(
    quantbridge,
    PerformanceWarning,
    PyUserWarning,
    "A call copied its input, or ran far below its usual throughput."
);

pyo3::create_exception!(
    quantbridge,
    QuantizationWarning,
    PyUserWarning,
    "Some layers of a batch run with continue_on_error=True failed; see the result's `.failures`."
);

static VALIDATION_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// `ValidationError(QuantizationError, ValueError)`: two bases, so it is built with `type()`.
pub fn validation_error_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    VALIDATION_ERROR
        .get_or_try_init(py, || {
            let bases = PyTuple::new(py, [py.get_type::<QuantizationError>(), py.get_type::<PyValueError>()])?;
            let namespace = PyDict::new(py);
            namespace.set_item("__module__", "quantbridge")?;
            namespace.set_item(
                "__doc__",
                "Bad input: names the layer, what was found, what was expected, and the fix.",
            )?;
            let ty = py.get_type::<PyType>().call1(("ValidationError", bases, namespace))?;
            Ok(ty.cast_into::<PyType>()?.unbind())
        })
        .map(|t| t.bind(py))
}

/// An engine or bridge error, with the layer it happened in.
#[derive(Debug)]
pub struct LayerError {
    /// The layer's name ("tensor" for a single unnamed call).
    pub layer: String,
    /// What went wrong.
    pub error: Error,
}

impl LayerError {
    /// Attach a layer name to an error.
    pub fn new(layer: &str, error: Error) -> Self {
        LayerError { layer: layer.to_owned(), error }
    }

    /// Convert to the right Python exception, with `layer`, `found`, `expected`, `fix`
    /// (and `index` for non-finite values) as attributes.
    pub fn into_pyerr(self, py: Python<'_>) -> PyErr {
        match self.build(py) {
            Ok(err) | Err(err) => err,
        }
    }

    fn build(self, py: Python<'_>) -> PyResult<PyErr> {
        if let Error::Io(message) = &self.error {
            return Ok(pyo3::exceptions::PyOSError::new_err(message.clone()));
        }
        // File-level errors name their file and tensor themselves.
        let message = if self.layer.is_empty() {
            self.error.to_string()
        } else {
            format!("layer '{}': {}", self.layer, self.error)
        };
        let instance = match self.error.problem() {
            None => py.get_type::<QuantizationError>().call1((message,))?,
            Some(p) => {
                let e = validation_error_type(py)?.call1((message,))?;
                e.setattr("found", p.found)?;
                e.setattr("expected", p.expected)?;
                e.setattr("fix", p.fix)?;
                if let Error::NonFinite { index, .. } = self.error {
                    e.setattr("index", index)?;
                }
                e
            }
        };
        instance.setattr("layer", &self.layer)?;
        Ok(PyErr::from_value(instance))
    }
}

/// Raise a `ValidationError` for `layer` from its three parts.
pub fn validation(py: Python<'_>, layer: &str, found: String, expected: &str, fix: &str) -> PyErr {
    LayerError::new(layer, Error::validation(found, expected, fix)).into_pyerr(py)
}
