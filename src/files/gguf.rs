//! GGUF (llama.cpp's file format, version 3 and 2): a bounds-checked header reader and the
//! writer the requantizing job uses (docs/gguf.md).
//!
//! Layout: magic `GGUF`, version (u32), tensor count and key/value count (u64), the
//! key/values, one info per tensor (name, dims innermost first, ggml type, offset), padding
//! to `general.alignment` (default 32), then the tensor data, each tensor at its offset
//! from the data start (a multiple of the alignment). Little-endian throughout.

use crate::error::{Error, Result};
use crate::quant::gguf::GgufType;

/// The magic bytes.
pub const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Nesting GGUF arrays deeper than this is refused (real files use 1).
const MAX_ARRAY_DEPTH: usize = 4;

/// A ggml tensor type this crate knows the size of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16.
    BF16,
    /// float64.
    F64,
    /// Integers (8, 16, 32, 64 bits), copied as they are.
    Int(u8),
    /// A block type quantbridge writes.
    Block(GgufType),
    /// Another ggml block type (e.g. Q2_K, IQ4_XS): copied only if its size is known.
    Other(u32),
}

impl TensorType {
    /// From ggml's type number.
    pub fn from_ggml(n: u32) -> Self {
        match n {
            0 => TensorType::F32,
            1 => TensorType::F16,
            30 => TensorType::BF16,
            28 => TensorType::F64,
            24 => TensorType::Int(8),
            25 => TensorType::Int(16),
            26 => TensorType::Int(32),
            27 => TensorType::Int(64),
            n => GgufType::from_ggml_type(n).map_or(TensorType::Other(n), TensorType::Block),
        }
    }

    /// ggml's type number.
    pub fn ggml(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::BF16 => 30,
            TensorType::F64 => 28,
            TensorType::Int(8) => 24,
            TensorType::Int(16) => 25,
            TensorType::Int(32) => 26,
            TensorType::Int(_) => 27,
            TensorType::Block(t) => t.ggml_type(),
            TensorType::Other(n) => n,
        }
    }

    /// A short name ("F32", "Q4_K", "type 16").
    pub fn name(self) -> String {
        match self {
            TensorType::F32 => "F32".into(),
            TensorType::F16 => "F16".into(),
            TensorType::BF16 => "BF16".into(),
            TensorType::F64 => "F64".into(),
            TensorType::Int(b) => format!("I{b}"),
            TensorType::Block(t) => t.name().into(),
            TensorType::Other(n) => format!("ggml type {n}"),
        }
    }

    /// Bytes of a tensor of `numel` elements whose rows have `cols` values, if known.
    pub fn nbytes(self, numel: u64, cols: u64) -> Option<u64> {
        let per = |size: u64| numel.checked_mul(size);
        match self {
            TensorType::F32 => per(4),
            TensorType::F16 | TensorType::BF16 => per(2),
            TensorType::F64 => per(8),
            TensorType::Int(b) => per(b as u64 / 8),
            TensorType::Block(t) => {
                let block = t.block_size() as u64;
                if cols == 0 || !cols.is_multiple_of(block) {
                    return None;
                }
                (numel / block).checked_mul(t.type_size() as u64)
            }
            TensorType::Other(_) => None,
        }
    }
}

/// One key/value, kept as its raw value bytes so it is copied exactly.
#[derive(Debug, Clone)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// GGUF value type number.
    pub value_type: u32,
    /// The value's bytes, as stored.
    pub raw: Vec<u8>,
}

impl KeyValue {
    /// The value as a u32/u64/i32 number, when it is one.
    pub fn as_u64(&self) -> Option<u64> {
        let b = &self.raw;
        match (self.value_type, b.len()) {
            (0, 1) | (1, 1) | (7, 1) => Some(b[0] as u64),
            (2, 2) | (3, 2) => Some(u16::from_le_bytes([b[0], b[1]]) as u64),
            (4, 4) | (5, 4) => Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64),
            (10, 8) | (11, 8) => Some(u64::from_le_bytes(b[..8].try_into().ok()?)),
            _ => None,
        }
    }

    /// The value as text, for `inspect` (strings whole, arrays as their length).
    pub fn display(&self) -> String {
        match self.value_type {
            8 => String::from_utf8_lossy(&self.raw[8..]).into_owned(),
            9 => {
                let n = u64::from_le_bytes(self.raw[4..12].try_into().unwrap_or_default());
                format!("[{n} items]")
            }
            6 => f32::from_le_bytes(self.raw[..4].try_into().unwrap_or_default()).to_string(),
            12 => f64::from_le_bytes(self.raw[..8].try_into().unwrap_or_default()).to_string(),
            _ => self.as_u64().map_or_else(|| "?".into(), |v| v.to_string()),
        }
    }

    /// A u32 value.
    pub fn u32(key: &str, value: u32) -> Self {
        KeyValue { key: key.into(), value_type: 4, raw: value.to_le_bytes().to_vec() }
    }
}

/// One tensor's description.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Name.
    pub name: String,
    /// Dimensions, innermost (the row length) first, as GGUF stores them.
    pub dims: Vec<u64>,
    /// Element / block type.
    pub ty: TensorType,
    /// Offset from the data start.
    pub offset: u64,
}

impl TensorInfo {
    /// Row-major shape (outermost first), as numpy and torch see the tensor.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed header.
#[derive(Debug, Clone)]
pub struct Header {
    /// Format version (2 or 3).
    pub version: u32,
    /// Key/values in file order.
    pub kvs: Vec<KeyValue>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment.
    pub alignment: u64,
    /// Byte offset of the data section.
    pub data_start: u64,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let end = (self.pos as u64).checked_add(n).filter(|&e| e <= self.bytes.len() as u64);
        let Some(end) = end else {
            return Err(corrupt(format!("{what} running past the end of the file (byte {})", self.pos)));
        };
        let out = &self.bytes[self.pos..end as usize];
        self.pos = end as usize;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| corrupt(format!("{what} that is not UTF-8")))
    }

    /// Skip one value of `value_type`, checking every length against the file.
    fn value(&mut self, value_type: u32, depth: usize) -> Result<()> {
        match value_type {
            0 | 1 | 7 => self.take(1, "a value").map(drop),
            2 | 3 => self.take(2, "a value").map(drop),
            4..=6 => self.take(4, "a value").map(drop),
            10..=12 => self.take(8, "a value").map(drop),
            8 => {
                let n = self.u64("a string length")?;
                self.take(n, "a string").map(drop)
            }
            9 if depth < MAX_ARRAY_DEPTH => {
                let item_type = self.u32("an array type")?;
                let n = self.u64("an array length")?;
                let fixed = match item_type {
                    0 | 1 | 7 => Some(1),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    _ => None,
                };
                match fixed {
                    Some(size) => self.take(n.checked_mul(size).ok_or_else(|| corrupt("an array too long".into()))?, "an array").map(drop),
                    None => {
                        // Strings or arrays: each at least 8 bytes, so `n` is bounded by the file.
                        if n > (self.bytes.len() - self.pos) as u64 / 8 {
                            return Err(corrupt(format!("an array of {n} items longer than the file")));
                        }
                        for _ in 0..n {
                            self.value(item_type, depth + 1)?;
                        }
                        Ok(())
                    }
                }
            }
            9 => Err(corrupt(format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"))),
            other => Err(corrupt(format!("an unknown value type {other}"))),
        }
    }
}

fn corrupt(found: String) -> Error {
    Error::validation(
        format!("a GGUF file with {found}"),
        "a complete GGUF file (version 2 or 3)",
        "re-download or re-convert the model; this file is truncated or corrupt",
    )
}

/// Parse a GGUF header from the start of `bytes` (the whole mapped file), checking every
/// count, length and tensor extent against the file's size.
pub fn parse(bytes: &[u8]) -> Result<Header> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4, "the magic")? != MAGIC {
        return Err(corrupt("no GGUF magic".into()));
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(Error::validation(
            format!("GGUF version {version}"),
            "GGUF version 2 or 3",
            "re-convert the model with a current llama.cpp (convert_hf_to_gguf.py)",
        ));
    }
    let n_tensors = r.u64("the tensor count")?;
    let n_kv = r.u64("the key/value count")?;
    // Each key/value and each tensor info takes at least 12 bytes.
    let room = (bytes.len() as u64) / 12;
    if n_tensors > room || n_kv > room {
        return Err(corrupt(format!("{n_tensors} tensors and {n_kv} keys in {} bytes", bytes.len())));
    }
    let mut kvs = Vec::with_capacity(n_kv as usize);
    for _ in 0..n_kv {
        let key = r.string("a key")?;
        let value_type = r.u32("a value type")?;
        let start = r.pos;
        r.value(value_type, 0)?;
        kvs.push(KeyValue { key, value_type, raw: bytes[start..r.pos].to_vec() });
    }
    let alignment = match kvs.iter().find(|kv| kv.key == "general.alignment") {
        Some(kv) => kv.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| corrupt("a general.alignment that is not a power of two".into()))?,
        None => DEFAULT_ALIGNMENT,
    };
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = r.string("a tensor name")?;
        let n_dims = r.u32("a dimension count")?;
        if n_dims == 0 || n_dims > 8 {
            return Err(corrupt(format!("tensor {name:?} with {n_dims} dimensions")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64("a dimension")?);
        }
        let ty = TensorType::from_ggml(r.u32("a tensor type")?);
        let offset = r.u64("a tensor offset")?;
        tensors.push(TensorInfo { name, dims, ty, offset });
    }
    let data_start = (r.pos as u64).next_multiple_of(alignment);
    let data_len = (bytes.len() as u64).checked_sub(data_start).ok_or_else(|| corrupt("no data section".into()))?;
    for t in &tensors {
        let numel = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let size = numel.and_then(|n| t.ty.nbytes(n, t.dims[0]));
        let Some(size) = size else {
            return Err(corrupt(format!("tensor {:?} of type {} and dims {:?}, whose size is unknown", t.name, t.ty.name(), t.dims)));
        };
        if !t.offset.is_multiple_of(alignment) || t.offset.checked_add(size).is_none_or(|end| end > data_len) {
            return Err(corrupt(format!("tensor {:?} at offset {} (+{size} bytes) outside the {data_len}-byte data section", t.name, t.offset)));
        }
    }
    Ok(Header { version, kvs, tensors, alignment, data_start })
}

/// Bytes of a tensor described by `info` (its extent was checked by [`parse`]).
pub fn tensor_nbytes(info: &TensorInfo) -> u64 {
    info.ty.nbytes(info.numel(), info.dims[0]).unwrap_or(0)
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The header bytes of a file with `kvs` and `tensors` (offsets filled in, each tensor's
/// data aligned), padded to the alignment; also returns each tensor's offset and the data
/// section's size.
pub fn write_header(kvs: &[KeyValue], tensors: &[(String, Vec<u64>, TensorType, u64)], alignment: u64) -> (Vec<u8>, Vec<u64>, u64) {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for kv in kvs {
        put_string(&mut out, &kv.key);
        out.extend_from_slice(&kv.value_type.to_le_bytes());
        out.extend_from_slice(&kv.raw);
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for (name, dims, ty, nbytes) in tensors {
        put_string(&mut out, name);
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&ty.ggml().to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + nbytes).next_multiple_of(alignment);
    }
    out.resize((out.len() as u64).next_multiple_of(alignment) as usize, 0);
    (out, offsets, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tensors: &[(&str, Vec<u64>, TensorType)]) -> Vec<u8> {
        let kvs = vec![KeyValue::u32("general.file_type", 1)];
        let list: Vec<_> = tensors
            .iter()
            .map(|(n, d, t)| (n.to_string(), d.clone(), *t, t.nbytes(d.iter().product(), d[0]).unwrap()))
            .collect();
        let (mut bytes, _, data) = write_header(&kvs, &list, 32);
        bytes.resize(bytes.len() + data as usize, 0);
        bytes
    }

    #[test]
    fn a_written_header_parses_back() {
        let bytes = file(&[("a", vec![64, 2], TensorType::F32), ("b", vec![256], TensorType::Block(GgufType::Q4K))]);
        let h = parse(&bytes).unwrap();
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[0].shape(), vec![2, 64]);
        assert_eq!(h.tensors[1].offset, 512);
        assert_eq!(h.kvs[0].as_u64(), Some(1));
    }

    #[test]
    fn every_truncation_is_a_clear_error() {
        let bytes = file(&[("a", vec![64, 2], TensorType::F32)]);
        for cut in 0..bytes.len() {
            let e = parse(&bytes[..cut]).unwrap_err();
            assert!(e.to_string().contains("GGUF"), "{cut}: {e}");
        }
    }

    #[test]
    fn lying_counts_are_refused_before_allocating() {
        let mut bytes = file(&[("a", vec![64], TensorType::F32)]);
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&bytes).unwrap_err().to_string().contains("tensors"));
    }
}
