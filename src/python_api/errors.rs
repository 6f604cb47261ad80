//! Python exception classes and the one mapping from quantbridge's errors ([`Error`],
//! [`BridgeError`]) to them.

use pyo3::exceptions::{PyException, PyOSError, PyUserWarning, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::error::{Error, Problem};
use crate::foreign::BridgeError;

pyo3::create_exception!(
    quantbridge,
    QuantizationError,
    PyException,
    "Base class of every error quantbridge raises."
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

/// A class of the `quantbridge` module made with `type(name, bases, namespace)`, for the
/// types a `#[pyclass]` cannot express (two bases, a `dict` subclass); `namespace` starts
/// with `__module__` and `__doc__`, and `attributes` adds to it.
pub fn python_type<'py, const N: usize>(
    py: Python<'py>,
    name: &str,
    bases: [Bound<'py, PyType>; N],
    doc: &str,
    attributes: &[(&str, Bound<'py, PyAny>)],
) -> PyResult<Py<PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", "quantbridge")?;
    namespace.set_item("__doc__", doc)?;
    for (key, value) in attributes {
        namespace.set_item(key, value)?;
    }
    let ty = py.get_type::<PyType>().call1((name, PyTuple::new(py, bases)?, namespace))?;
    Ok(ty.cast_into::<PyType>()?.unbind())
}

/// `ValidationError(QuantizationError, ValueError)`: two bases, so it is built with `type()`.
pub fn validation_error_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    VALIDATION_ERROR
        .get_or_try_init(py, || {
            let bases = [py.get_type::<QuantizationError>(), py.get_type::<PyValueError>()];
            let doc = "Bad input: names the layer, what was found, what was expected, and the fix.";
            python_type(py, "ValidationError", bases, doc, &[])
        })
        .map(|t| t.bind(py))
}

static BATCH_QUANTIZATION_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// `BatchQuantizationError(QuantizationError, ValueError)`: layers failed because of what
/// they hold (NaN, a dtype, a shape), so it is a `ValueError` as the original system's
/// batch errors are (docs/compat.md).
pub fn batch_error_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    BATCH_QUANTIZATION_ERROR
        .get_or_try_init(py, || {
            let bases = [py.get_type::<QuantizationError>(), py.get_type::<PyValueError>()];
            let doc = "One or more layers of a batch failed; `.failures` maps each layer name to its reason.";
            python_type(py, "BatchQuantizationError", bases, doc, &[])
        })
        .map(|t| t.bind(py))
}

impl BridgeError {
    /// The found / expected / fix parts, when the caller can fix the problem.
    pub fn problem(&self) -> Option<Problem> {
        match self {
            BridgeError::Refused(e) => e.problem(),
            BridgeError::ProducerRaised { method, fix, cause } => Some(Problem {
                found: format!("a producer whose {method}() raised {cause}"),
                expected: format!("a producer whose {method}() exports its memory"),
                fix: (*fix).to_owned(),
            }),
            BridgeError::Python(_) => None,
        }
    }

}

/// What went wrong, as one line without the layer (a batch's `.failures` values).
impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BridgeError::Refused(e) => write!(f, "{e}"),
            BridgeError::Python(e) => write!(f, "{e}"),
            BridgeError::ProducerRaised { .. } => match self.problem() {
                Some(p) => write!(f, "{p}"),
                None => Ok(()),
            },
        }
    }
}

/// The one conversion from quantbridge's errors to Python exceptions: `ValidationError`
/// (with `found`, `expected`, `fix`, `layer`, and `index` for non-finite values) for what
/// the caller can fix, `OSError` for files, `QuantizationError` for the rest. `layer` is
/// attached here and nowhere else; file errors name their file and tensor themselves.
pub fn to_pyerr(py: Python<'_>, err: BridgeError, layer: Option<&str>) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let message = match layer {
            Some(l) => format!("layer '{l}': {err}"),
            None => err.to_string(),
        };
        let instance = match (&err, err.problem()) {
            (BridgeError::Python(e), _) => return Ok(e.clone_ref(py)),
            (BridgeError::Refused(Error::Io(m)), _) => return Ok(PyOSError::new_err(m.clone())),
            (_, None) => py.get_type::<QuantizationError>().call1((message,))?,
            (_, Some(p)) => {
                let e = validation_error_type(py)?.call1((message,))?;
                e.setattr("found", p.found)?;
                e.setattr("expected", p.expected)?;
                e.setattr("fix", p.fix)?;
                if let BridgeError::Refused(Error::NonFinite { index, .. }) = &err {
                    e.setattr("index", *index)?;
                }
                e
            }
        };
        instance.setattr("layer", layer.unwrap_or(""))?;
        let pyerr = PyErr::from_value(instance);
        if let BridgeError::ProducerRaised { cause, .. } = &err {
            pyerr.set_cause(py, Some(cause.clone_ref(py)));
        }
        Ok(pyerr)
    };
    build().unwrap_or_else(|e| e)
}

impl From<BridgeError> for PyErr {
    fn from(err: BridgeError) -> PyErr {
        Python::attach(|py| to_pyerr(py, err, None))
    }
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        BridgeError::Refused(err).into()
    }
}

/// Map a result's error with [`to_pyerr`] for `layer`.
pub trait InLayer<T> {
    /// The Python exception for `layer`.
    fn in_layer(self, py: Python<'_>, layer: &str) -> PyResult<T>;
}

impl<T, E: Into<BridgeError>> InLayer<T> for std::result::Result<T, E> {
    fn in_layer(self, py: Python<'_>, layer: &str) -> PyResult<T> {
        self.map_err(|e| to_pyerr(py, e.into(), Some(layer)))
    }
}
