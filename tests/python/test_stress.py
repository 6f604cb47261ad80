"""Stress (issue 5): many threads and many calls, mixing every producer and export.

Results must be identical across threads, and the process must not grow: RSS drift over
40,000 mixed calls stays below 8 MiB, every DLPack export is released."""

import gc
import threading

import numpy as np
import pyarrow as pa
import torch

import quantbridge as qb
from helpers import run_in_threads


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_eight_threads_thousands_of_calls_agree():
    x = np.random.default_rng(3).standard_normal((32, 256)).astype(np.float32)
    t = torch.from_numpy(x.copy()).T  # a transposed view
    a = pa.array(x.ravel())
    expected = {
        "numpy": qb.quantize(x).codes.tobytes(),
        "torch": qb.quantize(t).codes.tobytes(),
        "arrow": qb.quantize(a).codes.tobytes(),
    }
    sources = {"numpy": x, "torch": t, "arrow": a}
    bad = []
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        for k in range(1500):
            kind = ("numpy", "torch", "arrow")[(i + k) % 3]
            if qb.quantize(sources[kind]).codes.tobytes() != expected[kind]:
                bad.append((i, k, kind))

    run_in_threads(8, work)
    assert not bad


def test_rss_does_not_drift_over_40000_mixed_calls():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 64)).astype(np.float32)
    t = torch.from_numpy(x.copy())
    a = pa.array(x.ravel())
    table = pa.table({"layer_name": ["w"], "weights": [x.ravel()]})

    def one_round(k):
        q = (qb.quantize(x), qb.quantize(t, bits=8), qb.quantize(a, symmetric=True))[k % 3]
        if k % 4 == 0:
            np.from_dlpack(q.codes)
            torch.from_dlpack(q.dequantize())
        elif k % 4 == 1:
            pa.array(q.scales)
        elif k % 4 == 2:
            pa.table(qb.quantize_arrow(table))
        else:
            qb.quantize_batch({"a": x, "b": t})

    for k in range(2000):  # warm up allocators and caches
        one_round(k)
    gc.collect()
    live = qb._native._live_exports()
    before = rss_bytes()
    for k in range(40_000):
        one_round(k)
    gc.collect()
    drift = rss_bytes() - before
    assert drift < 8 * 2**20, drift
    assert qb._native._live_exports() == live
