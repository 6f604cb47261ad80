"""Regression check (run by hand or by a benchmark job, not by CI's timed tests):

    python3 benches/check_kernels.py

Fails loudly (exit 1) when quantbridge runs its portable kernels on a CPU that has the
instructions of a faster build (AVX2 + F16C; AVX-512 F/BW/VL), or the AVX2 build on a CPU
with AVX-512, i.e. when run-time detection or the build regressed. Prints the CPU, its vector extensions and the kernel path either way.
"""

from __future__ import annotations

import sys

import quantbridge as qb


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


def main() -> int:
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
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
