//! Foreign memory: the one borrowed-pointer guard ([`borrowed`]), the importers that turn
//! a Python producer into it ([`from_python`], in the producer order of [`import`]), and
//! the exporters that hand Rust-owned results out without a copy ([`to_python`],
//! [`storage`]). Every `unsafe` block outside the SIMD kernels lives here.
//!
//! Nothing here builds a Python exception: importers and exporters return
//! [`BridgeError`], and the Python surface turns it into the right exception in one
//! place (`python_api::errors`), attaching the layer name once. The trust model is in
//! `docs/trust-model.md`.

pub mod borrowed;
pub mod capsule_names;
pub mod from_python;
pub mod import;
pub mod storage;
pub mod to_python;

use pyo3::PyErr;

use crate::error::Error;

/// Why a Python object could not be borrowed or exported.
#[derive(Debug)]
pub enum BridgeError {
    /// quantbridge refuses what the producer described (found / expected / fix).
    Refused(Error),
    /// The producer's own export method (`__dlpack__`, `__arrow_c_array__`, …) raised;
    /// its exception becomes the `__cause__` of ours.
    ProducerRaised {
        /// The method that raised, e.g. `"__dlpack__"`.
        method: &'static str,
        /// What to do instead.
        fix: &'static str,
        /// The producer's exception.
        cause: PyErr,
    },
    /// The interpreter itself failed (an attribute lookup or a call raised); passed on.
    Python(PyErr),
}

impl BridgeError {
    /// A refusal from its three parts.
    pub fn refused(found: impl Into<String>, expected: impl Into<String>, fix: impl Into<String>) -> Self {
        BridgeError::Refused(Error::validation(found, expected, fix))
    }
}

impl From<Error> for BridgeError {
    fn from(e: Error) -> Self {
        BridgeError::Refused(e)
    }
}

impl From<PyErr> for BridgeError {
    fn from(e: PyErr) -> Self {
        BridgeError::Python(e)
    }
}

/// Result of an import or export.
pub type BridgeResult<T> = std::result::Result<T, BridgeError>;
