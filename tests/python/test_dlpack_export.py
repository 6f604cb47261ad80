"""Results leave through DLPack without a copy: numpy and torch take them as they are,
read-only, and every export's deleter runs exactly once."""

import gc

import numpy as np
import pytest
import torch

import quantbridge as qb
from quantbridge import _native


@pytest.fixture
def q():
    x = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
    return qb.quantize(x, bits=4, group_size=64)


def test_numpy_views_share_rust_memory(q, no_leaked_exports):
    a = np.from_dlpack(q.codes)
    b = np.from_dlpack(q.codes)
    assert a.ctypes.data == b.ctypes.data  # both view the one Rust buffer
    assert a.dtype == np.uint8 and a.shape == (16 * 256 // 2,)
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0] = 1
    t = torch.from_dlpack(q.codes)
    assert t.data_ptr() == a.ctypes.data


def test_results_outlive_the_quantized_tensor(no_leaked_exports):
    x = np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256)
    q = qb.quantize(x, bits=8)
    codes = np.from_dlpack(q.codes)
    scales = np.from_dlpack(q.scales)
    expected = codes.copy()
    del q
    gc.collect()
    np.testing.assert_array_equal(codes, expected)
    assert scales.shape == (2, 2)


def test_versioned_and_legacy_capsules(q, no_leaked_exports):
    assert "dltensor_versioned" in repr(q.codes.__dlpack__(max_version=(1, 0)))
    assert '"dltensor"' in repr(q.codes.__dlpack__())
    assert '"dltensor"' in repr(q.codes.__dlpack__(max_version=(0, 8)))
    assert q.codes.__dlpack_device__() == (1, 0)


def test_unconsumed_capsules_are_freed(q, no_leaked_exports):
    for _ in range(100):
        q.scales.__dlpack__(max_version=(1, 0))
        q.scales.__dlpack__()


def test_copy_true_gives_a_private_copy(q, no_leaked_exports):
    a = np.from_dlpack(q.codes)
    c = np.from_dlpack(q.codes, copy=True)
    assert c.ctypes.data != a.ctypes.data
    np.testing.assert_array_equal(a, c)


def test_export_to_other_device_is_refused(q):
    with pytest.raises(BufferError):
        q.codes.__dlpack__(dl_device=(2, 0))


@pytest.mark.parametrize("scale_dtype,torch_dtype", [("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_scale_dtypes_reach_torch(scale_dtype, torch_dtype):
    q = qb.quantize(torch.randn(4, 64), scale_dtype=scale_dtype, group_size=16)
    s = torch.from_dlpack(q.scales)
    assert s.dtype == torch_dtype and tuple(s.shape) == (4, 4)
    assert q.scale_dtype == scale_dtype


def test_unpacked_codes_keep_the_tensor_shape():
    x = np.random.default_rng(1).standard_normal((3, 5, 7)).astype(np.float32)
    asym = qb.quantize(x, pack=False, bits=2)
    sym = qb.quantize(x, pack=False, bits=4, symmetric=True)
    assert np.from_dlpack(asym.codes).dtype == np.uint8 and asym.codes.shape == (3, 5, 7)
    s = np.from_dlpack(sym.codes)
    assert s.dtype == np.int8 and s.min() >= -7 and s.max() <= 7
    assert sym.zero_points is None


def test_dequantize_roundtrips_into_torch_and_numpy():
    x = torch.randn(32, 128, dtype=torch.bfloat16)
    q = qb.quantize(x, bits=8, group_size=32)
    d = torch.from_dlpack(q.dequantize())
    assert d.dtype == torch.float32 and d.shape == x.shape
    assert torch.allclose(d, x.float(), atol=0.05)
    np.testing.assert_array_equal(np.from_dlpack(qb.dequantize(q)), d.numpy())


def test_quantized_tensor_metadata(q):
    assert q.shape == (16, 256) and q.dtype == "float32" and q.bits == 4
    assert q.group_size == 64 and q.granularity == "group" and q.packed and not q.symmetric
    assert q.nbytes == q.codes.nbytes + q.scales.nbytes + q.zero_points.nbytes
    assert q.compression_ratio == pytest.approx(16 * 256 * 4 / q.nbytes)
    assert "QuantizedTensor(shape=[16, 256]" in repr(q)
    assert q.codes.tobytes() == np.from_dlpack(q.codes).tobytes()
    per_tensor = qb.quantize(np.ones((4, 4), np.float32), granularity="tensor")
    assert per_tensor.scales.shape == (1,) and per_tensor.group_size is None
