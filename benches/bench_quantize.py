"""Side-by-side timing of quantbridge and its peers, in one process and one run.

    python3 benches/bench_quantize.py [--mib 256] [--peer-mib 64] [--repeat 7]

Every figure is reported as a ratio to a baseline measured in the same run (``np.copyto``
of the same array, i.e. a memcpy), because absolute times drift on shared machines.
Peers (numpy and torch implementations of the same SPEC §2 int4 group-128 quantizer,
plus onnxruntime / gguf when installed) run on a smaller tensor, as they are slow.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import quantbridge as qb


def timeit(fn, repeat):
    fn()  # warm up (page faults, thread pool start)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--peer-mib", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    n = args.mib * 2**20 // 4
    cols = 8192
    x = np.random.default_rng(0).standard_normal(n, dtype=np.float32).reshape(-1, cols)
    dst = np.empty_like(x)
    base = timeit(lambda: np.copyto(dst, x), args.repeat)
    rows = [("np.copyto (baseline)", args.mib, base, 1.0)]

    def add(label, fn, mib=args.mib, baseline=base):
        t = timeit(fn, args.repeat)
        rows.append((label, mib, t, t / baseline))

    add("quantbridge int4 g128", lambda: qb.quantize(x))
    add("quantbridge int8 per-channel", lambda: qb.quantize(x, bits=8, group_size=None))
    add("quantbridge int2 g128", lambda: qb.quantize(x, bits=2))
    tx = torch.from_numpy(x.reshape(cols, -1).copy()).T  # a transposed torch weight
    add("quantbridge int4 g128, torch transposed", lambda: qb.quantize(tx))
    bx = torch.from_numpy(x).to(torch.bfloat16)
    add("quantbridge int4 g128, bfloat16 input (per element)", lambda: qb.quantize(bx), baseline=base)
    q = qb.quantize(x)
    out = np.empty_like(x)
    add("quantbridge dequantize int4 g128", lambda: q.dequantize())
    add("  (memcpy of dequantize's output size)", lambda: np.copyto(out, x))

    # Peers on the smaller tensor, against quantbridge on the same tensor.
    pn = args.peer_mib * 2**20 // 4
    px = x.reshape(-1)[:pn].reshape(-1, cols)
    ptx = torch.from_numpy(px)
    qb_small = timeit(lambda: qb.quantize(px), args.repeat)
    rows.append((f"quantbridge int4 g128 ({args.peer_mib} MiB)", args.peer_mib, qb_small, 1.0))
    peers = [("numpy int4 g128 (same spec)", lambda: numpy_int4_g128(px)),
             ("torch int4 g128 (same spec)", lambda: torch_int4_g128(ptx))]
    if (ort := onnxruntime_int4_g128()) is not None:
        pw = np.ascontiguousarray(px.T)
        peers.append(("onnxruntime quantize_matmul_4bits (block 128)", lambda: ort(pw)))
    if (q4_0 := gguf_q4_0()) is not None:
        peers.append(("gguf-py Q4_0 (block 32)", lambda: q4_0(px)))
    for label, fn in peers:
        t = timeit(fn, max(3, args.repeat // 2))
        rows.append((label, args.peer_mib, t, t / qb_small))

    print(f"{'what':<52} {'MiB':>5} {'median ms':>10} {'ratio':>8}")
    for label, mib, t, r in rows:
        print(f"{label:<52} {mib:>5} {t * 1e3:>10.2f} {r:>7.2f}x")
    print("ratios: quantbridge rows vs np.copyto of the same array; peer rows vs quantbridge on the peer tensor")


if __name__ == "__main__":
    main()
