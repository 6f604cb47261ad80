//! Writers, one tensor at a time: a safetensors file whose header is known before the
//! first tensor is quantized (sizes follow from shapes and the spec), and an Arrow IPC
//! file of §5 output rows.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use arrow_buffer::Buffer;
use arrow_ipc::writer::FileWriter;
use half::{bf16, f16};
use safetensors::Dtype;

use crate::tables::{output_schema, scale_buffer, spec_json, TableParts};
use crate::error::{Error, Result};
use crate::files::io_error;
use crate::quant::{QuantSpec, ScaleDType};

/// One tensor of a safetensors header.
#[derive(Debug, Clone)]
pub struct HeaderEntry {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Bytes of data.
    pub nbytes: usize,
    /// What it comes from, for messages ("the quantized tensor \"w\"").
    pub from: String,
}

/// Every output name once, and none of them the header's reserved `__metadata__`: two
/// entries of one name make a header no reader opens. The error names both sources.
pub fn check_unique_output_names(entries: &[HeaderEntry]) -> Result<()> {
    let mut seen: std::collections::HashMap<&str, &HeaderEntry> = std::collections::HashMap::with_capacity(entries.len());
    for e in entries {
        if e.name == "__metadata__" {
            return Err(Error::validation(
                format!("an output tensor named \"__metadata__\" ({})", e.from),
                "tensor names other than \"__metadata__\", which safetensors reserves for the header's metadata",
                "rename that tensor, or --exclude it",
            ));
        }
        if let Some(first) = seen.insert(e.name.as_str(), e) {
            return Err(Error::validation(
                format!("two output tensors named {:?}: {} and {}", e.name, first.from, e.from),
                "one output tensor per name",
                format!("leave one of them out (e.g. --exclude '^{}$'), or rename the input tensor", regex_escape(&e.name)),
            ));
        }
    }
    Ok(())
}

/// `name` with the characters Python's `re` treats specially escaped.
fn regex_escape(name: &str) -> String {
    name.chars().fold(String::new(), |mut out, c| {
        if "\\.^$*+?{}[]|()".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// A safetensors file written front to back: the header first, then each tensor's bytes
/// in header order.
pub struct SafetensorsWriter {
    out: BufWriter<File>,
    path: std::path::PathBuf,
    expected: std::vec::IntoIter<HeaderEntry>,
}

impl SafetensorsWriter {
    /// Write the header for `entries` (in this order) and `metadata`.
    pub fn create(file: File, path: &Path, entries: Vec<HeaderEntry>, metadata: BTreeMap<String, String>) -> Result<Self> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::to_value(&metadata).expect("strings serialize"));
        }
        let mut offset = 0usize;
        for e in &entries {
            let end = offset + e.nbytes;
            header.insert(
                e.name.clone(),
                serde_json::json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [offset, end]}),
            );
            offset = end;
        }
        let mut text = serde_json::to_string(&header).expect("JSON serializes");
        // Pad with spaces so tensor data starts 8-byte aligned, as the safetensors format advises.
        while !(text.len() + 8).is_multiple_of(8) {
            text.push(' ');
        }
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let io = |e: std::io::Error| io_error(path, "write", &e);
        out.write_all(&(text.len() as u64).to_le_bytes()).map_err(io)?;
        out.write_all(text.as_bytes()).map_err(io)?;
        Ok(SafetensorsWriter { out, path: path.to_owned(), expected: entries.into_iter() })
    }

    /// Write the next tensor's bytes (its parts in order, e.g. codes then nothing else).
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let Some(next) = self.expected.next() else {
            return Err(Error::Internal(format!("{name}: written past the end of the header")));
        };
        if next.name != name || next.nbytes != bytes.len() {
            return Err(Error::Internal(format!(
                "{name} ({} bytes) written where the header promised {} ({} bytes)",
                bytes.len(),
                next.name,
                next.nbytes
            )));
        }
        self.out.write_all(bytes).map_err(|e| io_error(&self.path, "write", &e))
    }

    /// Flush everything to disk.
    pub fn finish(self) -> Result<()> {
        if let Some(missing) = self.expected.as_slice().first() {
            return Err(Error::Internal(format!("{} was never written", missing.name)));
        }
        let path = self.path.clone();
        let file = self.out.into_inner().map_err(|e| io_error(&path, "write", e.error()))?;
        file.sync_all().map_err(|e| io_error(&path, "write", &e))
    }
}

/// Scales as stored bytes in their dtype (they were rounded to it, so this is exact).
pub fn scale_bytes(scales: &[f32], dtype: ScaleDType) -> Vec<u8> {
    match dtype {
        ScaleDType::F32 => bytemuck::cast_slice(scales).to_vec(),
        ScaleDType::F16 => scales.iter().flat_map(|&s| f16::from_f32(s).to_le_bytes()).collect(),
        ScaleDType::BF16 => scales.iter().flat_map(|&s| bf16::from_f32(s).to_le_bytes()).collect(),
    }
}

/// The safetensors dtype of a scale dtype.
pub fn scale_dtype_of(dtype: ScaleDType) -> Dtype {
    match dtype {
        ScaleDType::F32 => Dtype::F32,
        ScaleDType::F16 => Dtype::F16,
        ScaleDType::BF16 => Dtype::BF16,
    }
}

/// An Arrow IPC file of §5 output rows, one record batch per tensor.
pub struct ArrowWriter {
    writer: FileWriter<BufWriter<File>>,
    path: std::path::PathBuf,
    spec: QuantSpec,
}

impl ArrowWriter {
    /// Start the file; `passthrough` (name → safetensors dtype) goes into the schema
    /// metadata, since pass-through rows carry raw bytes.
    pub fn create(file: File, path: &Path, spec: &QuantSpec, passthrough: &BTreeMap<String, Dtype>) -> Result<Self> {
        let mut schema = output_schema(spec);
        let mut metadata = schema.metadata().clone();
        metadata.insert("quantbridge.spec".to_owned(), spec_json(spec));
        metadata.insert(
            "quantbridge.passthrough".to_owned(),
            serde_json::to_string(passthrough).expect("names and dtypes serialize"),
        );
        schema = schema.with_metadata(metadata);
        let writer = FileWriter::try_new(BufWriter::with_capacity(1 << 20, file), &schema)
            .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))?;
        Ok(ArrowWriter { writer, path: path.to_owned(), spec: *spec })
    }

    fn arrow_io(&self, e: arrow_schema::ArrowError) -> Error {
        Error::Io(format!("cannot write {}: {e}", self.path.display()))
    }

    /// One quantized tensor (its buffers move into the batch; nothing is copied).
    pub fn quantized(&mut self, name: &str, shape: &[usize], codes: Vec<u8>, scales: Vec<f32>, zps: Vec<u8>) -> Result<()> {
        let parts = TableParts {
            names: vec![name.to_owned()],
            code_offsets: vec![0, codes.len() as i64],
            codes: Buffer::from_vec(codes),
            scale_offsets: vec![0, scales.len() as i32],
            scales: scale_buffer(scales, self.spec.scale_dtype),
            zp_offsets: vec![0, zps.len() as i32],
            zero_points: Buffer::from_vec(zps),
            shapes: vec![shape.to_vec()],
            spec: self.spec,
            passthrough: false,
        };
        self.write(parts)
    }

    /// One tensor passed through: its raw bytes as `codes`, `bits` 0.
    pub fn passthrough(&mut self, name: &str, shape: &[usize], bytes: &[u8]) -> Result<()> {
        let parts = TableParts {
            names: vec![name.to_owned()],
            code_offsets: vec![0, bytes.len() as i64],
            codes: Buffer::from_vec(bytes.to_vec()),
            scale_offsets: vec![0, 0],
            // Empty, but aligned for any scale type.
            scales: Buffer::from_vec(Vec::<u64>::new()),
            zp_offsets: vec![0, 0],
            zero_points: Buffer::from_vec(Vec::<u8>::new()),
            shapes: vec![shape.to_vec()],
            spec: self.spec,
            passthrough: true,
        };
        self.write(parts)
    }

    fn write(&mut self, parts: TableParts) -> Result<()> {
        let batch = parts.into_batch().map_err(|e| Error::Internal(format!("building an output row: {e}")))?;
        let schema = self.writer.schema().clone();
        let batch = batch.with_schema(schema).map_err(|e| Error::Internal(format!("output schema: {e}")))?;
        self.writer.write(&batch).map_err(|e| self.arrow_io(e))
    }

    /// Write the footer and flush to disk.
    pub fn finish(mut self) -> Result<()> {
        self.writer.finish().map_err(|e| self.arrow_io(e))?;
        let path = self.path.clone();
        let out = self.writer.into_inner().map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))?;
        let file = out.into_inner().map_err(|e| io_error(&path, "write", e.error()))?;
        file.sync_all().map_err(|e| io_error(&path, "write", &e))
    }
}
