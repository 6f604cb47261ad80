"""Shard-parallel checkpoints on the local pool, Ray and Dask (docs/distributed.md), and
embedding columns through Ray Data and Dask: same bytes whatever the engine, lost workers
retried, crashed jobs resumed, nothing partial under the output's name.

Every test starts and stops its own engine (a local Ray instance, a Dask LocalCluster) on
this machine's two cores."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file, save_file

import quantbridge as qb
from quantbridge import _sharded

SHARDS = 8
ENGINES = [("local", 2), ("ray", 2), ("dask", 2)]
FORMATS = ["quantbridge", "compressed-tensors", "mlx"]
KILLED = "model-00003-of-00008.safetensors"


def make_checkpoint(folder: Path, shards: int = SHARDS, poison: str | None = None) -> Path:
    """A float32 Llama-like checkpoint in ``shards`` shards with an index and a config."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {
            f"model.layers.{s}.mlp.up_proj.weight": rng.standard_normal((128, 256), dtype=np.float32),
            f"model.layers.{s}.mlp.down_proj.weight": rng.standard_normal((256, 128), dtype=np.float32),
            f"model.layers.{s}.input_layernorm.weight": np.ones(256, np.float32),
        }
        if poison == name:
            tensors[f"model.layers.{s}.mlp.up_proj.weight"][5, 9] = np.nan
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "float32"}))
    (folder / "tokenizer.json").write_text("{}")
    return folder


def digests(folder: Path) -> dict[str, str]:
    """Every file of ``folder`` (hidden ones included) and its SHA-256."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("sharded") / "model")


@pytest.fixture(scope="module")
def reference(checkpoint, tmp_path_factory):
    """Each format's output written shard after shard in this process (workers=1)."""
    root = tmp_path_factory.mktemp("reference")
    out = {}
    for fmt in FORMATS:
        qb.quantize_file(checkpoint, root / fmt, format=fmt, workers=1)
        out[fmt] = digests(root / fmt)
    return out


@pytest.fixture
def kill_once(monkeypatch, tmp_path):
    """Make the worker that quantizes shard 3 die (SIGKILL) after its first tensor, once."""
    marker = tmp_path / "killed"
    monkeypatch.setenv(_sharded.KILL_ONCE_ENV, f"{KILLED}:{marker}")
    return marker


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("executor", "workers"), ENGINES)
def test_every_engine_writes_the_same_bytes(checkpoint, reference, tmp_path, fmt, executor, workers):
    out = tmp_path / "out"
    reports = qb.quantize_file(checkpoint, out, format=fmt, executor=executor, workers=workers)
    assert digests(out) == reference[fmt]
    assert [r["name"] for r in reports] == [t["name"] for t in qb.inspect_file(checkpoint)["tensors"]]
    assert sum(r["quantized"] for r in reports) == 2 * SHARDS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_the_quantbridge_folder_is_one_file_per_shard_and_an_index(checkpoint, tmp_path):
    out = tmp_path / "q"
    qb.quantize_file(checkpoint, out, executor="local", workers=2)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in checkpoint.glob("*.safetensors"))
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    for shard in shards:
        alone = tmp_path / f"alone-{shard}"
        qb.quantize_file(checkpoint / shard, alone)  # the single-file job on that shard
        assert (out / shard).read_bytes() == alone.read_bytes()
        assert all(index["weight_map"][name] == shard for name in load_file(str(out / shard)))
    assert len(index["weight_map"]) == sum(len(load_file(str(out / s))) for s in shards)
    listed = {t["name"] for t in qb.inspect_file(out)["tensors"]}
    assert "model.layers.0.mlp.up_proj.weight.codes" in listed


def test_a_serving_folder_keeps_the_models_other_files(checkpoint, tmp_path):
    out = tmp_path / "ct"
    qb.quantize_file(checkpoint, out, format="compressed-tensors", executor="dask", workers=2)
    assert (out / "tokenizer.json").read_text() == "{}"
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"


@pytest.mark.parametrize(("executor", "workers"), ENGINES)
def test_a_killed_worker_is_retried_and_the_output_is_identical(checkpoint, reference, tmp_path, kill_once,
                                                                executor, workers):
    out = tmp_path / "out"
    qb.quantize_file(checkpoint, out, executor=executor, workers=workers)
    assert kill_once.exists(), "the fault was not injected"
    assert digests(out) == reference["quantbridge"]  # no stray temporary file either


def test_a_worker_that_keeps_dying_fails_the_job_naming_the_shard(checkpoint, tmp_path, monkeypatch):
    # The marker's folder does not exist, so it can never be created: the worker dies every time.
    monkeypatch.setenv(_sharded.KILL_ONCE_ENV, f"{KILLED}:{tmp_path / 'missing' / 'marker'}")
    out = tmp_path / "out"
    with pytest.raises(qb.QuantizationError, match=f"shard {KILLED}.*died.*max_retries=1") as info:
        qb.quantize_file(checkpoint, out, executor="local", workers=2, max_retries=1)
    assert not out.exists()
    assert any("run the same command again to resume" in n for n in getattr(info.value, "__notes__", []))


class StopAfter:
    """A progress callback that raises once ``n`` shards are finished: a driver crash."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, report, done, total) -> None:
        pass

    def shard_done(self, done: int, total: int) -> None:
        if done >= self.n:
            raise RuntimeError("driver crashed")


def test_a_rerun_after_a_crash_skips_verified_shards(checkpoint, reference, tmp_path):
    out = tmp_path / "out"
    staging = tmp_path / ".out.partial"
    with pytest.raises(RuntimeError, match="driver crashed"):
        qb.quantize_file(checkpoint, out, executor="local", workers=2, progress=StopAfter(3))
    assert not out.exists()
    manifest = json.loads((staging / _sharded.MANIFEST).read_text())
    finished = sorted(manifest["shards"])
    assert len(finished) >= 3
    inodes = {f: (staging / f).stat().st_ino for f in finished}
    corrupted = finished[0]  # a finished shard whose bytes changed is quantized again
    data = bytearray((staging / corrupted).read_bytes())
    data[-1] ^= 0xFF
    (staging / corrupted).write_bytes(data)

    seen: list[str] = []
    reports = qb.quantize_file(checkpoint, out, executor="dask", workers=2,
                               progress=lambda r, done, total: seen.append(r["name"]))
    assert digests(out) == reference["quantbridge"]
    assert {f: (out / f).stat().st_ino for f in finished[1:]} == {f: inodes[f] for f in finished[1:]}
    assert (out / corrupted).stat().st_ino != inodes[corrupted]
    assert len(reports) == len(seen) == 3 * SHARDS  # resumed shards are reported too
    assert not staging.exists()


def test_another_jobs_leftovers_are_not_reused(checkpoint, reference, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        qb.quantize_file(checkpoint, out, bits=8, executor="local", workers=2, progress=StopAfter(2))
    qb.quantize_file(checkpoint, out, executor="local", workers=2)  # int4: nothing of the int8 run is kept
    assert digests(out) == reference["quantbridge"]


def test_a_second_driver_on_the_same_output_is_refused(checkpoint, tmp_path):
    staging = tmp_path / ".out.partial"
    staging.mkdir()
    fd = os.open(staging, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(OSError, match="another quantbridge job is writing"):
            qb.quantize_file(checkpoint, tmp_path / "out", workers=2)
    finally:
        os.close(fd)


@pytest.mark.parametrize(("executor", "workers"), ENGINES)
def test_a_tasks_error_reaches_the_caller_as_it_was_raised(tmp_path, executor, workers):
    bad = make_checkpoint(tmp_path / "bad", shards=3, poison="model-00002-of-00003.safetensors")
    with pytest.raises(qb.ValidationError, match=r"model.layers.1.mlp.up_proj.weight.*contains NaN or Inf"):
        qb.quantize_file(bad, tmp_path / "out", executor=executor, workers=workers)
    assert not (tmp_path / "out").exists()
    if not (tmp_path / ".out.partial" / _sharded.MANIFEST).exists():
        assert not (tmp_path / ".out.partial").exists()  # nothing finished: nothing kept


def test_an_engine_that_is_not_installed_says_how_to_install_it(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(qb.ValidationError, match=r"pip install 'quantbridge\[ray\]'"):
        qb.quantize_file(checkpoint, tmp_path / "out", executor="ray")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left behind


def test_task_memory_is_declared_to_the_scheduler(checkpoint, tmp_path, monkeypatch):
    """Dask's LocalCluster offers each worker half the machine as MEMORY; a task declaring
    more can never run, and the job says so instead of waiting forever."""
    monkeypatch.setattr(_sharded, "TASK_OVERHEAD_BYTES", 2**50)
    with pytest.raises(qb.ValidationError, match="MEMORY resource"):
        qb.quantize_file(checkpoint, tmp_path / "out", executor="dask", workers=2)
    assert _sharded._task_memory({"largest_tensor": 10}) == 20 + 2**50


def record_pool_sizes(monkeypatch, executor: str) -> list[int]:
    """The engine pool size each of ``executor``'s tasks reports, in order of completion."""
    seen: list[int] = []
    engine = _sharded.ENGINES[executor]

    def recording(*args):
        for result in engine(*args):
            seen.append(result["threads"])
            yield result

    monkeypatch.setitem(_sharded.ENGINES, executor, recording)
    return seen


@pytest.mark.parametrize("executor, workers", ENGINES)
def test_each_task_sizes_the_engine_pool_to_its_share_of_the_cores(checkpoint, tmp_path, monkeypatch, executor,
                                                                   workers):
    """A task's process does not run the engine on every core of the machine while other
    tasks share it: a Ray task gets its declared CPU, a local worker process or a local
    Dask worker the machine's cores divided among the workers. Before, each had a pool of
    all the cores (2 on 2 cores with 2 workers: 4 threads)."""
    monkeypatch.delenv("RAYON_NUM_THREADS", raising=False)
    seen = record_pool_sizes(monkeypatch, executor)
    qb.quantize_file(checkpoint, tmp_path / "out", executor=executor, workers=workers)
    share = 1 if executor == "ray" else max(1, (os.cpu_count() or 1) // workers)
    assert seen == [share] * SHARDS


def test_a_pool_size_the_user_chose_is_kept(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYON_NUM_THREADS", "3")
    seen = record_pool_sizes(monkeypatch, "local")
    qb.quantize_file(checkpoint, tmp_path / "out", executor="local", workers=2)
    assert seen == [3] * SHARDS


def test_options_that_do_not_apply_are_refused(checkpoint, tmp_path):
    with pytest.raises(qb.ValidationError, match="single-file output"):
        qb.quantize_file(checkpoint, tmp_path / "one.safetensors", executor="local")
    with pytest.raises(qb.ValidationError, match="not sharded"):
        qb.quantize_file(checkpoint / "model-00001-of-00008.safetensors", tmp_path / "x", executor="ray")
    with pytest.raises(qb.ValidationError, match="one of local, ray, dask"):
        qb.quantize_file(checkpoint, tmp_path / "out", executor="spark")
    with pytest.raises(qb.ValidationError, match="drop --address"):
        qb.quantize_file(checkpoint, tmp_path / "out", executor="local", address="tcp://x:1")
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError, match="--force"):
        qb.quantize_file(checkpoint, tmp_path / "out")
    # The single-file job on a sharded input still writes one file.
    qb.quantize_file(checkpoint, tmp_path / "one.safetensors")
    assert len(qb.inspect_file(tmp_path / "one.safetensors")["tensors"]) == 7 * SHARDS  # codes, scales, zero points


def test_the_command_line_runs_on_dask_with_progress_and_report(checkpoint, reference, tmp_path):
    report = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, "-m", "quantbridge", "quantize", str(checkpoint), "-o", str(tmp_path / "out"),
         "--executor", "dask", "--workers", "2", "--report", str(report)],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "8/8 shards" in run.stderr
    assert digests(tmp_path / "out") == reference["quantbridge"]
    layers = json.loads(report.read_text())["layers"]
    assert len(layers) == 3 * SHARDS and all(r["sqnr_db"] > 15 for r in layers if r["quantized"])


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    """100k 384-d float32 embeddings with ids, as Parquet in 10 row groups."""
    n, d = 100_000, 384
    vectors = np.random.default_rng(3).standard_normal((n, d), dtype=np.float32)
    table = pa.table({"id": pa.array(np.arange(n)),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), d)})
    path = tmp_path_factory.mktemp("embeddings") / "embeddings.parquet"
    pq.write_table(table, path, row_group_size=10_000)
    whole = pa.table(qb.quantize_arrow(
        pa.table({"layer_name": table["id"].cast(pa.string()), "weights": table["embedding"]}), bits=8))
    return path, whole


def assert_same_table(got: pa.Table, whole: pa.Table) -> None:
    got = got.sort_by("id")
    assert got.column("id").to_pylist() == list(range(whole.num_rows))
    for name in whole.column_names:  # Parquet renames list items; the values must match
        assert got.column(name).cast(whole.column(name).type).equals(whole.column(name)), name


# Ray Data and dask.dataframe warn about their own internals (deprecated settings they
# still read, a pandas keyword they still pass); quantbridge's code raises none of these.
third_party_deprecations = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@third_party_deprecations
def test_an_embedding_column_through_ray_data_equals_quantize_arrow(embeddings, tmp_path):
    import ray

    path, whole = embeddings
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.read_parquet(str(path))
        quantized = ds.map_batches(qb.ray.Quantize(column="embedding", bits=8, name_column="id"),
                                   batch_format="pyarrow", zero_copy_batch=True)
        quantized.write_parquet(str(tmp_path / "q"))
    finally:
        ray.shutdown()
    assert_same_table(pq.read_table(tmp_path / "q"), whole)


@third_party_deprecations
def test_an_embedding_column_through_dask_equals_quantize_arrow(embeddings):
    import dask.dataframe as dd

    path, whole = embeddings
    frame = dd.read_parquet(path, dtype_backend="pyarrow")
    result = qb.dask.quantize_column(frame, "embedding", bits=8, name_column="id").compute(scheduler="threads")
    assert_same_table(pa.Table.from_pandas(result, preserve_index=False), whole)


def test_the_batch_function_names_a_missing_column():
    batch = pa.table({"vec": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(8, np.float32)), 4)})
    with pytest.raises(qb.ValidationError, match="column: found 'embedding'.*pass column= one of \\['vec'\\]"):
        qb.ray.Quantize()(batch)
    result = qb.ray.Quantize("vec", bits=4)(batch)
    assert result.column("layer_name").to_pylist() == ["vec", "vec"]
