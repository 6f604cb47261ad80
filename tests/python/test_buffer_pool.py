"""Reuse of freed large results (src/quant/alloc.rs, RESULT_POOL in src/foreign/storage.rs).

A reused buffer holds a previous result's bytes, so these tests check that a result never
depends on what was there before, and that a buffer still exported (numpy, torch) is never
handed to a new result."""

import gc

import numpy as np
import pytest
import torch

import quantbridge as qb
from helpers import run_in_threads

MIB = 2**20


@pytest.fixture
def pool():
    previous = qb.configure_buffer_pool()["max_bytes"]
    qb.configure_buffer_pool(max_bytes=256 * MIB)
    yield
    qb.configure_buffer_pool(max_bytes=previous)


def tensor(seed, rows=1024, cols=2048):
    return np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32)


def test_a_freed_large_result_is_kept_and_reused(pool):
    x = tensor(0)  # 8 MiB: 2 MiB of int8 codes, 8 MiB dequantized
    q = qb.quantize(x, bits=8)
    restored = q.dequantize()
    del q, restored
    gc.collect()
    assert qb.configure_buffer_pool()["kept_bytes"] >= 10 * MIB
    qb.quantize(x, bits=8).dequantize()
    assert qb.configure_buffer_pool()["kept_bytes"] >= 10 * MIB, "the second round reused, then returned, them"


def test_results_do_not_depend_on_reused_contents(pool):
    qb.configure_buffer_pool(max_bytes=0)
    tensors = [tensor(s) * (s + 1) for s in range(3)]
    fresh = []
    for x in tensors:
        q = qb.quantize(x, bits=4, group_size=64)
        fresh.append((q.codes.tobytes(), q.scales.tobytes(), q.zero_points.tobytes(), q.dequantize().tobytes()))
    qb.configure_buffer_pool(max_bytes=256 * MIB)
    for _ in range(2):
        for x, expected in zip(tensors[::-1], fresh[::-1]):
            q = qb.quantize(x, bits=4, group_size=64)
            got = (q.codes.tobytes(), q.scales.tobytes(), q.zero_points.tobytes(), q.dequantize().tobytes())
            assert got == expected


@pytest.mark.parametrize("consumer", [np.from_dlpack, torch.from_dlpack])
def test_a_buffer_still_exported_is_never_reused(pool, consumer):
    x, y = tensor(1), tensor(2)
    q = qb.quantize(x, bits=8)
    codes = consumer(q.codes)
    values = consumer(q.dequantize())
    as_numpy = (lambda t: t.numpy()) if consumer is torch.from_dlpack else (lambda a: a)
    expected_codes, expected_values = as_numpy(codes).copy(), as_numpy(values).copy()
    del q
    gc.collect()
    for _ in range(3):  # results of exactly these sizes, while the exports are alive
        other = qb.quantize(y, bits=8)
        other.dequantize()
    assert np.array_equal(as_numpy(codes), expected_codes)
    assert np.array_equal(as_numpy(values), expected_values)


def test_zero_turns_reuse_off_and_frees_what_is_kept(pool):
    qb.quantize(tensor(3), bits=8).dequantize()
    gc.collect()
    assert qb.configure_buffer_pool()["kept_bytes"] > 0
    assert qb.configure_buffer_pool(max_bytes=0) == {"max_bytes": 0, "kept_bytes": 0}
    qb.quantize(tensor(3), bits=8).dequantize()
    assert qb.configure_buffer_pool()["kept_bytes"] == 0


def test_threads_sharing_the_pool_get_their_own_results(pool):
    """Four threads quantize and dequantize tensors of the same few sizes at once: every
    buffer is handed to one result at a time, so every result is the expected one."""
    tensors = [tensor(10 + i, rows=512) * (i + 1) for i in range(4)]  # 4 MiB each
    expected = []
    for x in tensors:
        q = qb.quantize(x, bits=8)
        expected.append((q.codes.tobytes(), q.dequantize().tobytes()))
    bad = []

    def work(i):
        for k in range(25):
            j = (i + k) % len(tensors)
            q = qb.quantize(tensors[j], bits=8)
            got = (q.codes.tobytes(), q.dequantize().tobytes())
            if got != expected[j]:
                bad.append((i, k))

    run_in_threads(4, work)
    assert not bad
    assert qb.configure_buffer_pool()["kept_bytes"] <= 256 * MIB
