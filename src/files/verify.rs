//! Every output is read back before it is renamed into place, by the reader its users
//! have: the safetensors crate for `.safetensors` (the same checks as the Python package:
//! header, offsets in range, no overlap, the whole file covered), arrow-ipc for `.arrow`.
//! So exit 0 means the file loads.

use std::fs::File;
use std::path::Path;

use arrow_ipc::reader::FileReader;
use arrow_array::{Array, StringArray};
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::files::mmap;
use crate::files::output::HeaderEntry;

fn unreadable(path: &Path, what: String) -> Error {
    Error::Internal(format!("the output written to {} does not read back ({what}); it was removed", path.display()))
}

/// `path` parses as safetensors and holds exactly `expected` (names, dtypes, shapes, sizes).
pub fn safetensors_file(path: &Path, expected: &[HeaderEntry]) -> Result<()> {
    let map = mmap::map(path)?;
    let st = SafeTensors::deserialize(&map).map_err(|e| unreadable(path, e.to_string()))?;
    if st.len() != expected.len() {
        return Err(unreadable(path, format!("{} tensors where {} were written", st.len(), expected.len())));
    }
    for e in expected {
        let t = st.tensor(&e.name).map_err(|err| unreadable(path, format!("{:?}: {err}", e.name)))?;
        if t.dtype() != e.dtype || t.shape() != e.shape.as_slice() || t.data().len() != e.nbytes {
            return Err(unreadable(path, format!("{:?} reads back as {:?} {:?}", e.name, t.dtype(), t.shape())));
        }
    }
    Ok(())
}

/// `path` opens as an Arrow IPC file whose rows are exactly `names`, in order, every batch
/// fully validated.
pub fn arrow_file<'a>(path: &Path, names: impl Iterator<Item = &'a str>) -> Result<()> {
    let file = File::open(path).map_err(|e| unreadable(path, e.to_string()))?;
    let reader = FileReader::try_new(file, None).map_err(|e| unreadable(path, e.to_string()))?;
    let mut names = names;
    for batch in reader {
        let batch = batch.map_err(|e| unreadable(path, e.to_string()))?;
        for column in batch.columns() {
            column.to_data().validate_full().map_err(|e| unreadable(path, e.to_string()))?;
        }
        let written = batch
            .column_by_name("layer_name")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
            .ok_or_else(|| unreadable(path, "no layer_name column".into()))?;
        for row in 0..written.len() {
            let expected = names.next().ok_or_else(|| unreadable(path, "more rows than were written".into()))?;
            if written.is_null(row) || written.value(row) != expected {
                return Err(unreadable(path, format!("row {row} is not {expected:?}")));
            }
        }
    }
    match names.next() {
        Some(missing) => Err(unreadable(path, format!("{missing:?} is missing"))),
        None => Ok(()),
    }
}
