"""The installed ``quantbridge`` executable as a user runs it: exit codes, one-line errors
with no traceback, strict JSON reports, signals that leave nothing behind."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from safetensors.numpy import load_file, save_file

EXE = shutil.which("quantbridge") or pytest.fail("the quantbridge executable is not installed")


def run(*args, cwd=None):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def one_line_error(result, code=1):
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    return lines


@pytest.fixture
def small(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {
        "w": rng.standard_normal((64, 256)).astype(np.float32),
        "zeros": np.zeros((8, 8), np.float32),  # reproduced exactly: infinite SQNR
        "bias": rng.standard_normal(64).astype(np.float32),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    return path


def leftovers(folder):
    return [p.name for p in folder.iterdir() if ".partial" in p.name]


def test_version_and_help():
    from quantbridge import __version__

    assert run("--version").stdout.strip() == f"quantbridge {__version__}"
    text = run("quantize", "--help").stdout
    assert "bits per code" in text and "(default: 4)" in text and "(default: 128)" in text


@pytest.mark.parametrize("flag", ["--include", "--exclude"])
def test_bad_pattern_is_a_usage_error(small, tmp_path, flag):
    result = run("quantize", small, "-o", tmp_path / "x.safetensors", flag, "(")
    lines = one_line_error(result, 2)
    assert f"argument {flag}" in lines[-1] and "regular expression" in lines[-1]
    assert not (tmp_path / "x.safetensors").exists()


def test_errors_speak_flags(small, tmp_path):
    lines = one_line_error(run("quantize", small, "-o", tmp_path / "x.safetensors", "--group-size", "-1"), 2)
    assert "--group-size" in lines[-1]


def test_an_error_is_the_only_line(small, tmp_path):
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"existing")
    lines = one_line_error(run("quantize", small, "-o", out))
    assert len(lines) == 1 and lines[0].startswith("quantbridge: error:") and "--force" in lines[0]


def test_report_path_checked_before_the_job(small, tmp_path):
    out = tmp_path / "x.safetensors"
    lines = one_line_error(run("quantize", small, "-o", out, "--report", tmp_path / "missing" / "r.json"))
    assert "no such folder" in lines[-1]
    assert not out.exists() and not leftovers(tmp_path)


def test_report_is_strict_json(small, tmp_path):
    report = tmp_path / "r.json"
    result = run("quantize", small, "-o", tmp_path / "q.safetensors", "--report", report, "--include", ".")
    assert result.returncode == 0, result.stderr

    def reject(constant):
        raise ValueError(f"not JSON: {constant}")

    data = json.loads(report.read_text(), parse_constant=reject)
    zeros = next(layer for layer in data["layers"] if layer["name"] == "zeros")
    assert zeros["quantized"] and zeros["sqnr_db"] is None and zeros["max_abs_error"] == 0


def test_default_keeps_1d_tensors_and_include_selects_them(small, tmp_path):
    assert run("quantize", small, "-o", tmp_path / "a.safetensors").returncode == 0
    default = load_file(str(tmp_path / "a.safetensors"))
    assert "w.codes" in default and "bias" in default and "bias.codes" not in default
    assert run("quantize", small, "-o", tmp_path / "b.safetensors", "--include", "bias").returncode == 0
    only_bias = load_file(str(tmp_path / "b.safetensors"))
    assert "bias.codes" in only_bias and "w" in only_bias


def test_quantizing_nothing_says_so(small, tmp_path):
    result = run("quantize", small, "-o", tmp_path / "n.safetensors", "--include", "nomatch")
    assert result.returncode == 0
    assert "warning: nothing was quantized" in result.stderr and "--include" in result.stderr


def test_requantizing_an_output_is_refused(small, tmp_path):
    out = tmp_path / "q.safetensors"
    assert run("quantize", small, "-o", out).returncode == 0
    lines = one_line_error(run("quantize", out, "-o", tmp_path / "qq.safetensors"))
    assert "already quantized" in lines[-1] and "dequantize" in lines[-1]
    assert not (tmp_path / "qq.safetensors").exists()


def test_inspect_is_an_aligned_table_and_reads_arrow_outputs(small, tmp_path):
    arrow_out = tmp_path / "q.arrow"
    assert run("quantize", small, "-o", arrow_out).returncode == 0
    listing = run("inspect", arrow_out)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("tensor"))
    assert lines[header].split() == ["tensor", "dtype", "shape", "bytes"]
    rows = lines[header + 2:-1]
    assert {r.split()[0] for r in rows} == {"w", "zeros", "bias"}
    assert {r.split()[1] for r in rows} == {"Q4", "F32"}
    # Every row of the table has the same width: the columns line up.
    assert len({len(r) for r in rows + [lines[header]]}) == 1
    assert "quantbridge.spec" in listing.stdout
    table = pa.ipc.open_file(str(arrow_out)).read_all()
    assert table.num_rows == 3
    lines = one_line_error(run("dequantize", arrow_out, "-o", tmp_path / "r.safetensors"))
    assert "pyarrow" in lines[-1]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signals_leave_nothing_behind(tmp_path, signum, code):
    # Enough tensors that the job is still running when the signal arrives.
    rng = np.random.default_rng(0)
    tensor = rng.standard_normal((512, 2048)).astype(np.float32)
    save_file({f"layer.{i}.weight": tensor for i in range(96)}, str(tmp_path / "big.safetensors"))
    out = tmp_path / "out.safetensors"
    proc = subprocess.Popen([EXE, "quantize", tmp_path / "big.safetensors", "-o", out],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()  # the banner: the job has started
    assert first.startswith("quantbridge:"), first
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err and "no output was written" in err
    assert not out.exists() and not leftovers(tmp_path)


def test_python_m_is_the_same_command(small, tmp_path):
    result = subprocess.run([sys.executable, "-m", "quantbridge", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("quantbridge ")
    assert os.path.basename(EXE) == "quantbridge"


def test_bad_pattern_from_python_is_a_full_validation_error(small, tmp_path):
    import quantbridge as qb

    with pytest.raises(qb.ValidationError) as info:
        qb.quantize_file(small, tmp_path / "x.safetensors", exclude=["["])
    e = info.value
    assert "'['" in e.found and e.expected == "a Python regular expression" and "\\\\[" in e.fix
    assert not (tmp_path / "x.safetensors").exists()


def test_sigterm_during_a_folder_job_leaves_nothing(tmp_path):
    rng = np.random.default_rng(0)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "torch_dtype": "float32"}')
    tensor = rng.standard_normal((512, 2048)).astype(np.float32)
    save_file({f"layers.{i}.proj.weight": tensor for i in range(96)}, str(model / "model.safetensors"))
    out = tmp_path / "out"
    proc = subprocess.Popen([EXE, "quantize", model, "-o", out, "--format", "compressed-tensors"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().startswith("quantbridge:")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "a partial folder was left"


@pytest.mark.parametrize("fmt, weight", [("compressed-tensors", "weight_packed"), ("mlx", "scales")])
def test_serving_formats_from_the_embedded_default(tmp_path, fmt, weight):
    out = tmp_path / fmt
    report = tmp_path / "report.json"
    result = run("quantize", "-o", out, "--format", fmt, "--group-size", "64", "--report", report)
    assert result.returncode == 0, result.stderr
    assert "kept in float:    3 x an embedding" in result.stdout
    assert "37 of 104 tensors quantized" in result.stdout
    stored = load_file(str(out / "model.safetensors"))
    assert f"encoder.layer.0.attention.self.query.{weight}" in stored
    layers = json.loads(report.read_text())["layers"]
    kept = {l["name"]: l["kept_because"] for l in layers if not l["quantized"]}
    assert kept["embeddings.word_embeddings.weight"] == "an embedding"
    assert kept["encoder.layer.0.attention.self.query.bias"].startswith("1-D")
    assert (out / "tokenizer.json").is_file() and (out / "1_Pooling" / "config.json").is_file()
    # An existing folder needs --force; requantizing the output is refused.
    lines = one_line_error(run("quantize", "-o", out, "--format", fmt, "--group-size", "64"))
    assert "--force" in lines[-1]
    lines = one_line_error(run("quantize", out, "-o", tmp_path / "again", "--format", fmt, "--group-size", "64"))
    assert "already quantized" in lines[-1]
