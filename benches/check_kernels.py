"""Regression check (run by hand or by a benchmark job, not by CI's timed tests):

    python3 benches/check_kernels.py [--rounds N]

Fails loudly (exit 1) in two cases:

* quantbridge runs its portable kernels on a CPU that has the instructions of a faster
  build (AVX2 + F16C; AVX-512 F/BW/VL), or the AVX2 build on a CPU with AVX-512, i.e.
  run-time detection or the build regressed;
* one input dtype, memory layout or `stats=True` falls off the vector path: each
  combination of {float32, float16, bfloat16, float64} x {contiguous, transposed weight,
  reversed last axis, row slice} x {int4 g128, int8 per-channel, int8 per-tensor, GGUF
  Q8_0} x {stats off, on} is timed against the contiguous float32 call of the same spec, in the
  same run, and may cost at most `LIMIT` times as much (twice that for float64, which
  reads twice the bytes). Scalar fallbacks found this way cost 6-19x (float16 with
  statistics, transposed half precision, reversed rows), the vector paths 0.4-3.7x on
  the 2-core AMD EPYC this was written on.

Prints the CPU, its vector extensions, the kernel path and the slowest combinations either
way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import numpy as np
import torch

import quantbridge as qb

# Most a combination may cost against the contiguous float32 call of its spec.
LIMIT = 5.0


def cpu_flags() -> tuple[str, set[str]]:
    model, flags = "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def layouts(base: torch.Tensor, dtype: torch.dtype) -> dict[str, object]:
    """The same values in four memory layouts (objects quantbridge takes as they are)."""
    rows, cols = base.shape
    x = base.to(dtype)
    views = {
        "contiguous": x,
        # A transposed weight: memory holds (cols, rows), the view is its transpose.
        "transposed": x.t().contiguous().t(),
        # Rows 64 elements wider than the view (a slice of a larger buffer).
        "row slice": torch.cat([x, x[:, :64]], dim=1)[:, :cols],
    }
    if dtype != torch.bfloat16:  # numpy has no bfloat16; torch refuses negative strides
        views["reversed last axis"] = x.numpy()[:, ::-1]
    return views


def path_ratios(rounds: int) -> list[tuple[float, float, str]]:
    """(ratio, limit, label) of every combination, slowest first."""
    base = torch.from_numpy(np.random.default_rng(0).standard_normal((2048, 4096), dtype=np.float32))
    specs = {
        "int4 g128": {"bits": 4},
        "int8 per-channel": {"bits": 8, "group_size": None},
        "int8 per-tensor": {"bits": 8, "granularity": "tensor", "group_size": None},
        "GGUF Q8_0": {"gguf_type": "Q8_0"},
    }
    inputs = {str(dt).removeprefix("torch."): layouts(base, dt)
              for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}
    found = []
    for spec_name, spec in specs.items():
        for stats in (False, True):
            calls = {(dt, layout): (lambda v: lambda: qb.quantize(v, stats=stats, **spec))(v)
                     for dt, views in inputs.items() for layout, v in views.items()}
            times = {key: [] for key in calls}
            for _ in range(rounds):  # interleaved: a noisy moment hits every call alike
                for key, call in calls.items():
                    t0 = time.perf_counter()
                    call()
                    times[key].append(time.perf_counter() - t0)
            baseline = statistics.median(times[("float32", "contiguous")])
            for (dt, layout), ts in times.items():
                limit = LIMIT * (2 if dt == "float64" else 1)
                label = f"{spec_name}, stats={stats}, {dt}, {layout}"
                found.append((statistics.median(ts) / baseline, limit, label))
    return sorted(found, reverse=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    qb.configure_metrics(degradation_fraction=0.0)  # slow combinations are what is measured
    warnings.simplefilter("ignore")
    model, flags = cpu_flags()
    kernel = qb._native._kernel()
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    print(f"CPU: {model}")
    print(f"vector extensions: avx2={'avx2' in flags} f16c={'f16c' in flags} avx512={' '.join(avx512) or 'none'}")
    print(f"quantbridge kernel path: {kernel}")
    if {"avx2", "f16c", "avx512f", "avx512bw", "avx512vl"} <= flags:
        expected = "avx512"
    elif {"avx2", "f16c"} <= flags:
        expected = "avx2"
    else:
        expected = "portable"
    if not flags:
        print("cannot read /proc/cpuinfo flags: nothing to check")
        return 0
    if kernel != expected:
        print(f"REGRESSION: expected the {expected} kernels on this CPU, quantbridge runs {kernel}", file=sys.stderr)
        return 1
    print(f"kernel path ok; timing every dtype x layout x spec x stats ({args.rounds} rounds, interleaved)")
    ratios = path_ratios(args.rounds)
    print("slowest, against the contiguous float32 call of the same spec:")
    for ratio, limit, label in ratios[:8]:
        print(f"  {ratio:5.2f}x (limit {limit:.0f}x)  {label}")
    slow = [(r, lim, label) for r, lim, label in ratios if r > lim]
    for ratio, limit, label in slow:
        print(f"REGRESSION: {label} costs {ratio:.1f}x the contiguous float32 call (limit {limit:.0f}x):"
              " it left the vector path", file=sys.stderr)
    if slow:
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
