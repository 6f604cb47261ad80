"""docs/formats.md (files), the main job: round trips through both output formats, pass-through, filters,
sharded input, Arrow IPC input, corrupt files, CLI exit codes and messages, bounded memory,
and the embedded MiniLM checkpoint within the spec's error bound."""

import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest
from safetensors.numpy import load_file, save_file

import quantbridge as qb


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "quantbridge", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def restored_within_bound(original, restored, scales, group_size):
    """|x - x'| <= scale/2 per element (plus float32 rounding), scales broadcast per group."""
    cols = original.shape[-1]
    rows = original.size // cols
    per_elem = np.repeat(scales.reshape(rows, -1).astype(np.float32), group_size, axis=1)[:, :cols]
    err = np.abs(original.reshape(rows, cols).astype(np.float32) - restored.reshape(rows, cols))
    return bool(np.all(err <= per_elem / 2 * (1 + 1e-5) + 1e-7))


@pytest.fixture
def checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "layer.0.weight": rng.standard_normal((64, 300)).astype(np.float32),
        "layer.0.bias": rng.standard_normal(64).astype(np.float16),
        "layer.1.norm": rng.standard_normal((3, 5, 7)).astype(np.float32),
        "position_ids": np.arange(12, dtype=np.int64),
        "scalar": np.array(3.5, np.float32),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def test_safetensors_round_trip_and_pass_through(checkpoint, tmp_path):
    path, tensors = checkpoint
    out = tmp_path / "q.safetensors"
    reports = qb.quantize_file(path, out, bits=4, group_size=32)
    assert [r["name"] for r in reports] == list(load_file_order(path))
    q = load_file(str(out))
    assert np.array_equal(q["position_ids"], tensors["position_ids"]) and q["scalar"] == tensors["scalar"]
    w = tensors["layer.0.weight"]
    ref = qb.quantize(w, bits=4, group_size=32)
    assert np.array_equal(q["layer.0.weight.codes"], np.from_dlpack(ref.codes))
    assert np.array_equal(q["layer.0.weight.scales"], np.from_dlpack(ref.scales))
    meta = qb.inspect_file(out)["metadata"]
    assert json.loads(meta["quantbridge.spec"])["group_size"] == 32
    restored = load_file(str(qb_dequantize(out, tmp_path)))
    assert set(restored) == set(tensors)
    for name in ("layer.0.weight", "layer.1.norm"):
        assert restored[name].dtype == np.float32 and restored[name].shape == tensors[name].shape
        assert restored_within_bound(tensors[name], restored[name], q[f"{name}.scales"], 32)
    # 1-D tensors (biases, norms) are not quantized by default: they pass through as they were.
    assert "layer.0.bias.codes" not in q and np.array_equal(q["layer.0.bias"], tensors["layer.0.bias"])
    assert restored["layer.0.bias"].dtype == np.float16
    assert np.array_equal(restored["position_ids"], tensors["position_ids"])


def load_file_order(path):
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    header = json.loads(path.read_bytes()[8:8 + n])
    header.pop("__metadata__", None)
    return [k for k, _ in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])]


def qb_dequantize(path, tmp_path):
    out = tmp_path / "restored.safetensors"
    qb.dequantize_file(path, out, force=True)
    return out


def test_arrow_output_and_filters(checkpoint, tmp_path):
    path, tensors = checkpoint
    out = tmp_path / "q.arrow"
    qb.quantize_file(path, out, bits=8, symmetric=True, include=[r"^layer\."], exclude=["norm"])
    table = pa.ipc.open_file(str(out)).read_all()
    rows = {r["layer_name"]: r for r in table.to_pylist()}
    assert rows["layer.0.weight"]["bits"] == 8 and rows["layer.0.bias"]["bits"] == 8
    assert rows["layer.1.norm"]["bits"] == 0 and rows["position_ids"]["bits"] == 0
    assert rows["layer.1.norm"]["codes"] == tensors["layer.1.norm"].tobytes()
    passthrough = json.loads(table.schema.metadata[b"quantbridge.passthrough"])
    assert passthrough == {"layer.1.norm": "F32", "position_ids": "I64", "scalar": "F32"}
    ref = qb.quantize(tensors["layer.0.weight"], bits=8, symmetric=True)
    assert rows["layer.0.weight"]["codes"] == ref.codes.tobytes()
    assert rows["layer.0.weight"]["zero_points"] is None


def test_sharded_and_arrow_inputs(tmp_path):
    rng = np.random.default_rng(1)
    a = {"a.weight": rng.standard_normal((16, 64)).astype(np.float32)}
    b = {"b.weight": rng.standard_normal((8, 128)).astype(np.float32), "b.ids": np.arange(4, dtype=np.int32)}
    save_file(a, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(b, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {**{k: "model-00001-of-00002.safetensors" for k in a},
                                           **{k: "model-00002-of-00002.safetensors" for k in b}}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    for source in (tmp_path, tmp_path / "model.safetensors.index.json"):
        out = tmp_path / "sharded-q.safetensors"
        qb.quantize_file(source, out, force=True)
        q = load_file(str(out))
        assert {"a.weight.codes", "b.weight.codes", "b.ids"} <= set(q)
        assert np.array_equal(q["b.weight.codes"], np.from_dlpack(qb.quantize(b["b.weight"]).codes))

    x = rng.standard_normal((32, 96)).astype(np.float32)
    table = pa.table({"layer_name": ["x", "v"], "weights": pa.array([x.ravel(), x[0]], pa.large_list(pa.float32())),
                      "shape": pa.array([[32, 96], None], pa.list_(pa.int64()))})
    with pa.OSFile(str(tmp_path / "in.arrow"), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    # --include selects 1-D rows too (the default quantizes only tensors of 2+ dimensions).
    qb.quantize_file(tmp_path / "in.arrow", tmp_path / "from-arrow.safetensors", include=["."])
    q = load_file(str(tmp_path / "from-arrow.safetensors"))
    assert np.array_equal(q["x.codes"], np.from_dlpack(qb.quantize(x).codes))
    assert np.array_equal(q["v.codes"], np.from_dlpack(qb.quantize(x[0]).codes))


def corrupt_variants(good: bytes):
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8:8 + n])
    body = good[8 + n:]

    def with_header(h):
        text = json.dumps(h).encode()
        return struct.pack("<Q", len(text)) + text + body

    first = next(k for k in header if k != "__metadata__")
    names = [k for k in header if k != "__metadata__"]
    out_of_range = json.loads(json.dumps(header))
    out_of_range[first]["data_offsets"][1] += 10_000
    overlapping = json.loads(json.dumps(header))
    overlapping[names[1]]["data_offsets"] = overlapping[names[0]]["data_offsets"]
    bad_dtype = json.loads(json.dumps(header))
    bad_dtype[first]["dtype"] = "X99"
    return {
        "truncated": good[: len(good) - 100],
        "empty": b"",
        "bad header json": struct.pack("<Q", n) + b"{" * n + body,
        "header length lies": struct.pack("<Q", 1 << 40) + good[8:],
        "offsets out of range": with_header(out_of_range),
        "overlapping tensors": with_header(overlapping),
        "unknown dtype": with_header(bad_dtype),
        "not a checkpoint": b"hello world, certainly not safetensors",
    }


def test_corrupt_files_get_one_line_errors(checkpoint, tmp_path):
    path, _ = checkpoint
    for what, data in corrupt_variants(path.read_bytes()).items():
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(data)
        out = tmp_path / "out.safetensors"
        result = cli("quantize", bad, "-o", out)
        assert result.returncode == 1, (what, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("quantbridge: error:")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, (what, result.stderr)
        assert "bad.safetensors" in errors[0], (what, errors[0])
        assert not out.exists() and not list(tmp_path.glob(".out.safetensors.partial-*")), what


def test_cli_usage_errors_and_force(checkpoint, tmp_path):
    path, _ = checkpoint
    out = tmp_path / "q.safetensors"
    assert cli("quantize", path, "-o", out, "--quiet").returncode == 0
    before = out.read_bytes()
    again = cli("quantize", path, "-o", out)
    assert again.returncode == 1 and "--force" in again.stderr and out.read_bytes() == before
    assert cli("quantize", path, "-o", out, "--force", "--bits", "8", "--quiet").returncode == 0
    assert out.read_bytes() != before
    cases = [
        (["quantize", tmp_path / "missing.safetensors", "-o", tmp_path / "x.safetensors"], "no such file"),
        (["quantize", path, "-o", tmp_path / "nowhere" / "x.safetensors"], "no such folder"),
        (["quantize", path, "-o", tmp_path / "x.txt"], ".safetensors or .arrow"),
        (["quantize", path, "-o", path, "--force"], "is the input"),
        (["dequantize", path, "-o", tmp_path / "r.safetensors"], "quantbridge metadata"),
    ]
    for args, words in cases:
        result = cli(*args)
        assert result.returncode == 1 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert cli("quantize", path, "-o", out, "--bits", "3").returncode == 2  # argparse usage error
    assert path.read_bytes() == checkpoint[0].read_bytes()


def test_cli_report_and_inspect(checkpoint, tmp_path):
    path, tensors = checkpoint
    report = tmp_path / "report.json"
    result = cli("quantize", path, "-o", tmp_path / "q.arrow", "--report", report, "--symmetric", "--group-size", "0")
    assert result.returncode == 0, result.stderr
    assert "SQNR dB" in result.stdout and "passed through (I64)" in result.stdout and "total:" in result.stdout
    data = json.loads(report.read_text())
    assert data["spec"]["group_size"] is None and len(data["layers"]) == len(tensors)
    assert data["totals"]["quantized"] == 2 and data["totals"]["worst_sqnr_db"] > 10  # the 1-D bias stays
    listing = cli("inspect", path)
    assert listing.returncode == 0 and "layer.0.weight" in listing.stdout and "5 tensors" in listing.stdout


def test_embedded_minilm_within_the_bound(tmp_path):
    out = tmp_path / "minilm-int4.safetensors"
    result = cli("quantize", "-o", out)
    assert result.returncode == 0, result.stderr
    # Its 40 matrices; the 64 biases and LayerNorm weights (1-D) stay in float32.
    assert "total: 40 of 104 tensors quantized" in result.stdout
    from quantbridge._files import default_checkpoint

    original = load_file(str(default_checkpoint() / "model.safetensors"))
    q = load_file(str(out))
    restored = load_file(str(qb_dequantize(out, tmp_path)))
    for name, x in original.items():
        if x.dtype != np.float32 or x.ndim < 2:
            assert np.array_equal(restored[name], x)
            continue
        assert restored_within_bound(x, restored[name], q[f"{name}.scales"], 128), name


BOUNDED = textwrap.dedent("""
    import json, struct, sys, threading, time
    import numpy as np
    import quantbridge as qb
    path, out = sys.argv[1], sys.argv[2]
    def anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    base = anon(); peak = [base]; done = []
    def sample():
        while not done:
            peak[0] = max(peak[0], anon()); time.sleep(0.002)
    t = threading.Thread(target=sample); t.start()
    qb.quantize_file(path, out)
    done.append(1); t.join()
    print(peak[0] - base)
""")


def test_memory_stays_bounded_by_the_largest_tensor(tmp_path):
    """A generated 2 GiB checkpoint (8 x 256 MiB): anonymous RSS while quantizing stays
    under 2x the largest tensor + 100 MiB."""
    tensor_bytes = 256 * 2**20
    rows, cols = 8192, tensor_bytes // 4 // 8192
    header = {f"t{i}": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [i * tensor_bytes, (i + 1) * tensor_bytes]}
              for i in range(8)}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tmp_path / "big.safetensors"
    chunk = np.random.default_rng(2).standard_normal(rows * cols // 16).astype(np.float32).tobytes()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _ in range(8 * 16):
            f.write(chunk)
    result = subprocess.run([sys.executable, "-c", BOUNDED, str(path), str(tmp_path / "big-q.safetensors")],
                            capture_output=True, text=True, check=True)
    growth = int(result.stdout)
    assert growth < 2 * tensor_bytes + 100 * 2**20, growth
    os.remove(path)


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(os.path.dirname(__file__), "..", "data", "attacks"))))
def test_fuzzer_found_files_are_clean_errors(name, tmp_path):
    """Files the checkpoint fuzz target found (tests/data/attacks): hostile Arrow IPC
    batch metadata once made arrow-ipc panic inside the reader."""
    path = os.path.join(os.path.dirname(__file__), "..", "data", "attacks", name)
    result = cli("quantize", path, "-o", tmp_path / "out.safetensors")
    assert result.returncode == 1 and "quantbridge: error:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    # The contained panic inside arrow-ipc prints no crash report: the error line is last.
    assert "panicked" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("quantbridge: error:"), result.stderr
    with pytest.raises((qb.QuantizationError, OSError)):
        qb.inspect_file(path)
