"""Small helpers shared by the tests."""

import threading

import numpy as np
import torch

import quantbridge as qb


def scales_f32(q: qb.QuantizedTensor) -> np.ndarray:
    """The stored scales as float32 (bfloat16 goes through torch; numpy has no bfloat16)."""
    return torch.from_dlpack(q.scales).to(torch.float32).numpy()


def assert_matches_reference(q: qb.QuantizedTensor, r) -> None:
    np.testing.assert_array_equal(np.from_dlpack(q.codes), r.codes)
    np.testing.assert_array_equal(scales_f32(q), r.scales)
    if r.zero_points is None:
        assert q.zero_points is None
    else:
        np.testing.assert_array_equal(np.from_dlpack(q.zero_points), r.zero_points)
    np.testing.assert_array_equal(np.from_dlpack(q.dequantize()), r.dequantized)


def run_in_threads(n: int, work) -> None:
    """Run `work(i)` on `n` threads at once and wait for all of them."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
