"""Exit 0 means the output loads: name collisions refused before anything is written,
every output read back, inputs that change under the job, Arrow IPC streams named."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from safetensors.numpy import load_file, save_file

import quantbridge as qb


def cli(*args):
    return subprocess.run([sys.executable, "-m", "quantbridge", *map(str, args)], capture_output=True, text=True)


def nothing_left(folder, *names):
    leftovers = [p.name for p in folder.iterdir() if ".partial" in p.name or p.name in names]
    assert not leftovers, leftovers


def arrow_file(path, names, rows):
    table = pa.table({"layer_name": names, "weights": pa.array([r.ravel() for r in rows], pa.large_list(pa.float32())),
                      "shape": pa.array([list(r.shape) for r in rows], pa.list_(pa.int64()))})
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)


def test_a_generated_name_colliding_with_an_input_name_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "m.safetensors"
    save_file({"w": rng.standard_normal((8, 64)).astype(np.float32), "w.codes": np.arange(4, dtype=np.uint8)}, str(src))
    result = cli("quantize", src, "-o", tmp_path / "q.safetensors")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "two output tensors named 'w.codes'" in line.replace('"', "'")
    assert "quantized tensor" in line and "passed through" in line and "--exclude" in line
    nothing_left(tmp_path, "q.safetensors")
    # The fix the message gives works, and its output loads with the safetensors package.
    assert cli("quantize", src, "-o", tmp_path / "q.safetensors", "--exclude", r"^w$").returncode == 0
    loaded = load_file(str(tmp_path / "q.safetensors"))
    assert set(loaded) == {"w", "w.codes"} and np.array_equal(loaded["w.codes"], np.arange(4, dtype=np.uint8))


def test_duplicate_rows_of_an_arrow_input_name_both_rows(tmp_path):
    x = np.ones((4, 32), np.float32)
    arrow_file(tmp_path / "in.arrow", ["x", "y", "x"], [x, x, x])
    with pytest.raises(qb.ValidationError) as info:
        qb.quantize_file(tmp_path / "in.arrow", tmp_path / "q.safetensors")
    assert "two tensors named 'x'" in str(info.value).replace('"', "'")
    assert "row 0" in str(info.value) and "row 2" in str(info.value)
    nothing_left(tmp_path, "q.safetensors")


def test_a_tensor_in_two_shards_names_both_shards(tmp_path):
    w = np.ones((4, 32), np.float32)
    save_file({"w": w, "a": w}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"w": w * 2, "b": w}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {"w": "model-00001-of-00002.safetensors",
                                           "a": "model-00001-of-00002.safetensors",
                                           "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    result = cli("quantize", tmp_path, "-o", tmp_path / "q.safetensors")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "model-00001-of-00002" in result.stderr and "model-00002-of-00002" in result.stderr
    nothing_left(tmp_path, "q.safetensors")


def test_the_reserved_metadata_name_is_refused(tmp_path):
    x = np.ones((4, 32), np.float32)
    arrow_file(tmp_path / "in.arrow", ["__metadata__"], [x])
    with pytest.raises(qb.ValidationError, match="__metadata__"):
        qb.quantize_file(tmp_path / "in.arrow", tmp_path / "q.safetensors", include=["."], exclude=["."])
    nothing_left(tmp_path, "q.safetensors")


@pytest.mark.parametrize("suffix", [".safetensors", ".arrow"])
def test_outputs_load_with_their_users_readers(tmp_path, suffix):
    rng = np.random.default_rng(1)
    tensors = {"a.weight": rng.standard_normal((16, 64)).astype(np.float32), "a.bias": np.ones(16, np.float32),
               "ids": np.arange(5, dtype=np.int64)}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    out = tmp_path / f"q{suffix}"
    qb.quantize_file(tmp_path / "m.safetensors", out)
    if suffix == ".safetensors":
        assert set(load_file(str(out))) == {"a.weight.codes", "a.weight.scales", "a.weight.zero_points", "a.bias", "ids"}
    else:
        table = pa.ipc.open_file(str(out)).read_all()
        assert sorted(table.column("layer_name").to_pylist()) == ["a.bias", "a.weight", "ids"]


def test_an_input_truncated_during_the_job_is_an_error_not_a_crash(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / "m.safetensors"
    save_file({f"layer.{i}.weight": rng.standard_normal((64, 256)).astype(np.float32) for i in range(4)}, str(src))

    def truncate_after_the_first(report, done, total):
        if done < total:
            with open(src, "r+b") as f:
                f.truncate(1000)

    with pytest.raises(qb.QuantizationError, match="changed while quantbridge was reading it") as info:
        qb.quantize_file(src, tmp_path / "q.safetensors", progress=truncate_after_the_first)
    assert "1000 bytes" in str(info.value)
    nothing_left(tmp_path, "q.safetensors")


@pytest.mark.parametrize("name", ["in.arrow", "in.arrows"])
def test_an_arrow_ipc_stream_is_named_with_the_fix(tmp_path, name):
    table = pa.table({"layer_name": ["x"], "weights": pa.array([np.ones(32, np.float32)], pa.list_(pa.float32()))})
    with pa.OSFile(str(tmp_path / name), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    result = cli("quantize", tmp_path / name, "-o", tmp_path / "q.safetensors")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Arrow IPC stream" in result.stderr and "pyarrow.ipc.new_file" in result.stderr
    assert "header too large" not in result.stderr
