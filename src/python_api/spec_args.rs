//! The one place that reads the quantization keywords (`bits`, `group_size`, `symmetric`,
//! `granularity`, `scale_dtype`, `pack`, `stats`) of every entry point into a
//! [`QuantSpec`]. Entry points take them as `**spec` and say which they accept; the public
//! signatures and their documentation live in `python/quantbridge/_api.py`.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyString};

use crate::error::Error;
use crate::foreign::BridgeResult;
use crate::quant::QuantSpec;

/// Which keywords an entry point takes.
#[derive(Debug, Clone, Copy)]
pub enum Accepts {
    /// All seven (quantize, quantize_batch).
    All,
    /// All but `pack` and `stats`: Arrow tables and files are always packed; tables have
    /// no statistics, file reports always do.
    NoPackOrStats,
}

impl Accepts {
    fn allows(self, key: &str) -> bool {
        match self {
            Accepts::All => true,
            Accepts::NoPackOrStats => !matches!(key, "pack" | "stats"),
        }
    }
}

/// The spec's keywords as given, before validation.
struct Options {
    bits: i64,
    group_size: Option<i64>,
    symmetric: bool,
    granularity: String,
    scale_dtype: String,
    pack: bool,
    stats: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bits: 4,
            group_size: Some(128),
            symmetric: false,
            granularity: "group".into(),
            scale_dtype: "float32".into(),
            pack: true,
            stats: false,
        }
    }
}

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

fn str_of(key: &str, value: &Bound<'_, PyAny>, example: &str) -> Result<String, Error> {
    match value.cast::<PyString>() {
        Ok(s) => Ok(s.to_str().map_err(|_| type_error(key, value, "a string", example))?.to_owned()),
        Err(_) => Err(type_error(key, value, "a string", example)),
    }
}

fn unexpected(entry_point: &str, key: &str) -> crate::foreign::BridgeError {
    PyTypeError::new_err(format!("{entry_point}() got an unexpected keyword argument '{key}'")).into()
}

/// The spec from an entry point's `**spec` keywords (defaults for the missing ones).
///
/// An unknown keyword is a `TypeError`, as for any Python function; a value of the wrong
/// type or range is a refusal, raised by the caller as a `ValidationError` for its layer.
pub fn spec_from_kwargs(entry_point: &str, kwargs: Option<&Bound<'_, PyDict>>, accepts: Accepts) -> BridgeResult<QuantSpec> {
    let mut o = Options::default();
    if let Some(kwargs) = kwargs {
        for (key, value) in kwargs.iter() {
            let key = key.str()?.to_str()?.to_owned();
            if !accepts.allows(&key) {
                return Err(unexpected(entry_point, &key));
            }
            let parsed = match key.as_str() {
                "bits" => int_of("bits", &value, "4").map(|v| o.bits = v),
                "group_size" if value.is_none() => {
                    o.group_size = None;
                    Ok(())
                }
                "group_size" => int_of("group_size", &value, "128").map(|v| o.group_size = Some(v)),
                "symmetric" => bool_of("symmetric", &value).map(|v| o.symmetric = v),
                "granularity" => str_of("granularity", &value, "\"group\"").map(|v| o.granularity = v),
                "scale_dtype" => str_of("scale_dtype", &value, "\"float32\"").map(|v| o.scale_dtype = v),
                "pack" => bool_of("pack", &value).map(|v| o.pack = v),
                "stats" => bool_of("stats", &value).map(|v| o.stats = v),
                _ => return Err(unexpected(entry_point, &key)),
            };
            parsed?;
        }
    }
    Ok(QuantSpec::from_options(o.bits, o.group_size, o.symmetric, &o.granularity, &o.scale_dtype, o.pack, o.stats)?)
}
