//! The main job: quantize (or dequantize) a checkpoint tensor by tensor, in bounded memory,
//! into a temporary file that is renamed over the output only once it is complete.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::Dtype;

use crate::error::{Error, Problem, Result};
use crate::files::checkpoint::{Checkpoint, Entry, Scratch};
use crate::files::output::{check_unique_output_names, scale_bytes, scale_dtype_of, ArrowWriter, HeaderEntry, SafetensorsWriter};
use crate::files::select::{decide, Choice};
use crate::files::verify;
use crate::files::write_behind::WriteBehind;
use crate::files::{bad_file, io_error, temp_beside};
use crate::quant::{
    output_sizes, Allocator, BufferPool, DType, Engine, Kernel, Layout, OutBuffers, QuantSpec, Quantized, ScaleDType,
    Scales, Stats,
};
use crate::tables::spec_json;

/// What happened to one tensor.
#[derive(Debug, Clone)]
pub struct LayerReport {
    /// Tensor name.
    pub name: String,
    /// Source dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Quantized (else passed through unchanged).
    pub quantized: bool,
    /// Error statistics of a quantized tensor.
    pub stats: Option<Stats>,
    /// Bytes read.
    pub input_bytes: usize,
    /// Bytes written.
    pub output_bytes: usize,
    /// Bytes copied to align a misaligned mapped tensor (0 normally).
    pub bytes_copied: usize,
    /// Why a tensor passed through unchanged ("1-D (a bias or norm)", "an embedding", …).
    pub kept_because: Option<String>,
    /// The GGUF block type a tensor was quantized to (the GGUF job).
    pub gguf_type: Option<crate::quant::gguf::GgufType>,
}

impl LayerReport {
    /// The report of a tensor passed through unchanged.
    pub fn kept(e: &Entry, reason: String) -> Self {
        LayerReport {
            name: e.name.clone(),
            dtype: e.dtype,
            shape: e.shape.clone(),
            quantized: false,
            stats: None,
            input_bytes: e.nbytes,
            output_bytes: e.nbytes,
            bytes_copied: 0,
            kept_because: Some(reason),
            gguf_type: None,
        }
    }

    /// The report of a tensor quantized into `output_bytes`.
    pub fn quantized(e: &Entry, out: &EngineOutput, output_bytes: usize) -> Self {
        LayerReport {
            name: e.name.clone(),
            dtype: e.dtype,
            shape: e.shape.clone(),
            quantized: true,
            stats: out.stats,
            input_bytes: e.nbytes,
            output_bytes,
            bytes_copied: out.bytes_copied,
            kept_because: None,
            gguf_type: None,
        }
    }
}

/// One tensor's engine result, in buffers from the job's pool.
pub struct EngineOutput {
    /// Packed code stream.
    pub codes: Vec<u8>,
    /// Scales (rounded to the spec's scale dtype), as f32.
    pub scales: Vec<f32>,
    /// Zero points, one byte each (empty when symmetric).
    pub zero_points: Vec<u8>,
    /// Error statistics.
    pub stats: Option<Stats>,
    /// Bytes copied to align a misaligned mapped tensor (0 normally).
    pub bytes_copied: usize,
}

impl EngineOutput {
    /// Hand the buffers back: the next tensor of this size reuses them instead of faulting
    /// in new pages.
    pub fn recycle(self, pool: &dyn Allocator) {
        pool.recycle_bytes(self.codes);
        pool.recycle_floats(self.scales);
        pool.recycle_bytes(self.zero_points);
    }
}

/// Quantize `e` (mapped in `ck`) into buffers from `pool`.
pub fn quantize_entry(
    ck: &Checkpoint,
    e: &Entry,
    spec: &QuantSpec,
    engine: &Engine<'_>,
    pool: &BufferPool,
    scratch: &mut Scratch,
) -> Result<EngineOutput> {
    ck.prefetch(e);
    let (view, bytes_copied) = ck.view(e, scratch).map_err(|err| in_tensor(&e.name, err))?;
    let (c, s, z) = output_sizes(&e.shape, spec);
    let (mut codes, mut scales, mut zero_points) = (pool.bytes(c)?, pool.floats(s)?, pool.bytes(z)?);
    let out = OutBuffers { codes: &mut codes, scales: &mut scales, zero_points: &mut zero_points };
    let stats = engine.quantize_into(&view, spec, out).map_err(|err| in_tensor(&e.name, err))?;
    Ok(EngineOutput { codes, scales, zero_points, stats, bytes_copied })
}

/// Output formats, chosen by the output's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Safetensors,
    Arrow,
}

fn output_format(path: &Path) -> Result<Format> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Ok(Format::Safetensors),
        Some("arrow") | Some("ipc") | Some("feather") => Ok(Format::Arrow),
        _ => Err(Error::validation(
            format!("output {}", path.display()),
            "an output ending in .safetensors or .arrow",
            "name the output e.g. model-int4.safetensors or model-int4.arrow",
        )),
    }
}

/// The output file while it is written: a hidden temporary beside the final path, removed
/// unless [`TempOutput::commit`] renames it into place.
pub(crate) struct TempOutput {
    pub(crate) temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl TempOutput {
    pub(crate) fn create(target: &Path, force: bool) -> Result<(Self, File)> {
        let temp = temp_beside(target, force)?;
        let file = File::create(&temp).map_err(|e| io_error(target, "write", &e))?;
        Ok((TempOutput { temp, target: target.to_owned(), committed: false }, file))
    }

    pub(crate) fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.temp, &self.target).map_err(|e| io_error(&self.target, "write", &e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Name the tensor in a caller-fixable error.
pub(crate) fn in_tensor(name: &str, e: Error) -> Error {
    match e {
        Error::Validation(p) => Error::Validation(Problem { found: format!("tensor {name:?}: {}", p.found), ..p }),
        Error::NonFinite { index, value } => Error::validation(
            format!("tensor {name:?} contains NaN or Inf ({value} at index {index}, flat row-major)"),
            "only finite values",
            "fix the checkpoint, or --exclude this tensor",
        ),
        other => other,
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Quantize the tensors of `input` that `select` and the default rule choose
/// ([`select::decide`]) into `output` (`.safetensors` or `.arrow`); everything else passes
/// through unchanged. `on_layer` is called after each tensor with `(report, bytes done,
/// bytes total)`; an error from it stops the job (and no output is left behind).
pub fn quantize_checkpoint(
    input: &Path,
    output: &Path,
    spec: &QuantSpec,
    force: bool,
    select: &dyn Fn(&Entry) -> Choice,
    on_layer: &mut dyn FnMut(&LayerReport, usize, usize) -> Result<()>,
) -> Result<Vec<LayerReport>> {
    spec.validate()?;
    let spec = QuantSpec { stats: true, ..*spec };
    let format = output_format(output)?;
    if same_file(input, output) {
        return Err(Error::Io(format!("{} is the input; write the output to another file", output.display())));
    }
    let ck = Checkpoint::open(input)?;
    if ck.metadata.contains_key("quantbridge.spec") {
        return Err(Error::validation(
            format!("{}: a file quantbridge already quantized", input.display()),
            "a checkpoint of float tensors",
            "pass the original checkpoint, or restore this one first with `quantbridge dequantize`",
        ));
    }
    let decisions: Vec<Result<(), String>> = ck.entries().iter().map(|e| decide(e, None, &spec, &select(e))).collect();
    let quantize: Vec<bool> = decisions.iter().map(Result::is_ok).collect();
    // Everything the output will hold is known before a byte is written: names are
    // checked here, so a collision never reaches the disk.
    let header = match format {
        Format::Safetensors => {
            let header = quantized_header(&ck, &quantize, &spec);
            check_unique_output_names(&header)?;
            Some(header)
        }
        Format::Arrow => None,
    };
    let (temp, file) = TempOutput::create(output, force)?;
    let sink = match &header {
        Some(header) => {
            let tensors: serde_json::Map<String, serde_json::Value> = ck
                .entries()
                .iter()
                .zip(&quantize)
                .filter(|(_, &q)| q)
                .map(|(e, _)| (e.name.clone(), serde_json::json!({"dtype": e.dtype, "shape": e.shape})))
                .collect();
            let mut metadata = BTreeMap::new();
            metadata.insert("format".to_owned(), "quantbridge".to_owned());
            metadata.insert("quantbridge.spec".to_owned(), spec_json(&spec));
            metadata.insert("quantbridge.tensors".to_owned(), serde_json::Value::Object(tensors).to_string());
            Sink::Safetensors(SafetensorsWriter::create(file, output, header.clone(), metadata)?)
        }
        None => {
            let passthrough: BTreeMap<String, Dtype> = ck
                .entries()
                .iter()
                .zip(&quantize)
                .filter(|(_, &q)| !q)
                .map(|(e, _)| (e.name.clone(), e.dtype))
                .collect();
            Sink::Arrow(Box::new(ArrowWriter::create(file, output, &spec, &passthrough)?))
        }
    };
    let total = ck.data_bytes();
    let mut done = 0;
    let mut reports = Vec::with_capacity(ck.entries().len());
    let mut scratch = Scratch::default();
    // Each tensor's result buffers serve the next one of its size: no page faults on
    // fresh allocations, and memory stays bounded by the largest tensors.
    let pool = BufferPool::default();
    let engine = Engine::new(Kernel::best(), &pool);
    let (ck, pool) = (&ck, &pool);
    // The output is written on a second thread while the next tensor is quantized.
    let sink = std::thread::scope(|scope| -> Result<Sink> {
        let mut writer = WriteBehind::start(scope, sink);
        for (e, decision) in ck.entries().iter().zip(decisions) {
            ck.check_unchanged(e)?;
            let (report, queued) = match decision {
                Ok(()) => {
                    let out = quantize_entry(ck, e, &spec, &engine, pool, &mut scratch)?;
                    let output_bytes = out.codes.len() + out.scales.len() * spec.scale_dtype.itemsize() + out.zero_points.len();
                    let report = LayerReport::quantized(e, &out, output_bytes);
                    ck.release(e); // read: its pages can go
                    let dtype = spec.scale_dtype;
                    (report, writer.submit(Box::new(move |sink: &mut Sink| sink.quantized(e, out, dtype, pool))))
                }
                Err(reason) => {
                    // Written from the mapped input, whose pages are released once written.
                    let job = move |sink: &mut Sink| {
                        sink.passthrough(e, ck.raw_bytes(e))?;
                        ck.release(e);
                        Ok(())
                    };
                    (LayerReport::kept(e, reason), writer.submit(Box::new(job)))
                }
            };
            if !queued {
                break; // the writer stopped on an error: finish() returns it
            }
            done += e.nbytes;
            on_layer(&report, done, total)?;
            reports.push(report);
        }
        writer.finish()
    })?;
    sink.finish()?;
    // Exit 0 must mean the output loads: read it back with the reader a user would use.
    match &header {
        Some(header) => verify::safetensors_file(&temp.temp, header)?,
        None => verify::arrow_file(&temp.temp, ck.entries().iter().map(|e| e.name.as_str()))?,
    }
    temp.commit()?;
    Ok(reports)
}

/// The safetensors header of the quantized output: `<name>.codes`, `.scales` and (when
/// asymmetric) `.zero_points` for each quantized tensor, the tensor itself otherwise.
fn quantized_header(ck: &Checkpoint, quantize: &[bool], spec: &QuantSpec) -> Vec<HeaderEntry> {
    ck.entries().iter().zip(quantize).flat_map(|(e, &q)| entry_header(e, q, spec)).collect()
}

/// What one input tensor becomes in the output's header: `<name>.codes`, `.scales` and
/// (when asymmetric) `.zero_points` when `quantize`, the tensor itself otherwise.
pub(crate) fn entry_header(e: &Entry, quantize: bool, spec: &QuantSpec) -> Vec<HeaderEntry> {
    if !quantize {
        let from = format!("the input tensor {:?} (passed through)", e.name);
        return vec![HeaderEntry { name: e.name.clone(), dtype: e.dtype, shape: e.shape.clone(), nbytes: e.nbytes, from }];
    }
    let (c, s, z) = output_sizes(&e.shape, spec);
    let cols = e.shape[e.shape.len() - 1];
    let scales_shape = Layout::new(e.numel() / cols, cols, spec.granularity).scales_shape();
    let from = format!("the quantized tensor {:?}", e.name);
    let part = |suffix: &str, dtype: Dtype, shape: Vec<usize>, nbytes: usize| HeaderEntry {
        name: format!("{}.{suffix}", e.name),
        dtype,
        shape,
        nbytes,
        from: from.clone(),
    };
    let mut header = vec![
        part("codes", Dtype::U8, vec![c], c),
        part("scales", scale_dtype_of(spec.scale_dtype), scales_shape.clone(), s * spec.scale_dtype.itemsize()),
    ];
    if z > 0 {
        header.push(part("zero_points", Dtype::U8, scales_shape, z));
    }
    header
}

enum Sink {
    Safetensors(SafetensorsWriter),
    Arrow(Box<ArrowWriter>),
}

impl Sink {
    fn quantized(&mut self, e: &Entry, out: EngineOutput, dtype: ScaleDType, pool: &dyn Allocator) -> Result<()> {
        match self {
            Sink::Safetensors(w) => {
                w.write(&format!("{}.codes", e.name), &out.codes)?;
                w.write(&format!("{}.scales", e.name), &scale_bytes(&out.scales, dtype))?;
                if !out.zero_points.is_empty() {
                    w.write(&format!("{}.zero_points", e.name), &out.zero_points)?;
                }
                out.recycle(pool);
                Ok(())
            }
            Sink::Arrow(w) => w.quantized(&e.name, &e.shape, out.codes, out.scales, out.zero_points),
        }
    }

    fn passthrough(&mut self, e: &Entry, bytes: &[u8]) -> Result<()> {
        match self {
            Sink::Safetensors(w) => w.write(&e.name, bytes),
            Sink::Arrow(w) => w.passthrough(&e.name, &e.shape, bytes),
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            Sink::Safetensors(w) => w.finish(),
            Sink::Arrow(w) => w.finish(),
        }
    }
}

/// The spec a quantized file's metadata records.
pub fn parse_spec(path: &Path, json: &str) -> Result<QuantSpec> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| bad_file(path, format!("unreadable quantbridge.spec metadata ({e})"), "re-create the file with quantbridge quantize"))?;
    let bits = v["bits"].as_i64().unwrap_or(0);
    let group = v["group_size"].as_i64();
    let granularity = v["granularity"].as_str().unwrap_or("group");
    let symmetric = v["symmetric"].as_bool().unwrap_or(false);
    let scale_dtype = v["scale_dtype"].as_str().unwrap_or("float32");
    let packed = v["packed"].as_bool().unwrap_or(true);
    QuantSpec::from_options(bits, group, symmetric, granularity, scale_dtype, packed, false)
}

/// Dequantize a quantbridge `.safetensors` output back to float32 tensors (pass-through
/// tensors are copied unchanged) into `output` (`.safetensors`).
pub fn dequantize_checkpoint(
    input: &Path,
    output: &Path,
    force: bool,
    on_layer: &mut dyn FnMut(&LayerReport, usize, usize) -> Result<()>,
) -> Result<Vec<LayerReport>> {
    if output_format(input).ok() == Some(Format::Arrow) {
        return Err(Error::validation(
            format!("{}: an Arrow IPC file", input.display()),
            "a quantbridge .safetensors output (dequantize restores those)",
            "read an Arrow output with pyarrow.ipc.open_file (docs/formats.md), or quantize to .safetensors",
        ));
    }
    if output_format(output)? != Format::Safetensors {
        return Err(Error::validation(
            format!("output {}", output.display()),
            "a .safetensors output for dequantized tensors",
            "name the output e.g. model-restored.safetensors",
        ));
    }
    let ck = Checkpoint::open(input)?;
    let not_ours = || bad_file(input, "a file without quantbridge metadata", "pass a file written by quantbridge quantize");
    let spec = parse_spec(input, ck.metadata.get("quantbridge.spec").ok_or_else(not_ours)?)?;
    let tensors: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(ck.metadata.get("quantbridge.tensors").ok_or_else(not_ours)?).map_err(|_| not_ours())?;
    let by_name: BTreeMap<&str, &Entry> = ck.entries().iter().map(|e| (e.name.as_str(), e)).collect();
    let part_names: std::collections::HashSet<String> = tensors
        .keys()
        .flat_map(|n| [format!("{n}.codes"), format!("{n}.scales"), format!("{n}.zero_points")])
        .collect();
    // Output order: the input's, with each quantized triple replaced by its tensor.
    let mut plan: Vec<(String, Option<&Entry>)> = Vec::new();
    for e in ck.entries() {
        if let Some(base) = e.name.strip_suffix(".codes").filter(|b| tensors.contains_key(*b)) {
            plan.push((base.to_owned(), None));
        } else if !part_names.contains(&e.name) {
            plan.push((e.name.clone(), Some(e)));
        }
    }
    let shape_of = |name: &str| -> Result<Vec<usize>> {
        tensors[name]["shape"]
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<Vec<_>>>())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad_file(input, format!("no shape recorded for {name:?}"), "re-create the file"))
    };
    let mut header = Vec::new();
    for (name, passthrough) in &plan {
        match passthrough {
            Some(e) => {
                let from = format!("the input tensor {name:?} (passed through)");
                header.push(HeaderEntry { name: name.clone(), dtype: e.dtype, shape: e.shape.clone(), nbytes: e.nbytes, from })
            }
            None => {
                let shape = shape_of(name)?;
                let n: usize = shape.iter().product();
                let from = format!("the restored tensor {name:?}");
                header.push(HeaderEntry { name: name.clone(), dtype: Dtype::F32, shape, nbytes: n * 4, from });
            }
        }
    }
    check_unique_output_names(&header)?;
    let (temp, file) = TempOutput::create(output, force)?;
    let mut writer = SafetensorsWriter::create(file, output, header.clone(), BTreeMap::new())?;
    let total = ck.data_bytes();
    let mut done = 0;
    let mut reports = Vec::new();
    let pool = BufferPool::default();
    let engine = Engine::new(Kernel::best(), &pool);
    for (name, passthrough) in &plan {
        let report = match passthrough {
            Some(e) => {
                ck.check_unchanged(e)?;
                writer.write(name, ck.raw_bytes(e))?;
                done += e.nbytes;
                LayerReport::kept(e, "not quantized in the input".into())
            }
            None => {
                let shape = shape_of(name)?;
                let part = |suffix: &str| by_name.get(format!("{name}.{suffix}").as_str()).copied();
                let (Some(codes), Some(scales)) = (part("codes"), part("scales")) else {
                    return Err(bad_file(input, format!("missing codes or scales for {name:?}"), "re-create the file"));
                };
                let zps = part("zero_points");
                ck.check_unchanged(codes)?;
                let q = rebuild(input, name, &shape, &spec, ck.raw_bytes(codes), ck.raw_bytes(scales), zps.map(|z| ck.raw_bytes(z)))?;
                let values = engine.dequantize(&q)?;
                writer.write(name, bytemuck::cast_slice(&values))?;
                let input_bytes = codes.nbytes + scales.nbytes + zps.map_or(0, |z| z.nbytes);
                done += input_bytes;
                let report = LayerReport { name: name.clone(), dtype: Dtype::F32, shape, quantized: true, stats: None, input_bytes, output_bytes: values.len() * 4, bytes_copied: 0, kept_because: None, gguf_type: None };
                pool.recycle_floats(values);
                report
            }
        };
        on_layer(&report, done, total)?;
        reports.push(report);
    }
    writer.finish()?;
    temp.commit()?;
    Ok(reports)
}

/// A [`Quantized`] from stored parts, checked against the sizes the spec implies.
fn rebuild(path: &Path, name: &str, shape: &[usize], spec: &QuantSpec, codes: &[u8], scales: &[u8], zps: Option<&[u8]>) -> Result<Quantized> {
    let (c, s, z) = output_sizes(shape, spec);
    let scale_size = spec.scale_dtype.itemsize();
    if codes.len() != c || scales.len() != s * scale_size || zps.map_or(0, <[u8]>::len) != z {
        return Err(bad_file(path, format!("parts of {name:?} whose sizes do not match its shape and spec"), "re-create the file"));
    }
    let scales = match spec.scale_dtype {
        ScaleDType::F32 => Scales::F32(scales.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
        ScaleDType::F16 => Scales::F16(scales.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]])).collect()),
        ScaleDType::BF16 => Scales::BF16(scales.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]])).collect()),
    };
    let cols = shape[shape.len() - 1];
    let rows = shape.iter().product::<usize>().checked_div(cols).unwrap_or(0);
    Ok(Quantized {
        shape: shape.to_vec(),
        dtype: DType::F32,
        spec: *spec,
        layout: Layout::new(rows, cols, spec.granularity),
        codes: codes.to_vec(),
        scales,
        zero_points: zps.map(<[u8]>::to_vec),
        stats: None,
        gguf: None,
    })
}
