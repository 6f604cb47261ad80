//! The crate's one error type. Pure Rust: the Python bridge maps each kind to
//! the right exception class (`bridge::errors`).

use std::fmt;

/// What was wrong with an input, in the three parts every message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What the input turned out to be ("dtype int32", "a NaN at flat index 7").
    pub found: String,
    /// What quantbridge accepts there.
    pub expected: String,
    /// How the caller gets from `found` to `expected`.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "found {}; expected {}. Fix: {}", self.found, self.expected, self.fix)
    }
}

/// Every way a quantbridge call can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input (tensor, spec or file) is not acceptable; the caller can fix it.
    #[error("{0}")]
    Validation(Problem),
    /// A value is NaN or infinite. `index` is the flat row-major index of the first one.
    #[error("{}", self.problem().expect("NonFinite has a problem"))]
    NonFinite {
        /// Flat (row-major, logical) index of the first non-finite element.
        index: usize,
        /// The offending value as read in float32.
        value: f32,
    },
    /// A file could not be read or written (missing, unreadable, unwritable, exists).
    #[error("{0}")]
    Io(String),
    /// The input changed while it was being read: another thread wrote to a tensor during
    /// the call, or another process rewrote a file during the job. `what` says where.
    #[error("{what} changed while quantbridge was reading it, so no result was produced. Fix: do not write to an input (a tensor, or a checkpoint file) while a call reads it; see docs/trust-model.md")]
    InputChanged {
        /// The input, e.g. "the tensor" or "model.safetensors (now 100 bytes, was 4096)".
        what: String,
    },
    /// A bug or broken invariant inside quantbridge, not the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The found / expected / fix parts of a caller-fixable error (`None` for internal ones).
    pub fn problem(&self) -> Option<Problem> {
        match self {
            Error::Validation(p) => Some(p.clone()),
            Error::NonFinite { index, value } => Some(Problem {
                found: format!("a tensor that contains NaN or Inf ({value} at index {index}, flat row-major)"),
                expected: "only finite values".into(),
                fix: "replace NaN/Inf before quantizing (e.g. numpy.nan_to_num or torch.nan_to_num)".into(),
            }),
            Error::Io(_) | Error::InputChanged { .. } | Error::Internal(_) => None,
        }
    }

    /// Shorthand for a [`Error::Validation`].
    pub fn validation(
        found: impl Into<String>,
        expected: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Error::Validation(Problem { found: found.into(), expected: expected.into(), fix: fix.into() })
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
