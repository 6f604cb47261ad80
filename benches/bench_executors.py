"""The sharded job on each executor, beside reading the same shards once, in one run.

    python3 benches/bench_executors.py [--shards 8] [--shard-mib 128] [--workers 2] [--dtype bfloat16]

Generates a sharded checkpoint (bfloat16 by default) (--shards shards of --shard-mib MiB, tensors named
like Linear weights), then times, in this process:

* `read`: every shard read once (`cat`-like, page cache warm): the baseline;
* `serial`: the single-file job (`qb.quantize_file(..., "out.safetensors")`, one process);
* `local`, `ray`, `dask` with --workers: the whole job, cluster start included;
* the same engines on a checkpoint of --shards tiny shards: what start-up and each task
  cost beyond the quantization itself (docs/distributed.md uses these for its projection).

Prints the CPU, then each row as seconds, MiB/s and the ratio to `read`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import quantbridge as qb

MIB = 2**20


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def make_checkpoint(folder: Path, shards: int, shard_bytes: int, dtype: str) -> None:
    """`shards` shards of two (rows, 4096) Linear weights each, in `dtype`."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    itemsize = 4 if dtype == "float32" else 2
    rows = max(1, shard_bytes // 2 // (4096 * itemsize))
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {f"model.layers.{s}.mlp.{p}.weight":
                   torch.randn((rows, 4096), generator=generator).to(getattr(torch, dtype))
                   for p in ("up_proj", "down_proj")}
        save_file(tensors, str(folder / name))
        weight_map.update({k: name for k in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": dtype}))


def read_all(folder: Path) -> None:
    for p in sorted(folder.glob("*.safetensors")):
        with open(p, "rb") as f:
            while f.readinto(BUFFER):
                pass


BUFFER = bytearray(16 * MIB)


def best_of(repeat: int, run) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-mib", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16",
                        help="the checkpoint's dtype (bfloat16, as hub checkpoints are)")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), kernel path: {qb._native._kernel()}")
    with tempfile.TemporaryDirectory(prefix="qb-bench-executors-") as tmp:
        root = Path(tmp)
        big, tiny = root / "big", root / "tiny"
        make_checkpoint(big, args.shards, args.shard_mib * MIB, args.dtype)
        make_checkpoint(tiny, args.shards, 64 * 1024, args.dtype)
        total = sum(p.stat().st_size for p in big.glob("*.safetensors"))
        read_all(big)  # warm the page cache
        rows: list[tuple[str, float]] = [("read", best_of(args.repeat, lambda: read_all(big)))]

        def job(source: Path, out: Path, **options) -> None:
            qb.quantize_file(source, out, force=True, **options)

        rows.append(("serial (one file)", best_of(args.repeat, lambda: job(big, root / "one.safetensors"))))
        overhead: list[tuple[str, float]] = []
        for executor in ("local", "ray", "dask"):
            options = {"executor": executor, "workers": args.workers}
            rows.append((f"{executor} x{args.workers}", best_of(args.repeat, lambda: job(big, root / "o", **options))))
            overhead.append((executor, best_of(args.repeat, lambda: job(tiny, root / "t", **options))))
            shutil.rmtree(root / "o", ignore_errors=True)
        base = rows[0][1]
        print(f"{args.shards} shards x {args.shard_mib} MiB {args.dtype} = {total / MIB:.0f} MiB, int4 g128, "
              f"{args.workers} workers, best of {args.repeat}")
        print(f"{'run':<20} {'seconds':>8} {'MiB/s':>8} {'x read':>7}")
        for name, seconds in rows:
            print(f"{name:<20} {seconds:>8.3f} {total / MIB / seconds:>8.0f} {seconds / base:>7.2f}")
        print(f"fixed cost of a job of {args.shards} tiny shards (start-up + {args.shards} tasks):")
        for name, seconds in overhead:
            print(f"  {name:<8} {seconds:>6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
