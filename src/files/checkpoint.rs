//! Opening a checkpoint: a `.safetensors` file, a sharded checkpoint (its
//! `model.safetensors.index.json`, or the folder holding it), or an Arrow IPC file with the
//! §5 input columns. Everything is memory-mapped; tensors are read where they lie.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray};
use arrow_data::ArrayData;
use arrow_ipc::convert::try_fb_to_schema;
use arrow_ipc::reader::{read_footer_length, FileDecoder};
use arrow_ipc::root_as_footer;
use arrow_schema::DataType;
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::tables::{int_list_row, list_row};
use crate::error::{Error, Result};
use crate::files::{bad_file, gguf, io_error, mmap};
use crate::quant::{DType, ElemSlice, TensorView};

/// One tensor of a checkpoint.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Tensor name.
    pub name: String,
    /// Element type (safetensors' names: F32, BF16, I64, …).
    pub dtype: Dtype,
    /// How an already-quantized tensor is stored ("Q4" for a row of a quantbridge Arrow
    /// output, "Q4_K" for a GGUF block type), listed by `inspect`; such tensors are never
    /// quantized again.
    pub stored_as: Option<String>,
    /// Where it was found, for messages: a file, or a row of an Arrow table.
    pub origin: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Bytes of data.
    pub nbytes: usize,
    loc: Loc,
}

#[derive(Debug, Clone)]
enum Loc {
    /// Bytes `start..end` of map `map`.
    Mapped { map: usize, start: usize, end: usize },
    /// `len` values from logical index `start` of an Arrow float array (in a mapped file).
    Arrow { values: ArrayData, start: usize, len: usize },
    /// A row of a quantbridge Arrow output: listed by `inspect`, never read as a tensor
    /// (the job refuses quantbridge outputs as input).
    Listed,
}

impl Entry {
    /// The engine dtype, for the float tensors quantbridge quantizes.
    pub fn float_dtype(&self) -> Option<DType> {
        match self.dtype {
            Dtype::F32 => Some(DType::F32),
            Dtype::F16 => Some(DType::F16),
            Dtype::BF16 => Some(DType::BF16),
            Dtype::F64 => Some(DType::F64),
            _ => None,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// An entry with no data behind it, for tests of rules over names and shapes.
    #[cfg(test)]
    pub fn listed(name: &str, dtype: Dtype, shape: &[usize]) -> Self {
        let nbytes = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        Entry { name: name.into(), dtype, stored_as: None, origin: "test".into(), shape: shape.to_vec(), nbytes, loc: Loc::Listed }
    }
}

/// An open checkpoint.
pub struct Checkpoint {
    /// What was opened.
    pub path: PathBuf,
    maps: Vec<Arc<Mmap>>,
    /// The file behind each map, to notice one changing under the job.
    files: Vec<PathBuf>,
    entries: Vec<Entry>,
    /// The `__metadata__` of a safetensors file (of the first shard), the Arrow schema's,
    /// or a GGUF file's key/values (as text).
    pub metadata: BTreeMap<String, String>,
    /// A GGUF file's header, kept whole for the GGUF job.
    pub gguf: Option<gguf::Header>,
}

/// Memory that a view may need when the mapped bytes are not aligned for their dtype.
#[derive(Default)]
pub struct Scratch(Vec<u64>);

impl Checkpoint {
    /// Open `path` (see the module docs for what it may be).
    pub fn open(path: &Path) -> Result<Self> {
        let ck = Self::open_any(path)?;
        ck.check_unique_names()?;
        Ok(ck)
    }

    fn open_any(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let index = path.join("model.safetensors.index.json");
            if index.is_file() {
                return Self::open_index(&index);
            }
            let single = path.join("model.safetensors");
            if single.is_file() {
                return Self::open_safetensors(&single);
            }
            return Err(bad_file(path, "a folder without model.safetensors[.index.json]", "pass the checkpoint file itself"));
        }
        if !path.exists() {
            return Err(Error::Io(format!("no such file: {}", path.display())));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".index.json") {
            return Self::open_index(path);
        }
        let map = mmap::map(path)?;
        if map.starts_with(b"ARROW1") {
            return Self::open_arrow(path, map);
        }
        if map.starts_with(gguf::MAGIC) {
            return Self::open_gguf(path, map);
        }
        // An Arrow IPC *stream* starts with a message (the 0xFFFFFFFF continuation marker),
        // not with the file format's magic; its batches cannot be mapped in place.
        if map.starts_with(&[0xff; 4]) || name.ends_with(".arrows") {
            return Err(bad_file(
                path,
                "an Arrow IPC stream (the streaming format, not the file format)",
                "write it as an IPC file: pyarrow.ipc.new_file(path, table.schema) (or pyarrow.feather.write_feather(table, path, compression=\"uncompressed\"))",
            ));
        }
        let mut ck = Checkpoint { path: path.to_owned(), maps: vec![], files: vec![], entries: vec![], metadata: BTreeMap::new(), gguf: None };
        ck.add_safetensors(path, map)?;
        Ok(ck)
    }

    fn open_safetensors(path: &Path) -> Result<Self> {
        let mut ck = Checkpoint { path: path.to_owned(), maps: vec![], files: vec![], entries: vec![], metadata: BTreeMap::new(), gguf: None };
        ck.add_safetensors(path, mmap::map(path)?)?;
        Ok(ck)
    }

    fn add_safetensors(&mut self, path: &Path, map: Arc<Mmap>) -> Result<()> {
        let st = SafeTensors::deserialize(&map).map_err(|e| {
            bad_file(path, format!("an unreadable safetensors file ({e})"), "re-export the checkpoint; this file is truncated or corrupt")
        })?;
        if self.maps.is_empty() {
            if let Ok((_, meta)) = SafeTensors::read_metadata(&map) {
                if let Some(m) = meta.metadata() {
                    self.metadata.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let base = map.as_ptr() as usize;
        let index = self.maps.len();
        let origin = path.display().to_string();
        let mut found: Vec<Entry> = st
            .tensors()
            .into_iter()
            .map(|(name, t)| {
                let start = t.data().as_ptr() as usize - base;
                Entry {
                    name,
                    dtype: t.dtype(),
                    stored_as: None,
                    origin: origin.clone(),
                    shape: t.shape().to_vec(),
                    nbytes: t.data().len(),
                    loc: Loc::Mapped { map: index, start, end: start + t.data().len() },
                }
            })
            .collect();
        found.sort_by_key(|e| match e.loc {
            Loc::Mapped { start, .. } => start,
            Loc::Arrow { .. } | Loc::Listed => 0,
        });
        self.entries.extend(found);
        self.maps.push(map);
        self.files.push(path.to_owned());
        Ok(())
    }

    /// A GGUF file: every tensor viewed in place at its offset; float tensors (F32, F16,
    /// BF16, F64) can be quantized, block types are listed as `stored_as`.
    fn open_gguf(path: &Path, map: Arc<Mmap>) -> Result<Self> {
        let header = gguf::parse(&map).map_err(|e| match e {
            Error::Validation(p) => Error::Validation(crate::error::Problem { found: format!("{}: {}", path.display(), p.found), ..p }),
            other => other,
        })?;
        let mut ck = Checkpoint { path: path.to_owned(), maps: vec![], files: vec![], entries: vec![], metadata: BTreeMap::new(), gguf: None };
        for kv in &header.kvs {
            ck.metadata.insert(kv.key.clone(), kv.display());
        }
        let origin = path.display().to_string();
        for t in &header.tensors {
            let start = (header.data_start + t.offset) as usize;
            let nbytes = gguf::tensor_nbytes(t) as usize;
            let (dtype, stored_as) = match t.ty {
                gguf::TensorType::F32 => (Dtype::F32, None),
                gguf::TensorType::F16 => (Dtype::F16, None),
                gguf::TensorType::BF16 => (Dtype::BF16, None),
                gguf::TensorType::F64 => (Dtype::F64, None),
                gguf::TensorType::Int(8) => (Dtype::I8, None),
                gguf::TensorType::Int(16) => (Dtype::I16, None),
                gguf::TensorType::Int(32) => (Dtype::I32, None),
                gguf::TensorType::Int(_) => (Dtype::I64, None),
                other => (Dtype::U8, Some(other.name())),
            };
            ck.entries.push(Entry {
                name: t.name.clone(),
                dtype,
                stored_as,
                origin: origin.clone(),
                shape: t.shape(),
                nbytes,
                loc: Loc::Mapped { map: 0, start, end: start + nbytes },
            });
        }
        ck.gguf = Some(header);
        ck.maps.push(map);
        ck.files.push(path.to_owned());
        Ok(ck)
    }

    fn open_index(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| io_error(index, "read", &e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| bad_file(index, format!("an index that is not JSON ({e})"), "re-export the checkpoint index"))?;
        let Some(weight_map) = json.get("weight_map").and_then(|w| w.as_object()) else {
            return Err(bad_file(index, "an index without a \"weight_map\" object", "re-export the checkpoint index"));
        };
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<String> = Vec::new();
        for file in weight_map.values() {
            let Some(file) = file.as_str() else {
                return Err(bad_file(index, "a weight_map value that is not a file name", "re-export the checkpoint index"));
            };
            if !shards.iter().any(|s| s == file) {
                shards.push(file.to_owned());
            }
        }
        shards.sort();
        let mut ck = Checkpoint { path: index.to_owned(), maps: vec![], files: vec![], entries: vec![], metadata: BTreeMap::new(), gguf: None };
        for shard in &shards {
            if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
                return Err(bad_file(index, format!("a shard path {shard:?} outside the checkpoint folder"), "fix the index"));
            }
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(bad_file(index, format!("a shard {shard:?} that the index names but that does not exist"), "download or copy the missing shard into the folder"));
            }
            ck.add_safetensors(&path, mmap::map(&path)?)?;
        }
        let names: HashMap<&str, ()> = ck.entries.iter().map(|e| (e.name.as_str(), ())).collect();
        if let Some(missing) = weight_map.keys().find(|k| !names.contains_key(k.as_str())) {
            return Err(bad_file(index, format!("tensor {missing:?} listed in the index but in no shard"), "re-export the checkpoint"));
        }
        Ok(ck)
    }

    fn open_arrow(path: &Path, map: Arc<Mmap>) -> Result<Self> {
        let corrupt = |what: String| bad_file(path, what, "re-export the Arrow IPC file (pyarrow.ipc.new_file)");
        let buffer = mmap::shared_arrow_buffer(map.clone());
        if buffer.len() < 16 {
            return Err(corrupt("an Arrow IPC file too short for a footer".into()));
        }
        let trailer_start = buffer.len() - 10;
        let trailer: [u8; 10] = buffer[trailer_start..].try_into().expect("10 bytes");
        let footer_len = read_footer_length(trailer).map_err(|e| corrupt(format!("an unreadable footer ({e})")))?;
        if footer_len > trailer_start {
            return Err(corrupt("a footer longer than the file".into()));
        }
        let footer = root_as_footer(&buffer[trailer_start - footer_len..trailer_start])
            .map_err(|e| corrupt(format!("an unreadable footer ({e})")))?;
        let schema = footer.schema().ok_or_else(|| corrupt("no schema".into()))?;
        let schema = Arc::new(try_fb_to_schema(schema).map_err(|e| corrupt(format!("an unreadable schema ({e})")))?);
        let decoder = FileDecoder::new(schema.clone(), footer.version());
        let mut batches: Vec<RecordBatch> = Vec::new();
        for block in footer.recordBatches().into_iter().flatten() {
            let len = block.bodyLength() as usize + block.metaDataLength() as usize;
            let offset = block.offset() as usize;
            if offset.checked_add(len).is_none_or(|end| end > buffer.len()) {
                return Err(corrupt("a record batch block past the end of the file".into()));
            }
            let data = buffer.slice_with_length(offset, len);
            // arrow-ipc trusts the buffer offsets inside a batch's metadata and panics on
            // hostile ones (found by fuzz/checkpoint): contain that, then validate fully.
            let decoded = contain_panic(|| {
                let batch = decoder.read_record_batch(block, &data)?;
                if let Some(b) = &batch {
                    for column in b.columns() {
                        column.to_data().validate_full()?;
                    }
                }
                Ok::<_, arrow_schema::ArrowError>(batch)
            });
            match decoded {
                Ok(Ok(Some(batch))) => batches.push(batch),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(corrupt(format!("an unreadable record batch ({e})"))),
                Err(_) => return Err(corrupt("a record batch whose buffers lie outside the file".into())),
            }
        }
        let mut ck = Checkpoint {
            path: path.to_owned(),
            maps: vec![map],
            files: vec![path.to_owned()],
            entries: vec![],
            metadata: schema.metadata().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            gguf: None,
        };
        let ours = ck.metadata.contains_key("quantbridge.spec");
        for batch in &batches {
            if ours {
                ck.list_output_rows(path, batch)?;
            } else {
                ck.add_arrow_rows(path, batch)?;
            }
        }
        Ok(ck)
    }

    /// The rows of a quantbridge Arrow output (docs/formats.md), one entry per layer:
    /// `stored_as` ("Q4") for a quantized layer (its source shape, its stored bytes), the
    /// original dtype for a pass-through one.
    fn list_output_rows(&mut self, path: &Path, batch: &RecordBatch) -> Result<()> {
        let fix = "pass a file written by quantbridge quantize -o NAME.arrow";
        let passthrough: HashMap<String, Dtype> = self
            .metadata
            .get("quantbridge.passthrough")
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
        let column = |name: &str| batch.column_by_name(name).map(|c| c.to_data());
        let (Some(names), Some(codes), Some(scales), Some(zps), Some(shapes), Some(bits)) =
            (column("layer_name"), column("codes"), column("scales"), column("zero_points"), column("shape"), column("bits"))
        else {
            return Err(bad_file(path, "a quantbridge Arrow output without its columns", fix));
        };
        let names = arrow_array::make_array(names);
        let names = names.as_any().downcast_ref::<StringArray>().ok_or_else(|| bad_file(path, "a layer_name column that is not utf8", fix))?;
        let bits = arrow_array::make_array(bits);
        let bits = bits.as_any().downcast_ref::<arrow_array::UInt8Array>().ok_or_else(|| bad_file(path, "a bits column that is not uint8", fix))?;
        let scale_size = match scales.data_type() {
            DataType::List(f) => f.data_type().primitive_width().unwrap_or(4),
            _ => 4,
        };
        for row in 0..batch.num_rows() {
            let name = names.value(row).to_owned();
            let length = |data: &ArrayData| list_row(data, row).map_or(0, |(_, len)| len);
            let code_bytes = match codes.data_type() {
                DataType::LargeBinary => {
                    let offsets = codes.buffers()[0].typed_data::<i64>();
                    let i = codes.offset() + row;
                    (offsets[i + 1] - offsets[i]) as usize
                }
                _ => 0,
            };
            let shape: Vec<usize> = int_list_row(&shapes, row).unwrap_or_default().iter().map(|&d| d.max(0) as usize).collect();
            let bits = bits.value(row);
            let (dtype, stored_as, nbytes) = match bits {
                0 => (passthrough.get(&name).copied().unwrap_or(Dtype::U8), None, code_bytes),
                b => (Dtype::U8, Some(format!("Q{b}")), code_bytes + length(&scales) * scale_size + length(&zps)),
            };
            self.entries.push(Entry { name, dtype, stored_as, origin: format!("row {row}"), shape, nbytes, loc: Loc::Listed });
        }
        Ok(())
    }

    fn add_arrow_rows(&mut self, path: &Path, batch: &RecordBatch) -> Result<()> {
        let column = |name: &str| batch.column_by_name(name);
        let fix = "write the table with columns layer_name (utf8), weights (list of float) and optional shape (list of int)";
        let (Some(names), Some(weights)) = (column("layer_name"), column("weights")) else {
            return Err(bad_file(path, "an Arrow table without layer_name and weights columns", fix));
        };
        let names = names
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad_file(path, format!("a layer_name column of type {}", names.data_type()), fix))?;
        let weights = weights.to_data();
        let value_type = match weights.data_type() {
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => f.data_type().clone(),
            other => return Err(bad_file(path, format!("a weights column of type {other}"), fix)),
        };
        let dtype = match value_type {
            DataType::Float32 => Dtype::F32,
            DataType::Float16 => Dtype::F16,
            DataType::Float64 => Dtype::F64,
            other => return Err(bad_file(path, format!("weights of type {other}"), fix)),
        };
        let shapes = column("shape").map(|s| s.to_data());
        for row in 0..batch.num_rows() {
            if names.is_null(row) || weights.is_null(row) {
                return Err(bad_file(path, format!("a null in row {row}"), "drop or fill the row"));
            }
            let name = names.value(row).to_owned();
            let (start, len) = list_row(&weights, row).expect("a list type (checked)");
            let values = weights.child_data()[0].clone();
            if let Some(nulls) = values.nulls() {
                if (start..start + len).any(|i| nulls.is_null(i)) {
                    return Err(bad_file(path, format!("a null weight in layer {name:?}"), "fill the nulls"));
                }
            }
            let shape = match &shapes {
                Some(s) if !s.is_null(row) => {
                    let shape = int_list_row(s, row)
                        .ok_or_else(|| bad_file(path, "a shape column that is not a list of integers", fix))?;
                    let dims: Option<Vec<usize>> = shape.iter().map(|&d| usize::try_from(d).ok()).collect();
                    match dims {
                        Some(d) if d.iter().product::<usize>() == len => d,
                        _ => return Err(bad_file(path, format!("shape {shape:?} for {len} weights in layer {name:?}"), fix)),
                    }
                }
                _ => vec![len],
            };
            self.entries.push(Entry {
                name,
                dtype,
                stored_as: None,
                origin: format!("{} row {row}", path.display()),
                shape,
                nbytes: len * dtype.bitsize() / 8,
                loc: Loc::Arrow { values, start, len },
            });
        }
        Ok(())
    }

    /// Two tensors of one name are an error naming both places: a sharded index whose
    /// shards both hold `w`, or an Arrow table with two rows named `w`. (Which one would a
    /// reader mean?)
    fn check_unique_names(&self) -> Result<()> {
        let mut seen: HashMap<&str, &Entry> = HashMap::with_capacity(self.entries.len());
        for e in &self.entries {
            if let Some(first) = seen.insert(e.name.as_str(), e) {
                return Err(bad_file(
                    &self.path,
                    format!("two tensors named {:?}, in {} and in {}", e.name, first.origin, e.origin),
                    "keep one of them (re-export the checkpoint, or fix the index / rename the row)",
                ));
            }
        }
        Ok(())
    }

    /// An error when a file behind `entry` has shrunk since it was mapped (another process
    /// rewriting the checkpoint): reading its pages past the new end would kill the
    /// process with SIGBUS. Checked before each tensor; a file truncated while one tensor
    /// is being read is not caught (docs/trust-model.md).
    pub fn check_unchanged(&self, entry: &Entry) -> Result<()> {
        let map = match entry.loc {
            Loc::Mapped { map, .. } => map,
            Loc::Arrow { .. } | Loc::Listed => 0,
        };
        let (Some(file), Some(mapped)) = (self.files.get(map), self.maps.get(map)) else { return Ok(()) };
        match std::fs::metadata(file) {
            Ok(m) if m.len() >= mapped.len() as u64 => Ok(()),
            Ok(m) => Err(Error::InputChanged {
                what: format!("{} (now {} bytes, {} when the job started)", file.display(), m.len(), mapped.len()),
            }),
            Err(e) => Err(Error::InputChanged { what: format!("{} ({e})", file.display()) }),
        }
    }

    /// Map `entry`'s pages in before it is read (see [`mmap::populate_pages`]).
    pub fn prefetch(&self, entry: &Entry) {
        if let Loc::Mapped { map, start, end } = &entry.loc {
            mmap::populate_pages(&self.maps[*map], *start, *end);
        }
    }

    /// Let the OS drop `entry`'s mapped pages from our resident set (see
    /// [`mmap::release_pages`]); call once nothing borrows them any more.
    pub fn release(&self, entry: &Entry) {
        if let Loc::Mapped { map, start, end } = &entry.loc {
            mmap::release_pages(&self.maps[*map], *start, *end);
        }
    }

    /// The file `entry` is stored in (a shard of a sharded checkpoint), if it is mapped.
    pub fn file_of(&self, entry: &Entry) -> Option<&Path> {
        match entry.loc {
            Loc::Mapped { map, .. } => self.files.get(map).map(PathBuf::as_path),
            Loc::Arrow { .. } | Loc::Listed => None,
        }
    }

    /// The name of the file `entry` is stored in: a shard's file name, or
    /// `model.safetensors` for a tensor not mapped from a file.
    pub fn file_name_of(&self, entry: &Entry) -> String {
        self.file_of(entry).and_then(Path::file_name).and_then(|n| n.to_str()).unwrap_or("model.safetensors").to_owned()
    }

    /// Every mapped file, in the order their tensors are listed.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Every tensor, in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> usize {
        self.entries.iter().map(|e| e.nbytes).sum()
    }

    /// The raw little-endian bytes of `entry`, in place.
    pub fn raw_bytes<'a>(&'a self, entry: &'a Entry) -> &'a [u8] {
        match &entry.loc {
            Loc::Mapped { map, start, end } => &self.maps[*map][*start..*end],
            Loc::Arrow { values, start, len } => {
                let dtype = entry.float_dtype().expect("Arrow entries are floats");
                let size = dtype.itemsize();
                let first = (values.offset() + start) * size;
                &values.buffers()[0].as_slice()[first..first + len * size]
            }
            Loc::Listed => &[],
        }
    }

    /// A view of float `entry`, borrowing the map; when the mapped bytes are not aligned
    /// for their dtype they are copied once into `scratch` (returns the bytes copied).
    pub fn view<'a>(&'a self, entry: &'a Entry, scratch: &'a mut Scratch) -> Result<(TensorView<'a>, usize)> {
        let dtype = entry.float_dtype().ok_or_else(|| Error::Internal(format!("{} is not a float tensor", entry.name)))?;
        let bytes = self.raw_bytes(entry);
        let (data, copied) = match typed(bytes, dtype) {
            Some(data) => (data, 0),
            None => {
                scratch.0 = vec![0u64; bytes.len().div_ceil(8)];
                let aligned = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut scratch.0)[..bytes.len()];
                aligned.copy_from_slice(bytes);
                (typed(aligned, dtype).expect("u64 storage is aligned for every float"), bytes.len())
            }
        };
        Ok((TensorView::contiguous(data, entry.shape.clone())?, copied))
    }
}

/// `bytes` as a slice of `dtype`, when aligned (little-endian hosts; safetensors and Arrow
/// are little-endian).
fn typed(bytes: &[u8], dtype: DType) -> Option<ElemSlice<'_>> {
    Some(match dtype {
        DType::F32 => ElemSlice::F32(bytemuck::try_cast_slice::<u8, f32>(bytes).ok()?),
        DType::F16 => ElemSlice::F16(bytemuck::try_cast_slice::<u8, f16>(bytes).ok()?),
        DType::BF16 => ElemSlice::BF16(bytemuck::try_cast_slice::<u8, bf16>(bytes).ok()?),
        DType::F64 => ElemSlice::F64(bytemuck::try_cast_slice::<u8, f64>(bytes).ok()?),
    })
}

thread_local! {
    /// Set while this thread runs a panic that [`contain_panic`] turns into an error.
    static CONTAINING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f`, turning a panic inside it into `Err(())` without the default hook's
/// "thread panicked at" message (a corrupt file gets one clear error, not a crash report).
///
/// The quieting hook is installed once and delegates to the previous hook for every panic
/// outside a `contain_panic` call, on any thread.
fn contain_panic<R>(f: impl FnOnce() -> R) -> std::result::Result<R, ()> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINING.with(|c| c.get()) {
                previous(info);
            }
        }));
    });
    CONTAINING.with(|c| c.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(false));
    result.map_err(|_| ())
}
