//! A sharded checkpoint one shard at a time: the three steps a shard-parallel job
//! (`python/quantbridge/_sharded.py`, docs/distributed.md) runs on its driver and its
//! workers. [`plan`] checks the whole job before anything is written, [`quantize_shard`]
//! writes one output shard (a worker's task), [`finish`] writes what needs every shard
//! (the index, `config.json`). Each step plans from the input and the options alone, so a
//! shard's bytes do not depend on which process wrote it, or when.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::files::{bad_file, temp_beside};
use crate::files::checkpoint::{Checkpoint, Entry};
use crate::files::job::{entry_header, quantize_checkpoint, LayerReport};
use crate::files::model_folder::{write_json, FolderJob, FolderPlan, INDEX};
use crate::files::output::{check_unique_output_names, HeaderEntry};
use crate::files::select::{decide, Choice};
use crate::quant::QuantSpec;
use crate::serving::ServingFormat;

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

/// `input` is a sharded checkpoint (a folder with `model.safetensors.index.json`, or the
/// index itself), or a message saying why a sharded job cannot take it.
fn check_sharded(input: &Path) -> Result<()> {
    let is_index = input.is_dir() && input.join(INDEX).is_file()
        || input.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".index.json"));
    if !is_index {
        return Err(Error::validation(
            format!("{}: not a sharded checkpoint", input.display()),
            "a folder with model.safetensors.index.json (or the index itself) for a shard-parallel job",
            "drop --executor to quantize a single file in this process",
        ));
    }
    Ok(())
}

/// The sharded checkpoint `input`, opened.
fn open_sharded(input: &Path) -> Result<Checkpoint> {
    check_sharded(input)?;
    Checkpoint::open(input)
}

/// Each stored tensor of quantbridge's layout with the input shard its tensor is in, in
/// order: what the single-file job writes for each shard, side by side.
fn stored_tensors(ck: &Checkpoint, job: &ShardedJob<'_>) -> Vec<(String, HeaderEntry)> {
    let spec = QuantSpec { stats: true, ..job.spec };
    ck.entries()
        .iter()
        .flat_map(|e| {
            let file = ck.file_name_of(e);
            let quantize = decide(e, None, &spec, &(job.select)(e)).is_ok();
            entry_header(e, quantize, &spec).into_iter().map(move |h| (file.clone(), h))
        })
        .collect()
}

fn folder_job<'a>(job: &'a ShardedJob<'a>, format: ServingFormat) -> FolderJob<'a> {
    FolderJob { format, spec: job.spec, scale_dtype_given: job.scale_dtype_given, force: true, select: job.select }
}

/// Check the job `input` → `output` as the serial job would before writing (an existing
/// output without `force`, spec, format, names across every shard), and list the shards to
/// schedule, in the index's order.
pub fn plan(input: &Path, output: &Path, force: bool, job: &ShardedJob<'_>) -> Result<Vec<ShardInfo>> {
    temp_beside(output, force)?; // the serial jobs' check of the output's name and folder
    job.spec.validate()?;
    let ck = match job.format {
        Some(format) => {
            check_sharded(input)?;
            FolderPlan::new(input, output, &folder_job(job, format))?.into_checkpoint()
        }
        None => {
            let ck = open_sharded(input)?;
            let header: Vec<HeaderEntry> = stored_tensors(&ck, job).into_iter().map(|(_, h)| h).collect();
            check_unique_output_names(&header)?;
            ck
        }
    };
    let mut shards: Vec<ShardInfo> = Vec::new();
    for e in ck.entries() {
        let file = ck.file_name_of(e);
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
    let stored = stored_tensors(&open_sharded(input)?, job);
    let total_size: usize = stored.iter().map(|(_, h)| h.nbytes).sum();
    let weight_map: Map<String, Value> = stored.into_iter().map(|(file, h)| (h.name, Value::from(file))).collect();
    write_json(&folder.join(INDEX), &json!({"metadata": {"total_size": total_size, "format": "quantbridge"}, "weight_map": weight_map}))
}
