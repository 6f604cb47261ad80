"""The main job end to end, beside reading the same file once, in one run.

    python3 benches/bench_main_job.py [--gib 2]

For the embedded all-MiniLM-L6-v2 checkpoint and a generated checkpoint of --gib GiB
(float32 tensors of 256 MiB), times `quantbridge quantize` (a subprocess, as a user runs it)
against `cat FILE > /dev/null` (page cache warm for both), and reports each run's peak RSS.
Figures are ratios against the `cat` baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(cmd: list[str], repeat: int = 3) -> tuple[float, int]:
    """Best wall time of `repeat` runs and the largest child peak RSS (bytes)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def generate(path: Path, gib: int) -> None:
    tensor_bytes = 256 * 2**20
    rows, cols = 8192, tensor_bytes // 4 // 8192
    n = gib * 4
    header = {f"layer.{i}.weight": {"dtype": "F32", "shape": [rows, cols],
                                    "data_offsets": [i * tensor_bytes, (i + 1) * tensor_bytes]} for i in range(n)}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    chunk = np.random.default_rng(0).standard_normal(rows * cols // 16).astype(np.float32).tobytes()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _ in range(n * 16):
            f.write(chunk)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=int, default=2)
    args = parser.parse_args()
    from quantbridge._files import default_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "generated.safetensors"
        generate(big, args.gib)
        print(f"{'checkpoint':<28} {'cat (s)':>8} {'quantize (s)':>12} {'ratio':>6} {'peak RSS':>10}")
        for label, path in [("all-MiniLM-L6-v2 (87 MiB)", default_checkpoint()), (f"generated ({args.gib} GiB)", big)]:
            subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
            cat, _ = timed(["sh", "-c", f"cat '{path}' > /dev/null"])
            out = Path(tmp) / "out.safetensors"
            quant, rss = timed([sys.executable, "-m", "quantbridge", "quantize", str(path), "-o", str(out),
                                "--force", "--quiet"])
            print(f"{label:<28} {cat:>8.3f} {quant:>12.3f} {quant / cat:>5.1f}x {rss / 2**20:>7.0f} MiB")


if __name__ == "__main__":
    main()
