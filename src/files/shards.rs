//! A sharded checkpoint one shard at a time: the three steps a shard-parallel job
//! (`python/quantbridge/_sharded.py`, docs/distributed.md) runs on its driver and its
//! workers. [`plan`] checks the whole job before anything is written, [`quantize_shard`]
//! writes one output shard (a worker's task), [`finish`] writes what needs every shard
//! (the index, `config.json`). Each step plans from the input and the options alone, so a
//! shard's bytes do not depend on which process wrote it, or when.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::files::checkpoint::{Checkpoint, Entry};
use crate::files::job::{quantize_checkpoint, quantized_header, LayerReport};
use crate::files::model_folder::{FolderJob, FolderPlan};
use crate::files::output::check_unique_output_names;
use crate::files::select::{decide, Choice};
use crate::files::{bad_file, io_error};
use crate::quant::QuantSpec;
use crate::serving::ServingFormat;

const INDEX: &str = "model.safetensors.index.json";

/// The options of a sharded job.
pub struct ShardedJob<'a> {
    /// A serving format, or `None` for quantbridge's own layout (one `.safetensors` per shard).
    pub format: Option<ServingFormat>,
    /// The spec, as the caller gave it.
    pub spec: QuantSpec,
    /// The caller chose the scale dtype.
    pub scale_dtype_given: bool,
    /// The caller's patterns.
    pub select: &'a dyn Fn(&Entry) -> Choice,
}

/// One input shard, as the driver schedules it.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    /// File name (the output shard has the same).
    pub file: String,
    /// Bytes of tensor data in it.
    pub input_bytes: usize,
    /// Its largest tensor's bytes: a task's memory is bounded by about twice this.
    pub largest_tensor: usize,
    /// Tensors in it.
    pub tensors: usize,
}

/// The sharded checkpoint `input` (a folder with `model.safetensors.index.json`, or the
/// index itself) opened, or a message saying why a sharded job cannot take it.
fn open_sharded(input: &Path) -> Result<Checkpoint> {
    let is_index = input.is_dir() && input.join(INDEX).is_file()
        || input.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".index.json"));
    if !is_index {
        return Err(Error::validation(
            format!("{}: not a sharded checkpoint", input.display()),
            "a folder with model.safetensors.index.json (or the index itself) for a shard-parallel job",
            "drop --executor to quantize a single file in this process",
        ));
    }
    Checkpoint::open(input)
}

fn folder_job<'a>(job: &'a ShardedJob<'a>, format: ServingFormat) -> FolderJob<'a> {
    FolderJob { format, spec: job.spec, scale_dtype_given: job.scale_dtype_given, force: true, select: job.select }
}

/// Check the job `input` → `output` as the serial job would before writing (spec, format,
/// names across every shard), and list the shards to schedule, in the index's order.
pub fn plan(input: &Path, output: &Path, job: &ShardedJob<'_>) -> Result<Vec<ShardInfo>> {
    job.spec.validate()?;
    let ck = match job.format {
        Some(format) => {
            open_sharded(input)?;
            FolderPlan::new(input, output, &folder_job(job, format))?.into_checkpoint()
        }
        None => {
            let ck = open_sharded(input)?;
            let spec = QuantSpec { stats: true, ..job.spec };
            let quantize: Vec<bool> = ck.entries().iter().map(|e| decide(e, None, &spec, &(job.select)(e)).is_ok()).collect();
            check_unique_output_names(&quantized_header(&ck, &quantize, &spec))?;
            ck
        }
    };
    let mut shards: Vec<ShardInfo> = Vec::new();
    for e in ck.entries() {
        let file = shard_name(&ck, e);
        if shards.last().is_none_or(|s| s.file != file) {
            shards.push(ShardInfo { file, input_bytes: 0, largest_tensor: 0, tensors: 0 });
        }
        let shard = shards.last_mut().expect("pushed above");
        shard.input_bytes += e.nbytes;
        shard.largest_tensor = shard.largest_tensor.max(e.nbytes);
        shard.tensors += 1;
    }
    Ok(shards)
}

fn shard_name(ck: &Checkpoint, e: &Entry) -> String {
    ck.file_of(e).and_then(Path::file_name).and_then(|n| n.to_str()).unwrap_or("model.safetensors").to_owned()
}

/// The path of input shard `file`, one the index lists.
fn input_shard(ck: &Checkpoint, file: &str) -> Result<PathBuf> {
    ck.files().iter().find(|p| p.file_name().and_then(|n| n.to_str()) == Some(file)).cloned().ok_or_else(|| {
        bad_file(&ck.path, format!("no shard named {file:?} in the index"), "pass a shard file the index lists")
    })
}

/// Write output shard `file` (named as the input's) into `folder`: under a temporary name,
/// synced and read back, then renamed; a killed task leaves no file under that name.
pub fn quantize_shard(
    input: &Path,
    file: &str,
    folder: &Path,
    job: &ShardedJob<'_>,
    on_layer: &mut dyn FnMut(&LayerReport, usize, usize) -> Result<()>,
) -> Result<Vec<LayerReport>> {
    match job.format {
        Some(format) => FolderPlan::new(input, folder, &folder_job(job, format))?.write_shard(file, folder, on_layer),
        None => {
            let shard = input_shard(&open_sharded(input)?, file)?;
            quantize_checkpoint(&shard, &folder.join(file), &job.spec, true, job.select, on_layer)
        }
    }
}

/// Complete `folder`, which holds every output shard: the index (quantbridge's layout:
/// each stored tensor mapped to its shard) or, for a serving format, the index,
/// `config.json` and the input's other files, exactly as the serial job writes them.
pub fn finish(input: &Path, folder: &Path, job: &ShardedJob<'_>) -> Result<()> {
    if let Some(format) = job.format {
        return FolderPlan::new(input, folder, &folder_job(job, format))?.finish(folder);
    }
    let ck = open_sharded(input)?;
    let spec = QuantSpec { stats: true, ..job.spec };
    let mut weight_map = Map::new();
    let mut total_size = 0;
    for path in ck.files() {
        let shard = Checkpoint::open(path)?;
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let quantize: Vec<bool> = shard.entries().iter().map(|e| decide(e, None, &spec, &(job.select)(e)).is_ok()).collect();
        for h in quantized_header(&shard, &quantize, &spec) {
            total_size += h.nbytes;
            weight_map.insert(h.name, Value::from(file));
        }
    }
    let index = json!({"metadata": {"total_size": total_size, "format": "quantbridge"}, "weight_map": weight_map});
    let path = folder.join(INDEX);
    let text = serde_json::to_string_pretty(&index).expect("JSON serializes") + "\n";
    std::fs::write(&path, text).map_err(|e| io_error(&path, "write", &e))
}
