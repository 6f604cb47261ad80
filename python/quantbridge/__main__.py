"""quantbridge: quantize a checkpoint tensor by tensor, in bounded memory, and report the error.

Exit codes: 0 done, 1 an error (one line on stderr), 2 a usage error, 130 Ctrl-C, 143
SIGTERM, 129 SIGHUP; on every failure and signal nothing is left under the output's name
(a sharded job keeps its finished shards in a hidden folder beside it, to resume).

    quantbridge quantize [INPUT] -o OUTPUT [--format quantbridge|compressed-tensors|mlx]
                         [--bits 4] [--group-size 128] [--symmetric] [--scale-dtype DTYPE]
                         [--include RE] [--exclude RE] [--force] [--report FILE]
                         [--executor local|ray|dask] [--address ADDR] [--workers N]
    quantbridge quantize MODEL.gguf -o OUT.gguf --gguf-type Q4_K_M   (like llama-quantize)
    quantbridge dequantize INPUT -o OUTPUT [--force]
    quantbridge inspect FILE

With no INPUT, ``quantize`` uses the embedded all-MiniLM-L6-v2 model folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from collections.abc import Callable
from typing import Any, NoReturn, TextIO

from . import QuantizationError, ValidationError, __version__
from ._sharded import EXECUTORS
from ._files import FORMATS, compile_patterns, default_checkpoint, dequantize_file, inspect_file, quantize_file

MIB = 2**20


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: stop like Ctrl-C, removing the partial output."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    raise Terminated(signum)


def _int_at_least(minimum: int, meaning: str) -> Callable[[str], int]:
    """An argparse type for integers of at least ``minimum`` (``meaning`` says which)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {meaning}, found {value}")
        return value
    return parse


_group_size = _int_at_least(0, "0 (one group per row) or a positive size")
_positive = _int_at_least(1, "1 or more")


def _pattern(option: str) -> Callable[[str], str]:
    """An argparse type that accepts only valid regular expressions."""
    def parse(text: str) -> str:
        try:
            compile_patterns([text], option)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(f"found {exc.found}; expected {exc.expected}. Fix: {exc.fix}") from None
        return text
    return parse


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="quantbridge", description="Quantize checkpoints to int8/int4/int2.",
                                formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"quantbridge {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{quantize,dequantize,inspect}")

    q = sub.add_parser("quantize", help="quantize a model folder or checkpoint (.safetensors, sharded, Arrow IPC)",
                       formatter_class=fmt)
    q.add_argument("input", nargs="?", type=Path,
                   help="model folder or checkpoint to read (default: the embedded all-MiniLM-L6-v2 folder)")
    q.add_argument("-o", "--output", type=Path, required=True,
                   help="output: a .safetensors or .arrow file (--format quantbridge), else a model folder")
    q.add_argument("--format", default="quantbridge", choices=FORMATS,
                   help="quantbridge: one file in quantbridge's layout; compressed-tensors: a folder vLLM, "
                        "SGLang and transformers load; mlx: a folder mlx-lm loads")
    q.add_argument("--gguf-type", metavar="TYPE", type=str.upper,
                   choices=("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M", "Q5_K_M"),
                   help="requantize a GGUF INPUT into a GGUF OUTPUT like llama-quantize: one of Q8_0, Q4_0, "
                        "Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, Q4_K_M, Q5_K_M (Q4_K/Q5_K = the _M mixtures)")
    q.add_argument("--bits", type=int, default=4, choices=(2, 4, 8), help="bits per code")
    q.add_argument("--group-size", type=_group_size, default=128, metavar="N",
                   help="elements per group along each row; 0 = one group per row")
    q.add_argument("--symmetric", action="store_true", help="symmetric (no zero points)")
    q.add_argument("--scale-dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="dtype the scales are stored in (narrower ones are rounded up) "
                        "(default: float32; the model's dtype for compressed-tensors and mlx)")
    q.add_argument("--include", action="append", default=[], metavar="RE", type=_pattern("--include"),
                   help="quantize only tensors whose name matches (repeatable). Without it: float tensors "
                        "of 2 or more dimensions (quantbridge); Linear weights, i.e. 2-D *.weight except "
                        "embeddings and lm_head (compressed-tensors, mlx)")
    q.add_argument("--exclude", action="append", default=[], metavar="RE", type=_pattern("--exclude"),
                   help="pass tensors whose name matches through unchanged (repeatable)")
    q.add_argument("--force", action="store_true", help="overwrite an existing output")
    q.add_argument("--report", type=Path, metavar="FILE", help="also write the report as JSON")
    q.add_argument("--executor", choices=EXECUTORS, default=None,
                   help="a sharded INPUT (model.safetensors.index.json) is quantized one task per shard: local "
                        "(a process pool; the default), ray or dask (docs/distributed.md)")
    q.add_argument("--address", metavar="ADDR",
                   help="the Ray (ray://HOST:10001 or auto) or Dask (tcp://HOST:8786) cluster; default: start a "
                        "local one")
    q.add_argument("--workers", type=_positive, metavar="N",
                   help="processes (local, dask) or CPUs (ray) of a cluster started here (default: one per core, "
                        "at most one per shard)")
    q.add_argument("--max-retries", type=int, default=3, metavar="N",
                   help="times a shard whose worker died is run again")
    q.add_argument("--quiet", action="store_true", help="no progress and no table")

    d = sub.add_parser("dequantize", help="restore a quantbridge .safetensors output to float32",
                       formatter_class=fmt)
    d.add_argument("input", type=Path, help="a .safetensors file written by quantbridge quantize")
    d.add_argument("-o", "--output", type=Path, required=True, help="output .safetensors file")
    d.add_argument("--force", action="store_true", help="overwrite an existing output")
    d.add_argument("--quiet", action="store_true", help="no progress and no summary")

    i = sub.add_parser("inspect", help="list a checkpoint's tensors and metadata", formatter_class=fmt)
    i.add_argument("input", type=Path, help="a .safetensors file, sharded index or folder, or Arrow IPC file")
    return p


class ProgressBar:
    """Tensors and bytes done, throughput and ETA on stderr: one redrawn line on a terminal,
    a plain line every tenth of the way otherwise."""

    def __init__(self, stream: TextIO, quiet: bool, banner: str = "") -> None:
        self.stream = stream
        # Printed with the first progress, so an error that stops the job before any
        # tensor is the only line the user sees.
        self.banner = banner
        self.tty = stream.isatty()
        self.quiet = quiet
        self.start = time.perf_counter()
        self.count = 0
        self.next_line = 0.1
        self.shards = ""

    def shard_done(self, done: int, total: int) -> None:
        """A sharded job finished its ``done``-th shard of ``total``."""
        self.shards = f"{done}/{total} shards, "

    def __call__(self, report: dict[str, Any], done: int, total: int) -> None:
        self.count += 1
        if self.quiet:
            return
        if self.banner:
            self.stream.write(self.banner + "\n")
            self.banner = ""
        fraction = done / total if total else 1.0
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        text = (f"{self.shards}{self.count} tensors, {done / MIB:.1f}/{total / MIB:.1f} MiB ({fraction:4.0%}), "
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


def _totals(reports: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The whole job's figures, for the table's last line and the JSON report."""
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
    return totals


def _print_table(reports: list[dict[str, Any]], totals: dict[str, Any], out: TextIO) -> None:
    """One aligned line per tensor, then the totals."""
    width = max([len("layer")] + [len(r["name"]) for r in reports])
    header = f"{'layer':<{width}} {'shape':>14} {'bits':>4} {'SQNR dB':>8} {'max abs err':>12} {'ratio':>7}"
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in reports:
        shape = "x".join(map(str, r["shape"])) or "scalar"
        if r["quantized"]:
            bits = r.get("gguf_type") or r["bits"]
            print(f"{r['name']:<{width}} {shape:>14} {bits:>4} {r['sqnr_db']:>8.2f} {r['max_abs_error']:>12.3e} "
                  f"{r['compression']:>6.2f}x", file=out)
        else:
            print(f"{r['name']:<{width}} {shape:>14} {'-':>4} {'passed through (' + r['dtype'] + ')':>28}", file=out)
    print("-" * len(header), file=out)
    kept: dict[str, int] = {}
    for r in reports:
        if not r["quantized"]:
            reason = r.get("kept_because") or "passed through"
            kept[reason] = kept.get(reason, 0) + 1
    for reason, count in sorted(kept.items(), key=lambda kv: -kv[1]):
        print(f"kept in float: {count:>4} x {reason}", file=out)
    print(f"total: {totals['quantized']} of {totals['tensors']} tensors quantized, "
          f"{totals['input_bytes'] / MIB:.1f} MiB -> {totals['output_bytes'] / MIB:.1f} MiB "
          f"({totals['compression']:.2f}x) in {totals['seconds']:.2f} s", file=out)


def _strict_json(value: Any) -> Any:
    """``value`` with non-finite floats as ``None``: strict JSON, which ``jq``, browsers and
    Node read (an exactly reproduced tensor has an infinite SQNR; it is written as null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict_json(v) for v in value]
    return value


def _check_report_path(path: Path | None) -> None:
    """Refuse an unwritable ``--report`` before the job runs, not after it."""
    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OSError(f"cannot write the report {path}: no such folder {folder}")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OSError(f"cannot write the report {path}: permission denied")


def _quantize(args: argparse.Namespace) -> int:
    source = args.input if args.input is not None else default_checkpoint()
    group_size = args.group_size or None
    _check_report_path(args.report)
    scales = args.scale_dtype or ("float32" if args.format == "quantbridge" else "the model's dtype")
    banner = (f"quantbridge: {source} -> {args.output} ({args.format}, int{args.bits}, "
              f"{'--group-size ' + str(group_size) if group_size else 'one group per row'}, "
              f"{'symmetric' if args.symmetric else 'asymmetric'}, scales {scales})")
    if args.gguf_type:
        banner = f"quantbridge: {source} -> {args.output} (GGUF {args.gguf_type})"
    bar = ProgressBar(sys.stderr, args.quiet, banner)
    start = time.perf_counter()
    try:
        reports = quantize_file(
            source, args.output, format=args.format, bits=args.bits, group_size=group_size,
            symmetric=args.symmetric,
            scale_dtype=args.scale_dtype, include=args.include, exclude=args.exclude, force=args.force,
            progress=bar, gguf_type=args.gguf_type, executor=args.executor, address=args.address,
            workers=args.workers, max_retries=args.max_retries,
        )
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    totals = _totals(reports, seconds)
    if not args.quiet:
        _print_table(reports, totals, sys.stdout)
    if totals["quantized"] == 0:
        why = ("no tensor name matched --include" if args.include
               else "no tensor the default rule selects (pass --include RE to choose tensors)")
        print(f"quantbridge: warning: nothing was quantized: {why}; {args.output} holds the input's tensors "
              "unchanged", file=sys.stderr)
    if args.report is not None:
        spec = {"format": args.format, "gguf_type": args.gguf_type, "bits": args.bits, "group_size": group_size,
                "symmetric": args.symmetric,
                "scale_dtype": scales}
        report = {"input": str(source), "output": str(args.output), "spec": spec, "layers": reports,
                  "totals": totals}
        args.report.write_text(json.dumps(_strict_json(report), indent=2, allow_nan=False))
    return 0


def _dequantize(args: argparse.Namespace) -> int:
    bar = ProgressBar(sys.stderr, args.quiet, f"quantbridge: {args.input} -> {args.output} (float32)")
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
    print(f"{info['path']}")
    for key, value in info["metadata"].items():
        print(f"  {key}: {value}")
    rows = [(t["name"], t["dtype"], "x".join(map(str, t["shape"])) or "scalar", f"{t['nbytes']:,}")
            for t in info["tensors"]]
    header = ("tensor", "dtype", "shape", "bytes")
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(4)]
    line = f"{{:<{widths[0]}}}  {{:<{widths[1]}}}  {{:>{widths[2]}}}  {{:>{widths[3]}}}"
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line.format(*r))
    total = sum(t["nbytes"] for t in info["tensors"])
    print(f"{len(rows)} tensors, {total / MIB:.1f} MiB")
    return 0


def _print_notes(exc: BaseException) -> None:
    """What the job added to the error (a sharded job: where its finished shards are kept)."""
    for note in getattr(exc, "__notes__", []):
        print(f"quantbridge: {note}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {"quantize": _quantize, "dequantize": _dequantize, "inspect": _inspect}[args.command]
    # SIGTERM (what `timeout` and `kill` send) and SIGHUP (a closed terminal) stop the job
    # like Ctrl-C: the partial output is removed before the process exits.
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return command(args)
    except BrokenPipeError:  # e.g. `quantbridge inspect FILE | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as exc:
        print("quantbridge: interrupted; no output was written", file=sys.stderr)
        _print_notes(exc)
        return 130
    except Terminated as exc:
        print(f"quantbridge: stopped by {exc}; no output was written", file=sys.stderr)
        _print_notes(exc)
        return 128 + exc.signum
    except (QuantizationError, OSError, ValueError) as exc:
        message = " ".join(str(exc).split())  # one line
        print(f"quantbridge: error: {message}", file=sys.stderr)
        _print_notes(exc)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
