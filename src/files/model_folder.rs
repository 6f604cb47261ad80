//! Hugging Face model folders in, serving folders out: a compressed-tensors or MLX folder
//! that vLLM, transformers or mlx-lm open as it is (docs/formats.md (serving formats)).
//!
//! The output folder is built under a hidden temporary name beside it: the weights sharded
//! like the input's (same shard names, a new index), `config.json` with the format's
//! quantization block, and every other file of the input folder copied. Every shard is
//! read back before the folder is renamed into place, so a failed or interrupted job
//! leaves nothing under the output's name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::files::checkpoint::{Checkpoint, Entry, Scratch};
use crate::files::job::{quantize_entry, LayerReport, TempOutput};
use crate::files::output::{check_unique_output_names, HeaderEntry, SafetensorsWriter};
use crate::files::select::{decide, is_embedding, Choice};
use crate::files::write_behind::WriteBehind;
use crate::files::{io_error, temp_beside, verify};
use crate::quant::{BufferPool, Engine, Granularity, Kernel, QuantSpec, ScaleDType};
use crate::serving::{group_size, module_of, EngineResult, ServingFormat};

const CONFIG: &str = "config.json";
/// A sharded checkpoint's index (also the sharded jobs', `shards.rs`).
pub(crate) const INDEX: &str = "model.safetensors.index.json";

/// Weight files of other frameworks: not copied (the output holds the weights).
const WEIGHT_EXTENSIONS: [&str; 8] = ["safetensors", "bin", "pt", "pth", "h5", "msgpack", "ckpt", "gguf"];

/// The scale dtype a model's `config.json` implies (`torch_dtype`, or transformers 5's
/// `dtype`), else that of its first float weight.
fn model_dtype(config: &Map<String, Value>, ck: &Checkpoint) -> ScaleDType {
    let named = config.get("torch_dtype").or_else(|| config.get("dtype")).and_then(Value::as_str);
    match named {
        Some("float16") => ScaleDType::F16,
        Some("bfloat16") => ScaleDType::BF16,
        Some(_) => ScaleDType::F32,
        None => match ck.entries().iter().find(|e| e.shape.len() >= 2 && e.float_dtype().is_some()).map(|e| e.dtype) {
            Some(Dtype::F16) => ScaleDType::F16,
            Some(Dtype::BF16) => ScaleDType::BF16,
            _ => ScaleDType::F32,
        },
    }
}

/// The output folder while it is written: a hidden temporary beside its final path,
/// removed unless [`TempFolder::commit`] renames it into place.
struct TempFolder {
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl TempFolder {
    fn create(target: &Path, force: bool) -> Result<Self> {
        let temp = temp_beside(target, force)?;
        let _ = std::fs::remove_dir_all(&temp); // a previous run of this pid, killed
        std::fs::create_dir(&temp).map_err(|e| io_error(&temp, "create", &e))?;
        Ok(TempFolder { temp, target: target.to_owned(), committed: false })
    }

    /// Rename into place; an existing target (`--force`) is moved aside first and removed
    /// after, so the target name never holds a half-replaced folder.
    fn commit(mut self) -> Result<()> {
        let old = self.temp.with_extension("old");
        let had_old = self.target.exists();
        if had_old {
            std::fs::rename(&self.target, &old).map_err(|e| io_error(&self.target, "replace", &e))?;
        }
        std::fs::rename(&self.temp, &self.target).map_err(|e| io_error(&self.target, "write", &e))?;
        self.committed = true;
        if had_old {
            let _ = if old.is_dir() { std::fs::remove_dir_all(&old) } else { std::fs::remove_file(&old) };
        }
        Ok(())
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.temp);
        }
    }
}

/// Refuse an output that is the input folder or lies inside it (the copy of the folder's
/// files would copy the output into itself).
fn check_output_outside(input: &Path, output: &Path) -> Result<()> {
    let input = input.canonicalize().map_err(|e| io_error(input, "read", &e))?;
    let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(parent) = parent.canonicalize() else { return Ok(()) }; // reported by TempFolder
    let output = parent.join(output.file_name().unwrap_or_default());
    if output.starts_with(&input) {
        return Err(Error::validation(
            format!("an output folder {} inside the input folder {}", output.display(), input.display()),
            "an output folder outside the model folder",
            "write it beside the model, e.g. -o ../model-int4",
        ));
    }
    Ok(())
}

/// One output shard: its file name and what it holds, in order.
struct Shard {
    file: String,
    header: Vec<HeaderEntry>,
    /// `(entry index, decision)` of each input tensor in this shard.
    tensors: Vec<(usize, std::result::Result<(), String>)>,
}

/// Options of [`quantize_model_folder`] beyond input and output.
pub struct FolderJob<'a> {
    /// The target format.
    pub format: ServingFormat,
    /// The spec; its scale dtype is replaced by the model's unless `scale_dtype_given`.
    pub spec: QuantSpec,
    /// The caller chose the scale dtype (it must then be the model's).
    pub scale_dtype_given: bool,
    /// Replace an existing output.
    pub force: bool,
    /// The caller's patterns.
    pub select: &'a dyn Fn(&Entry) -> Choice,
}

/// Everything a folder job decides before a byte is written: the opened input, the spec
/// in the model's dtype, and each output shard's header. A shard-parallel job builds the
/// same plan on its driver and on every worker (it is a pure function of the input and
/// the options), so each worker writes exactly the bytes the serial job would.
pub struct FolderPlan {
    input: PathBuf,
    config: Map<String, Value>,
    ck: Checkpoint,
    format: ServingFormat,
    spec: QuantSpec,
    shards: Vec<Shard>,
    kept_linear: Vec<String>,
}

impl FolderPlan {
    /// Plan the job `input` → `output` (checked to lie outside `input`).
    pub fn new(input: &Path, output: &Path, job: &FolderJob<'_>) -> Result<Self> {
        let format = job.format;
        let config_path = input.join(CONFIG);
        if !input.is_dir() || !config_path.is_file() {
            return Err(Error::validation(
                format!("{}: {} without a config.json", input.display(), if input.is_dir() { "a folder" } else { "a file, not a folder," }),
                format!("a Hugging Face model folder for --format {} (config.json + model.safetensors, or shards with model.safetensors.index.json)", format.name()),
                "pass the model's folder (the format's quantization block goes into its config.json), or use --format quantbridge for a bare checkpoint",
            ));
        }
        let config = read_config(&config_path)?;
        check_output_outside(input, output)?;
        let ck = Checkpoint::open(input)?;
        let dtype = model_dtype(&config, &ck);
        if job.scale_dtype_given && job.spec.scale_dtype != dtype {
            return Err(Error::validation(
                format!("scale dtype {} for a {} model", job.spec.scale_dtype.name(), dtype.name()),
                format!("{} scales: {} stores scales in the model's dtype", dtype.name(), format.name()),
                "drop --scale-dtype (it defaults to the model's dtype for this format)",
            ));
        }
        let spec = QuantSpec { scale_dtype: dtype, stats: true, ..job.spec };
        format.check_spec(&spec)?;

        // Plan every shard before a byte is written: names are checked across the folder.
        let mut shards: Vec<Shard> = Vec::new();
        let mut kept_linear: Vec<String> = Vec::new();
        for (i, e) in ck.entries().iter().enumerate() {
            let file = ck.file_name_of(e);
            if shards.last().is_none_or(|s| s.file != file) {
                shards.push(Shard { file, header: Vec::new(), tensors: Vec::new() });
            }
            let shard = shards.last_mut().expect("pushed above");
            let decision = decide(e, Some(format), &spec, &(job.select)(e));
            match &decision {
                Ok(()) => shard.header.extend(format.parts(&e.name, &e.shape, &spec).into_iter().map(|p| HeaderEntry {
                    name: p.name,
                    dtype: p.dtype,
                    shape: p.shape,
                    nbytes: p.nbytes,
                    from: format!("the quantized tensor {:?} in {}", e.name, shard.file),
                })),
                Err(_) => {
                    // A kept 2-D weight of a module that is not an embedding is a Linear the
                    // format's config must tell the loader to leave alone.
                    if let Some(module) = module_of(&e.name).filter(|m| e.shape.len() == 2 && !is_embedding(m)) {
                        kept_linear.push(module.to_owned());
                    }
                    shard.header.push(HeaderEntry {
                        name: e.name.clone(),
                        dtype: e.dtype,
                        shape: e.shape.clone(),
                        nbytes: e.nbytes,
                        from: format!("the input tensor {:?} in {} (passed through)", e.name, shard.file),
                    });
                }
            }
            shard.tensors.push((i, decision));
        }
        let all: Vec<HeaderEntry> = shards.iter().flat_map(|s| s.header.iter().cloned()).collect();
        check_unique_output_names(&all)?;
        Ok(FolderPlan { input: input.to_owned(), config, ck, format, spec, shards, kept_linear })
    }

    /// The output shards' file names, in order (the input's).
    pub fn shard_files(&self) -> Vec<&str> {
        self.shards.iter().map(|s| s.file.as_str()).collect()
    }

    /// The opened input.
    pub fn into_checkpoint(self) -> Checkpoint {
        self.ck
    }

    /// Write output shard `file` into `folder`: under a temporary name, synced, read back
    /// as a reader would, then renamed. `on_layer` gets each tensor's report with the bytes
    /// done so far in this shard and the shard's total.
    pub fn write_shard(
        &self,
        file: &str,
        folder: &Path,
        on_layer: &mut dyn FnMut(&LayerReport, usize, usize) -> Result<()>,
    ) -> Result<Vec<LayerReport>> {
        let shard = self.shards.iter().find(|s| s.file == file).ok_or_else(|| {
            Error::validation(format!("a shard {file:?}"), "one of the input's shards", "pass a shard the index lists")
        })?;
        let (format, spec) = (self.format, self.spec);
        let metadata = BTreeMap::from([(
            "format".to_owned(),
            match format {
                ServingFormat::CompressedTensors => "pt",
                ServingFormat::Mlx => "mlx",
            }
            .to_owned(),
        )]);
        let total: usize = shard.tensors.iter().map(|(i, _)| self.ck.entries()[*i].nbytes).sum();
        let (mut done, mut reports) = (0, Vec::with_capacity(shard.tensors.len()));
        let mut scratch = Scratch::default();
        let pool = BufferPool::default();
        let engine = Engine::new(Kernel::best(), &pool);
        let (ck, pool) = (&self.ck, &pool);
        let path = folder.join(&shard.file);
        let (temp, file) = TempOutput::create(&path, true)?;
        let writer = SafetensorsWriter::create(file, &path, shard.header.clone(), metadata)?;
        // The shard is written on a second thread while the next tensor is quantized.
        let writer = std::thread::scope(|scope| -> Result<SafetensorsWriter> {
            let mut behind = WriteBehind::start(scope, writer);
            for (i, decision) in &shard.tensors {
                let e = &ck.entries()[*i];
                ck.check_unchanged(e)?;
                let (report, queued) = match decision {
                    Ok(()) => {
                        let out = quantize_entry(ck, e, &spec, &engine, pool, &mut scratch)?;
                        ck.release(e); // read: its pages can go
                        let written = format.parts(&e.name, &e.shape, &spec).iter().map(|p| p.nbytes).sum();
                        let report = LayerReport::quantized(e, &out, written);
                        let job = move |writer: &mut SafetensorsWriter| {
                            let result = EngineResult { codes: &out.codes, scales: &out.scales, zero_points: &out.zero_points };
                            for (part, bytes) in format.parts(&e.name, &e.shape, &spec).iter().zip(format.encode(&e.shape, &spec, &result)) {
                                writer.write(&part.name, &bytes)?;
                            }
                            out.recycle(pool);
                            Ok(())
                        };
                        (report, behind.submit(Box::new(job)))
                    }
                    Err(reason) => {
                        // Written from the mapped input, whose pages are released once written.
                        let job = move |writer: &mut SafetensorsWriter| {
                            writer.write(&e.name, ck.raw_bytes(e))?;
                            ck.release(e);
                            Ok(())
                        };
                        (LayerReport::kept(e, reason.clone()), behind.submit(Box::new(job)))
                    }
                };
                if !queued {
                    break; // the writer stopped on an error: finish() returns it
                }
                done += e.nbytes;
                on_layer(&report, done, total)?;
                reports.push(report);
            }
            behind.finish()
        })?;
        writer.finish()?;
        // Exit 0 must mean the folder loads: each shard is read back as a reader would.
        verify::safetensors_file(&temp.temp, &shard.header)?;
        temp.commit()?;
        Ok(reports)
    }

    /// Complete `folder` once every shard is in it: the index (for a sharded input),
    /// `config.json` with the format's quantization block, and the input's other files.
    pub fn finish(&self, folder: &Path) -> Result<()> {
        if self.input.join(INDEX).is_file() {
            let weight_map: Map<String, Value> = self
                .shards
                .iter()
                .flat_map(|s| s.header.iter().map(|h| (h.name.clone(), Value::from(s.file.clone()))))
                .collect();
            let total_size: usize = self.shards.iter().flat_map(|s| s.header.iter()).map(|h| h.nbytes).sum();
            write_json(&folder.join(INDEX), &json!({"metadata": {"total_size": total_size}, "weight_map": weight_map}))?;
        }
        let mut config = self.config.clone();
        add_quantization_config(&mut config, self.format, &self.spec, self.kept_linear.clone());
        write_json(&folder.join(CONFIG), &Value::Object(config))?;
        copy_other_files(&self.input, folder, &self.ck)
    }
}

/// Quantize the Hugging Face model folder `input` into the serving folder `output`.
pub fn quantize_model_folder(
    input: &Path,
    output: &Path,
    job: &FolderJob<'_>,
    on_layer: &mut dyn FnMut(&LayerReport, usize, usize) -> Result<()>,
) -> Result<Vec<LayerReport>> {
    let plan = FolderPlan::new(input, output, job)?;
    let temp = TempFolder::create(output, job.force)?;
    let total = plan.ck.data_bytes();
    let (mut before, mut reports) = (0, Vec::with_capacity(plan.ck.entries().len()));
    for file in plan.shard_files() {
        let mut in_shard = |r: &LayerReport, done: usize, _: usize| on_layer(r, before + done, total);
        let shard_reports = plan.write_shard(file, &temp.temp, &mut in_shard)?;
        before += shard_reports.iter().map(|r| r.input_bytes).sum::<usize>();
        reports.extend(shard_reports);
    }
    plan.finish(&temp.temp)?;
    temp.commit()?;
    Ok(reports)
}

fn bad_config(path: &Path, found: String, fix: &str) -> Error {
    Error::validation(format!("{}: {found}", path.display()), "the config.json of a float model", fix)
}

fn read_config(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, "read", &e))?;
    let config: Map<String, Value> = serde_json::from_str(&text)
        .map_err(|e| bad_config(path, format!("a config.json that is not a JSON object ({e})"), "restore the model's config.json"))?;
    if let Some(q) = config.get("quantization_config").or_else(|| config.get("quantization")) {
        let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("mlx");
        return Err(bad_config(
            path,
            format!("a model already quantized ({method})"),
            "pass the original float model folder",
        ));
    }
    Ok(config)
}

pub(crate) fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON serializes") + "\n";
    std::fs::write(path, text).map_err(|e| io_error(path, "write", &e))
}

/// The format's quantization block, as llm-compressor and mlx-lm write it.
fn add_quantization_config(config: &mut Map<String, Value>, format: ServingFormat, spec: &QuantSpec, kept_linear: Vec<String>) {
    match format {
        ServingFormat::CompressedTensors => {
            let strategy = match spec.granularity {
                Granularity::Group(_) => "group",
                Granularity::Channel => "channel",
                Granularity::Tensor => "tensor",
            };
            let mut ignore = kept_linear;
            if !ignore.iter().any(|m| m == "lm_head") {
                ignore.push("lm_head".into()); // also covers a head tied to the embedding
            }
            let weights = json!({
                "num_bits": spec.bits,
                "type": "int",
                "symmetric": spec.symmetric,
                "strategy": strategy,
                "group_size": group_size(spec),
                "dynamic": false,
                "actorder": null,
                "observer": "minmax",
            });
            config.insert(
                "quantization_config".into(),
                json!({
                    "quant_method": "compressed-tensors",
                    "format": "pack-quantized",
                    "quantization_status": "compressed",
                    "config_groups": {"group_0": {
                        "targets": ["Linear"],
                        "weights": weights,
                        "input_activations": null,
                        "output_activations": null,
                        "format": "pack-quantized",
                    }},
                    "ignore": ignore,
                    "kv_cache_scheme": null,
                }),
            );
        }
        ServingFormat::Mlx => {
            let block = json!({"group_size": group_size(spec), "bits": spec.bits});
            config.insert("quantization".into(), block.clone());
            config.insert("quantization_config".into(), block);
        }
    }
}

/// Copy every file of `input` but the weights, index and config (tokenizer, generation
/// config, README, sentence-transformers' module folders), keeping the tree. Hidden
/// folders (`.git`, `.cache`) are skipped; symbolic links (the Hugging Face cache's) are
/// followed.
fn copy_other_files(input: &Path, output: &Path, ck: &Checkpoint) -> Result<()> {
    let weights: Vec<PathBuf> = ck.files().iter().filter_map(|f| f.canonicalize().ok()).collect();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = input.join(&rel);
        let listing = std::fs::read_dir(&dir).map_err(|e| io_error(&dir, "read", &e))?;
        for item in listing {
            let item = item.map_err(|e| io_error(&dir, "read", &e))?;
            let name = item.file_name();
            let rel_path = rel.join(&name);
            let path = item.path();
            if path.is_dir() {
                if !name.to_string_lossy().starts_with('.') {
                    let target = output.join(&rel_path);
                    std::fs::create_dir_all(&target).map_err(|e| io_error(&target, "create", &e))?;
                    stack.push(rel_path);
                }
                continue;
            }
            let is_weights = path.extension().and_then(|x| x.to_str()).is_some_and(|x| WEIGHT_EXTENSIONS.contains(&x))
                || path.canonicalize().is_ok_and(|c| weights.contains(&c));
            let top_level = rel.as_os_str().is_empty();
            if is_weights || (top_level && (name == CONFIG || name == INDEX)) {
                continue;
            }
            let target = output.join(&rel_path);
            std::fs::copy(&path, &target).map_err(|e| io_error(&path, "copy", &e))?;
        }
    }
    Ok(())
}
