"""Side-by-side timing of quantbridge and its peers, in one process and one run.

    python3 benches/bench_quantize.py [--mib 256] [--peer-mib 64] [--limit-mib 256,1024] [--rounds 9] [--markdown]

Every figure is a ratio to a baseline measured in the same run, because absolute times drift
on shared machines. The candidates are interleaved: each round times every one of them once
(baseline included), and each reports its median over the rounds, so a slow spell of the
machine hits all of them alike instead of one.

* quantbridge rows: against ``np.copyto`` of the same float32 array (a memcpy into an
  existing array). Half-precision inputs are compared per element (same element count).
* Peer rows: against quantbridge int4 g128 on the same (smaller) tensor: numpy and torch
  implementations of the same docs/math.md quantizer, onnxruntime's C++ ``quantize_matmul_4bits``
  and gguf-py's Q4_0 when installed (``pip install .[bench]``). Peers are timed one after
  another, not interleaved: their thread pools spin after each call.
* Read-limit rows (``--limit-mib``, default 256 and 1024): int4 g128, int8 per-channel and
  int2 g128 of float32, float16 and bfloat16 arrays, each against a read pass of the same
  array on quantbridge's own threads (``_native._read_pass``: every byte read once), each
  timed in a block of its own.
* Small calls: microseconds per call / per layer (these are latencies, not bandwidths).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

import quantbridge as qb


def numpy_int4_g128(x):
    g = x.reshape(-1, 128)
    mn = np.minimum(g.min(axis=1, keepdims=True), 0)
    mx = np.maximum(g.max(axis=1, keepdims=True), 0)
    scale = (mx - mn) / np.float32(15)
    scale[scale == 0] = 1
    zp = np.clip(np.rint(-mn / scale), 0, 15)
    q = np.clip(np.rint(g * (np.float32(1) / scale)) + zp, 0, 15).astype(np.uint8).reshape(-1)
    return q[0::2] | (q[1::2] << 4), scale, zp.astype(np.uint8)


def torch_int4_g128(x):
    g = x.reshape(-1, 128)
    mn = g.amin(dim=1, keepdim=True).clamp(max=0)
    mx = g.amax(dim=1, keepdim=True).clamp(min=0)
    scale = (mx - mn) / 15
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zp = torch.round(-mn / scale).clamp(0, 15)
    q = (torch.round(g * (1 / scale)) + zp).clamp(0, 15).to(torch.uint8).reshape(-1)
    return q[0::2] | (q[1::2] << 4), scale, zp.to(torch.uint8)


def onnxruntime_int4_g128():
    """onnxruntime's C++ MatMulNBits quantizer, or None when onnxruntime is not installed.

    It quantizes a (K, N) weight in blocks along K, so it gets the transposed contiguous
    copy (its native layout, made outside the timing)."""
    try:
        from onnxruntime.capi._pybind_state import quantize_matmul_4bits
    except ImportError:
        return None

    def run(w):
        k, n = w.shape
        blocks = (k + 127) // 128
        packed = np.zeros((n, blocks, 64), np.uint8)
        zero_points = np.zeros(n * ((blocks + 1) // 2), np.uint8)
        scales = np.zeros(n * blocks, np.float32)
        quantize_matmul_4bits(packed, w, scales, zero_points, 128, n, k, False)
        return packed, scales, zero_points

    return run


def gguf_q4_0():
    """gguf-py's numpy Q4_0 quantizer (blocks of 32, symmetric), or None."""
    try:
        import gguf
    except ImportError:
        return None
    return lambda x: gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_0)


def interleaved(candidates: dict[str, callable], rounds: int) -> dict[str, float]:
    """Median seconds per candidate; every round runs each candidate once, in turn."""
    for fn in candidates.values():
        fn()  # warm up: page faults, thread pool start, the buffer pool's first result
    times: dict[str, list[float]] = {name: [] for name in candidates}
    order = list(candidates.items())
    for r in range(rounds):
        # Rotated each round: whatever runs right after the memcpy pays for its dirty
        # lines being written back, so no candidate may always hold that slot.
        for name, fn in order[r % len(order):] + order[:r % len(order)]:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def in_blocks(candidates: dict[str, callable], repeat: int) -> dict[str, float]:
    """Median seconds per candidate, each timed `repeat` times in a row.

    For peers: torch's OpenMP and onnxruntime's thread pools keep spinning for a while
    after a call, which would slow whatever runs next if the candidates were interleaved."""
    times = {}
    for name, fn in candidates.items():
        fn()
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        times[name] = statistics.median(ts)
    return times


def small_calls(rounds: int) -> list[tuple[str, float]]:
    """Microseconds per 16×16 quantize() call and per layer of a 10,000-layer batch."""
    tiny = np.random.default_rng(1).standard_normal((16, 16), dtype=np.float32)
    tiny_torch = torch.from_numpy(tiny.copy())
    layers = {f"layer{i}": tiny.copy() for i in range(10_000)}
    calls = 2_000

    def many_calls(x):
        def run():
            for _ in range(calls):
                qb.quantize(x)
        return run

    t = interleaved({"call": many_calls(tiny), "torch": many_calls(tiny_torch),
                     "batch": lambda: qb.quantize_batch(layers)}, rounds)
    return [("quantize() of one 16x16 numpy array, end to end", t["call"] / calls * 1e6),
            ("quantize() of one 16x16 torch tensor, end to end", t["torch"] / calls * 1e6),
            ("quantize_batch() of 10,000 16x16 layers, per layer", t["batch"] / len(layers) * 1e6)]


def cpu_model() -> str:
    """The CPU's model name (Linux), else what the platform module knows."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_pass(t) -> None:
    """Read every byte of `t` once on quantbridge's own threads (as many as the kernels
    use): the read limit. A Rust pass rather than `torch.sum`, whose OpenMP threads keep
    spinning after a call and slowed whatever ran next, so it can be interleaved."""
    qb._native._read_pass(t)


def read_limit_rows(mib: int, rounds: int) -> list[tuple[str, int, float, float]]:
    """Each kernel on a `mib` MiB array of each input dtype, against a read pass over that
    array (the bound: int4 writes an eighth of what it reads)."""
    n = mib * 2**20 // 4
    base = torch.from_numpy(np.random.default_rng(1).standard_normal(n, dtype=np.float32).reshape(-1, 8192))
    specs = {"int4 g128": {}, "int8 per-channel": {"bits": 8, "group_size": None}, "int2 g128": {"bits": 2}}
    table = []
    for dtype in ("float32", "float16", "bfloat16"):
        t = base if dtype == "float32" else base.to(getattr(torch, dtype))
        candidates = {"read": (lambda t: lambda: read_pass(t))(t)}
        candidates.update({name: (lambda spec: lambda: qb.quantize(t, **spec))(spec) for name, spec in specs.items()})
        # Each candidate in a block of its own: interleaved, the three specs' results (of
        # three sizes) took turns in the buffer pool, and every call paid fresh pages.
        times = in_blocks(candidates, rounds)
        table.append((f"read pass, {dtype} (the read limit)", mib, times["read"] * 1e3, 1.0))
        for name in specs:
            table.append((f"quantbridge {name}, {dtype}, vs its read pass", mib, times[name] * 1e3,
                          times[name] / times["read"]))
        del t
    return table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--peer-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--limit-mib", default="256,1024",
                    help="array sizes (MiB of float32) of the read-limit rows, comma-separated; empty: none")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args()
    qb.configure_metrics(degradation_fraction=0.0)  # slow peers and K-quants are expected here
    # Figures hold for one CPU and kernel path only: say which.
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; quantbridge kernel path: {qb._native._kernel()}")

    n = args.mib * 2**20 // 4
    cols = 8192
    x = np.random.default_rng(0).standard_normal(n, dtype=np.float32).reshape(-1, cols)
    dst = np.empty_like(x)
    transposed = torch.from_numpy(x.reshape(cols, -1).copy()).T  # a transposed torch weight
    reversed_cols = torch.from_numpy(x).flip(1)  # negative last-axis stride (a numpy-style view)
    halves = {"float16": torch.from_numpy(x).half(), "bfloat16": torch.from_numpy(x).bfloat16()}
    q = qb.quantize(x)

    def pool_off():
        # configure_buffer_pool returns the settings in force after the call: read the
        # current cap first (taking it from the call that sets 0 left the pool off for
        # every later row, the read-limit rows included).
        previous = qb.configure_buffer_pool()["max_bytes"]
        qb.configure_buffer_pool(max_bytes=0)
        try:
            qb.quantize(x)
        finally:
            qb.configure_buffer_pool(max_bytes=previous)

    rows = {
        "np.copyto (memcpy, the baseline)": lambda: np.copyto(dst, x),
        "int4 g128 asymmetric": lambda: qb.quantize(x),
        "int8 per-channel": lambda: qb.quantize(x, bits=8, group_size=None),
        "int2 g128": lambda: qb.quantize(x, bits=2),
        "int4 g128, transposed torch weight": lambda: qb.quantize(transposed),
        "int4 g128, negative last-axis stride": lambda: qb.quantize(reversed_cols),
        "int4 g128, float16 input (same element count)": lambda: qb.quantize(halves["float16"]),
        "int4 g128, bfloat16 input (same element count)": lambda: qb.quantize(halves["bfloat16"]),
        "dequantize int4 g128 (float32 out, same size)": lambda: q.dequantize(),
        "int4 g128 with stats=True (error statistics fused)": lambda: qb.quantize(x, stats=True),
        "int8 per-channel with stats=True": lambda: qb.quantize(x, bits=8, group_size=None, stats=True),
        "read pass: every byte of the same array once (the read limit)": lambda: read_pass(x),
    }
    t = interleaved(rows, args.rounds)
    base = t["np.copyto (memcpy, the baseline)"]
    table = [(f"quantbridge {name}" if not name.startswith(("np.", "read")) else name, args.mib, t[name] * 1e3, t[name] / base)
             for name in rows]

    # The pool off on its own: turning it off frees what the other rows would reuse.
    t = interleaved({"base": lambda: np.copyto(dst, x), "off": pool_off}, max(3, args.rounds // 2))
    table.append(("quantbridge int4 g128, buffer pool off (fresh result pages)", args.mib, t["off"] * 1e3,
                  t["off"] / t["base"]))

    # Strided views against the contiguous call on the same values (issue 13 asks for 1.3×).
    strided_rows = {
        "quantbridge int4 g128, contiguous (the strided rows' baseline)": lambda: qb.quantize(x),
        "quantbridge int4 g128, transposed torch weight, vs contiguous": lambda: qb.quantize(transposed),
        "quantbridge int4 g128, negative last-axis stride, vs contiguous": lambda: qb.quantize(reversed_cols),
    }
    ts = interleaved(strided_rows, args.rounds)
    sbase = ts["quantbridge int4 g128, contiguous (the strided rows' baseline)"]
    table += [(name, args.mib, ts[name] * 1e3, ts[name] / sbase) for name in strided_rows]
    # The same for a bfloat16 weight (half precision is widened inside the transposes).
    bf16_transposed = transposed.bfloat16().t().contiguous().t()
    half_rows = {
        "quantbridge int4 g128, bfloat16, contiguous (the next row's baseline)": lambda: qb.quantize(halves["bfloat16"]),
        "quantbridge int4 g128, transposed bfloat16 weight, vs contiguous": lambda: qb.quantize(bf16_transposed),
    }
    ts = interleaved(half_rows, args.rounds)
    hbase = next(iter(ts.values()))
    table += [(name, args.mib // 2, ts[name] * 1e3, ts[name] / hbase) for name in half_rows]
    del bf16_transposed

    # stats=True against stats=False on the same view (issue 13 asks for 1.15×).
    for view_name, view in (("contiguous", x), ("transposed torch weight", transposed),
                            ("float16 contiguous", halves["float16"]), ("bfloat16 contiguous", halves["bfloat16"])):
        stats_rows = {
            f"quantbridge int4 g128, {view_name}, stats=False (the next row's baseline)": lambda v=view: qb.quantize(v),
            f"quantbridge int4 g128, {view_name}, stats=True, vs stats=False": lambda v=view: qb.quantize(v, stats=True),
        }
        ts = interleaved(stats_rows, args.rounds)
        sbase = next(iter(ts.values()))
        mib = args.mib // 2 if "float16" in view_name else args.mib  # bytes of the view
        table += [(name, mib, ts[name] * 1e3, ts[name] / sbase) for name in stats_rows]

    for mib in (int(m) for m in args.limit_mib.split(",") if m):
        table += read_limit_rows(mib, max(3, args.rounds // 2))

    pn = args.peer_mib * 2**20 // 4
    px = np.ascontiguousarray(x.reshape(-1)[:pn].reshape(-1, cols))
    peers = {
        "quantbridge int4 g128 (the peers' baseline)": lambda: qb.quantize(px),
        "numpy int4 g128 (same spec)": lambda: numpy_int4_g128(px),
        "torch int4 g128 (same spec)": (lambda ptx: lambda: torch_int4_g128(ptx))(torch.from_numpy(px)),
    }
    if (ort := onnxruntime_int4_g128()) is not None:
        pw = np.ascontiguousarray(px.T)
        peers["onnxruntime quantize_matmul_4bits (block 128)"] = lambda: ort(pw)
    if (q4_0 := gguf_q4_0()) is not None:
        peers["gguf-py Q4_0 (block 32)"] = lambda: q4_0(px)
    # quantbridge runs first and last (before any peer's threads spin, and after all of
    # them); its baseline is the slower of the two.
    tp = in_blocks(peers, max(3, args.rounds // 2))
    again = in_blocks({"again": peers["quantbridge int4 g128 (the peers' baseline)"]}, max(3, args.rounds // 2))
    pbase = tp["quantbridge int4 g128 (the peers' baseline)"] = max(tp["quantbridge int4 g128 (the peers' baseline)"], again["again"])
    table += [(name, args.peer_mib, tp[name] * 1e3, tp[name] / pbase) for name in peers]

    # GGUF block types (docs/gguf.md): against our own int4 g128 path in the same run, and
    # against gguf-py's numpy quantizer where it has one.
    gguf_rows = {"quantbridge int4 g128 (the GGUF rows' baseline)": lambda: qb.quantize(x)}
    for t in ("Q4_0", "Q8_0", "Q4_1", "Q5_0", "Q5_1"):
        gguf_rows[f"quantbridge gguf_type={t}"] = (lambda t: lambda: qb.quantize(x, gguf_type=t))(t)
    tg = interleaved(gguf_rows, max(3, args.rounds // 2))
    gbase = tg["quantbridge int4 g128 (the GGUF rows' baseline)"]
    table += [(name, args.mib, tg[name] * 1e3, tg[name] / gbase) for name in gguf_rows]
    k_rows = {"quantbridge int4 g128 (the K rows' baseline)": lambda: qb.quantize(px)}
    for t in ("Q4_K", "Q5_K", "Q6_K"):
        k_rows[f"quantbridge gguf_type={t}"] = (lambda t: lambda: qb.quantize(px, gguf_type=t))(t)
    tk = in_blocks(k_rows, 3)
    kbase = tk["quantbridge int4 g128 (the K rows' baseline)"]
    table += [(name, args.peer_mib, tk[name] * 1e3, tk[name] / kbase) for name in k_rows]
    try:
        import gguf

        vs = {}
        for t in ("Q4_0", "Q8_0"):
            vs[f"gguf-py {t}"] = (lambda t: lambda: gguf.quants.quantize(px, gguf.GGMLQuantizationType[t]))(t)
            vs[f"quantbridge {t} (the gguf-py row's baseline)"] = (lambda t: lambda: qb.quantize(px, gguf_type=t))(t)
        tv = in_blocks(vs, 3)
        for t in ("Q4_0", "Q8_0"):
            ours = tv[f"quantbridge {t} (the gguf-py row's baseline)"]
            table.append((f"gguf-py {t} (numpy)", args.peer_mib, tv[f"gguf-py {t}"] * 1e3, tv[f"gguf-py {t}"] / ours))
    except ImportError:
        pass

    # The original system's API (docs/compat.md): ArrowQuantV2.quantize_batch on 100 layers
    # of 4 MiB against qb.quantize_batch of the same layers and the same (per-tensor,
    # unpacked) spec, interleaved; the gap is the result dicts it builds.
    from arrow_quant_v2 import ArrowQuantV2

    rng = np.random.default_rng(2)
    layers = {f"layer.{i}": rng.standard_normal((1024, 1024), dtype=np.float32) for i in range(100)}
    legacy = ArrowQuantV2()
    compat_rows = {
        "qb.quantize_batch, 100 x 4 MiB, per-tensor unpacked (the compat row's baseline)":
            lambda: qb.quantize_batch(layers, bits=4, granularity="tensor", group_size=None, pack=False),
        "arrow_quant_v2.ArrowQuantV2.quantize_batch, same layers": lambda: legacy.quantize_batch(layers, 4),
    }
    tc = interleaved(compat_rows, max(5, args.rounds))
    cbase = tc["qb.quantize_batch, 100 x 4 MiB, per-tensor unpacked (the compat row's baseline)"]
    table += [(name, 400, tc[name] * 1e3, tc[name] / cbase) for name in compat_rows]
    del layers

    small = small_calls(max(3, args.rounds // 2))

    if args.markdown:
        print("| what | MiB | median ms | ratio |\n| --- | ---: | ---: | ---: |")
        for label, mib, ms, r in table:
            print(f"| {label} | {mib} | {ms:.2f} | {r:.2f}× |")
        print("\n| small call | µs |\n| --- | ---: |")
        for label, us in small:
            print(f"| {label} | {us:.1f} |")
        return
    print(f"{'what':<62} {'MiB':>5} {'median ms':>10} {'ratio':>8}")
    for label, mib, ms, r in table:
        print(f"{label:<62} {mib:>5} {ms:>10.2f} {r:>7.2f}x")
    for label, us in small:
        print(f"{label:<62} {'':>5} {us:>8.1f} µs")
    print("ratios: quantbridge rows vs np.copyto of the same array (read-limit rows: vs the read pass of their")
    print("        array; \"vs contiguous\" rows: vs the contiguous call; \"vs stats=False\" rows: vs the row above);")
    print("        peer rows vs quantbridge on the peer tensor;")
    print("        gguf_type rows vs quantbridge int4 g128 of the same array; gguf-py rows vs quantbridge's same type;")
    print("        the ArrowQuantV2 row vs qb.quantize_batch of the same layers")


if __name__ == "__main__":
    main()
