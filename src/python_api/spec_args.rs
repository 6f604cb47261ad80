//! The one place that reads the quantization spec (`bits`, `group_size`, `symmetric`,
//! `granularity`, `scale_dtype`, `pack`, `stats`) of every entry point into a
//! [`QuantSpec`]. The public functions (`python/quantbridge/_api.py`) own the keyword
//! signatures and their documentation, and pass the values here as one tuple in
//! [`KEYWORDS`] order (`_api._spec`): a positional tuple costs a fraction of what seven
//! keywords cost on every call.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyString, PyTuple};

use crate::error::Error;
use crate::foreign::BridgeResult;
use crate::quant::QuantSpec;

/// The spec's keywords, in the order of the tuple the Python layer passes.
pub const KEYWORDS: [&str; 7] = ["bits", "group_size", "symmetric", "granularity", "scale_dtype", "pack", "stats"];

fn type_error(key: &str, value: &Bound<'_, PyAny>, expected: &str, example: &str) -> Error {
    let shown = value.repr().map(|r| r.to_string()).unwrap_or_else(|_| "?".into());
    let type_name = value.get_type().name().map(|n| n.to_string()).unwrap_or_default();
    Error::validation(format!("{key}={shown} (a {type_name})"), expected.to_owned(), format!("pass {key}={example}"))
}

fn int_of(key: &str, value: &Bound<'_, PyAny>, example: &str) -> Result<i64, Error> {
    // bool is an int subclass in Python; `bits=True` is a mistake, not 1.
    if value.is_instance_of::<PyInt>() && !value.is_instance_of::<PyBool>() {
        if let Ok(v) = value.extract::<i64>() {
            return Ok(v);
        }
    }
    Err(type_error(key, value, "an integer", example))
}

fn bool_of(key: &str, value: &Bound<'_, PyAny>) -> Result<bool, Error> {
    value.extract::<bool>().map_err(|_| type_error(key, value, "True or False", "True"))
}

fn str_of<'a>(key: &str, value: &'a Bound<'_, PyAny>, example: &str) -> Result<&'a str, Error> {
    let text = value.cast::<PyString>().ok().and_then(|s| s.to_str().ok());
    text.ok_or_else(|| type_error(key, value, "a string", example))
}

/// The spec from the tuple `(bits, group_size, symmetric, granularity, scale_dtype, pack,
/// stats)`. A value of the wrong type or range is a refusal, raised by the caller as a
/// `ValidationError` for its layer.
pub fn spec_from_tuple(spec: &Bound<'_, PyTuple>) -> BridgeResult<QuantSpec> {
    if spec.len() != KEYWORDS.len() {
        let message = format!("the spec is the tuple {KEYWORDS:?} that quantbridge._api._spec builds, not {} values", spec.len());
        return Err(PyTypeError::new_err(message).into());
    }
    let item = |i: usize| spec.get_item(i);
    let (bits, group_size, symmetric) = (item(0)?, item(1)?, item(2)?);
    let (granularity, scale_dtype, pack, stats) = (item(3)?, item(4)?, item(5)?, item(6)?);
    let group_size = if group_size.is_none() { None } else { Some(int_of("group_size", &group_size, "128")?) };
    Ok(QuantSpec::from_options(
        int_of("bits", &bits, "4")?,
        group_size,
        bool_of("symmetric", &symmetric)?,
        str_of("granularity", &granularity, "\"group\"")?,
        str_of("scale_dtype", &scale_dtype, "\"float32\"")?,
        bool_of("pack", &pack)?,
        bool_of("stats", &stats)?,
    )?)
}
