"""The main job end to end, beside reading the same file once, in one run.

    python3 benches/bench_main_job.py [--gib 2]

For the embedded all-MiniLM-L6-v2 model folder and a generated model folder of --gib GiB
(--dtype float32 or bfloat16 tensors of 256 MiB, named like Linear weights), times `quantbridge quantize` (a
subprocess, as a user runs it) in each output format against `cat FILE > /dev/null` (page
cache warm for both), and reports each run's peak RSS. Figures are ratios against the
`cat` baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


# Runs a command and prints its peak RSS: RUSAGE_CHILDREN of this process would be the
# largest of every command the benchmark ran so far.
PEAK_RSS = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)")


def timed(cmd: list[str], repeat: int = 3) -> tuple[float, int]:
    """Best wall time of `repeat` runs and the largest peak RSS of one run (bytes)."""
    best, rss = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", PEAK_RSS, *cmd], check=True, capture_output=True, text=True)
        best = min(best, time.perf_counter() - start)
        rss = max(rss, int(out.stdout))
    return best, rss


def generate(folder: Path, gib: int, dtype: str) -> None:
    """A model folder: config.json and one model.safetensors of `gib` GiB of `dtype`
    ("float32" or "bfloat16", what most published checkpoints hold) tensors of 256 MiB."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "generated", "torch_dtype": dtype}))
    path = folder / "model.safetensors"
    tensor_bytes = 256 * 2**20
    size = 4 if dtype == "float32" else 2
    rows, cols = 8192, tensor_bytes // size // 8192
    n = gib * 4
    header = {f"layers.{i}.proj.weight": {"dtype": "F32" if size == 4 else "BF16", "shape": [rows, cols],
                                    "data_offsets": [i * tensor_bytes, (i + 1) * tensor_bytes]} for i in range(n)}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    values = np.random.default_rng(0).standard_normal(rows * cols // 16).astype(np.float32)
    if size == 2:  # bfloat16: the high half of each float32 (truncated; any values do)
        values = (values.view(np.uint32) >> 16).astype(np.uint16)
    chunk = values.tobytes()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _ in range(n * 16):
            f.write(chunk)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="element type of the generated checkpoint's tensors")
    args = parser.parse_args()
    from quantbridge._files import default_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "generated"
        generate(big, args.gib, args.dtype)
        print(f"{'model folder':<28} {'format':<19} {'cat (s)':>8} {'quantize (s)':>12} {'ratio':>6} {'peak RSS':>10}")
        for label, folder in [("all-MiniLM-L6-v2 (87 MiB)", default_checkpoint()), (f"generated ({args.gib} GiB {args.dtype})", big)]:
            weights = folder / "model.safetensors"
            subprocess.run(["cat", str(weights)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
            cat, _ = timed(["sh", "-c", f"cat '{weights}' > /dev/null"])
            for fmt, out in [("quantbridge", "out.safetensors"), ("compressed-tensors", "out-ct"), ("mlx", "out-mlx")]:
                quant, rss = timed([sys.executable, "-m", "quantbridge", "quantize", str(folder), "-o",
                                    str(Path(tmp) / out), "--format", fmt, "--force", "--quiet"])
                print(f"{label:<28} {fmt:<19} {cat:>8.3f} {quant:>12.3f} {quant / cat:>5.1f}x {rss / 2**20:>7.0f} MiB",
                      flush=True)


if __name__ == "__main__":
    main()
