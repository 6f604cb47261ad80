"""quantbridge: quantize a checkpoint tensor by tensor, in bounded memory, and report the error.

    quantbridge quantize [INPUT] -o OUTPUT [--bits 4] [--group-size 128] [--symmetric]
                         [--scale-dtype float32] [--include RE] [--exclude RE] [--force]
                         [--report FILE]
    quantbridge dequantize INPUT -o OUTPUT [--force]
    quantbridge inspect FILE

With no INPUT, ``quantize`` uses the embedded all-MiniLM-L6-v2 checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from . import QuantizationError
from ._files import default_checkpoint, dequantize_file, inspect_file, quantize_file

MIB = 2**20


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantbridge", description="Quantize checkpoints to int8/int4/int2.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{quantize,dequantize,inspect}")

    q = sub.add_parser("quantize", help="quantize a checkpoint (.safetensors, sharded, or Arrow IPC)")
    q.add_argument("input", nargs="?", type=Path,
                   help="checkpoint to read (default: the embedded all-MiniLM-L6-v2)")
    q.add_argument("-o", "--output", type=Path, required=True, help="output .safetensors or .arrow file")
    q.add_argument("--bits", type=int, default=4, choices=(2, 4, 8))
    q.add_argument("--group-size", type=int, default=128, help="elements per group; 0 = one group per row")
    q.add_argument("--symmetric", action="store_true", help="symmetric (no zero points)")
    q.add_argument("--scale-dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    q.add_argument("--include", action="append", default=[], metavar="RE",
                   help="quantize only tensors whose name matches (repeatable)")
    q.add_argument("--exclude", action="append", default=[], metavar="RE",
                   help="pass tensors whose name matches through unchanged (repeatable)")
    q.add_argument("--force", action="store_true", help="overwrite an existing output")
    q.add_argument("--report", type=Path, metavar="FILE", help="also write the report as JSON")
    q.add_argument("--quiet", action="store_true", help="no progress and no table")

    d = sub.add_parser("dequantize", help="restore a quantbridge .safetensors output to float32")
    d.add_argument("input", type=Path)
    d.add_argument("-o", "--output", type=Path, required=True)
    d.add_argument("--force", action="store_true")
    d.add_argument("--quiet", action="store_true")

    i = sub.add_parser("inspect", help="list a checkpoint's tensors and metadata")
    i.add_argument("input", type=Path)
    return p


class ProgressBar:
    """Tensors and bytes done, throughput and ETA on stderr: one redrawn line on a terminal,
    a plain line every tenth of the way otherwise."""

    def __init__(self, stream: TextIO, quiet: bool) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.quiet = quiet
        self.start = time.perf_counter()
        self.count = 0
        self.next_line = 0.1

    def __call__(self, report: dict[str, Any], done: int, total: int) -> None:
        self.count += 1
        if self.quiet:
            return
        fraction = done / total if total else 1.0
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        text = (f"{self.count} tensors, {done / MIB:.1f}/{total / MIB:.1f} MiB ({fraction:4.0%}), "
                f"{rate / MIB:.0f} MiB/s, ETA {eta:.0f}s")
        if self.tty:
            width = 24
            filled = int(width * fraction)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text} ")
            self.stream.flush()
        elif fraction >= self.next_line or done == total:
            self.stream.write(f"quantbridge: {text}\n")
            self.next_line = fraction + 0.1

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")


def _table(reports: list[dict[str, Any]], seconds: float, out: TextIO) -> dict[str, Any]:
    header = f"{'layer':<52} {'shape':>14} {'bits':>4} {'SQNR dB':>8} {'max abs err':>12} {'ratio':>7}"
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in reports:
        shape = "x".join(map(str, r["shape"])) or "scalar"
        if r["quantized"]:
            print(f"{r['name']:<52} {shape:>14} {r['bits']:>4} {r['sqnr_db']:>8.2f} {r['max_abs_error']:>12.3e} "
                  f"{r['compression']:>6.2f}x", file=out)
        else:
            print(f"{r['name']:<52} {shape:>14} {'-':>4} {'passed through (' + r['dtype'] + ')':>28}", file=out)
    quantized = [r for r in reports if r["quantized"]]
    totals = {
        "tensors": len(reports),
        "quantized": len(quantized),
        "input_bytes": sum(r["input_bytes"] for r in reports),
        "output_bytes": sum(r["output_bytes"] for r in reports),
        "seconds": seconds,
    }
    totals["compression"] = totals["input_bytes"] / max(totals["output_bytes"], 1)
    if quantized:
        totals["worst_sqnr_db"] = min(r["sqnr_db"] for r in quantized)
        totals["max_abs_error"] = max(r["max_abs_error"] for r in quantized)
    print("-" * len(header), file=out)
    print(f"total: {totals['quantized']} of {totals['tensors']} tensors quantized, "
          f"{totals['input_bytes'] / MIB:.1f} MiB -> {totals['output_bytes'] / MIB:.1f} MiB "
          f"({totals['compression']:.2f}x) in {seconds:.2f} s", file=out)
    return totals


def _quantize(args: argparse.Namespace) -> int:
    source = args.input if args.input is not None else default_checkpoint()
    group_size = args.group_size or None
    if not args.quiet:
        print(f"quantbridge: {source} -> {args.output} (int{args.bits}, group_size={group_size}, "
              f"{'symmetric' if args.symmetric else 'asymmetric'}, scales {args.scale_dtype})", file=sys.stderr)
    bar = ProgressBar(sys.stderr, args.quiet)
    start = time.perf_counter()
    try:
        reports = quantize_file(
            source, args.output, bits=args.bits, group_size=group_size, symmetric=args.symmetric,
            scale_dtype=args.scale_dtype, include=args.include, exclude=args.exclude, force=args.force,
            progress=bar,
        )
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    totals = _table(reports, seconds, sys.stdout) if not args.quiet else {}
    if args.report is not None:
        spec = {"bits": args.bits, "group_size": group_size, "symmetric": args.symmetric,
                "scale_dtype": args.scale_dtype}
        report = {"input": str(source), "output": str(args.output), "spec": spec, "layers": reports,
                  "totals": totals or _table(reports, seconds, open("/dev/null", "w"))}
        args.report.write_text(json.dumps(report, indent=2))
    return 0


def _dequantize(args: argparse.Namespace) -> int:
    bar = ProgressBar(sys.stderr, args.quiet)
    try:
        reports = dequantize_file(args.input, args.output, force=args.force, progress=bar)
    finally:
        bar.close()
    if not args.quiet:
        restored = sum(r["quantized"] for r in reports)
        print(f"{args.output}: {restored} tensors restored to float32, {len(reports) - restored} passed through")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    info = inspect_file(args.input)
    for key, value in info["metadata"].items():
        print(f"# {key}: {value if len(value) <= 120 else value[:117] + '...'}")
    total = 0
    for t in info["tensors"]:
        total += t["nbytes"]
        shape = "x".join(map(str, t["shape"])) or "scalar"
        print(f"{t['name']:<60} {t['dtype']:>5} {shape:>16} {t['nbytes']:>12}")
    print(f"{len(info['tensors'])} tensors, {total / MIB:.1f} MiB")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {"quantize": _quantize, "dequantize": _dequantize, "inspect": _inspect}[args.command]
    try:
        return command(args)
    except BrokenPipeError:  # e.g. `quantbridge inspect FILE | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("quantbridge: interrupted; no output was written", file=sys.stderr)
        return 130
    except (QuantizationError, OSError, ValueError) as exc:
        message = " ".join(str(exc).split())  # one line
        print(f"quantbridge: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
