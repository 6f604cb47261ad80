"""Producers that lie get a clear ValidationError, never a crash; every capsule that was
consumed has its deleter called exactly once, and the producer's refcount is restored."""

import sys

import numpy as np
import pytest

import quantbridge as qb
from fake_dlpack import FakeProducer

# (description, producer kwargs, words the message must contain, deleter calls expected)
HOSTILE = [
    ("negative shape", dict(shape=[3, -4]), ["negative extent"], 1),
    ("negative ndim", dict(ndim=-1), ["ndim=-1"], 1),
    ("huge ndim", dict(ndim=1 << 30), ["ndim="], 1),
    ("zero ndim", dict(ndim=0, shape=[], strides=[]), ["0-d"], 1),
    ("null data", dict(data=0), ["null data pointer"], 1),
    ("int32 dtype", dict(dtype=(0, 32, 1)), ["int32", "astype"], 1),
    ("bool dtype", dict(dtype=(6, 8, 1)), ["bool"], 1),
    ("float8", dict(dtype=(10, 8, 1)), ["float8"], 1),
    ("complex", dict(dtype=(5, 64, 1)), ["complex64"], 1),
    ("vector lanes", dict(dtype=(2, 32, 4)), ["lanes"], 1),
    ("odd float bits", dict(dtype=(2, 24, 1)), ["float24"], 1),
    ("gpu device", dict(device=2), ["cuda", ".cpu()"], 0),
    ("metal device", dict(device=8), ["metal", ".cpu()"], 0),
    ("major version 2", dict(major=2), ["version 2"], 1),
    ("used capsule", dict(capsule_name="used_dltensor_versioned"), ["already consumed"], 0),
    ("wrong capsule name", dict(capsule_name="not_a_tensor"), ["not_a_tensor"], 0),
    ("shape product overflow", dict(shape=[1 << 62, 1 << 62], strides=[1, 1]), ["overflow"], 1),
    ("byte size overflow", dict(shape=[1 << 62], strides=[1]), ["overflow"], 1),
    ("misaligned data", dict(byte_offset=1), ["aligned"], 1),
    ("strides leave address space", dict(shape=[2, 2], strides=[1 << 62, 1]), ["address space"], 1),
    ("strides length mismatch", dict(shape=[12], strides=[1], ndim=1), None, 1),
]


# Every case as a versioned and as a legacy capsule (legacy capsules carry no version).
CASES = [(c, v) for c in HOSTILE for v in (True, False) if v or "major" not in c[1]]


@pytest.mark.parametrize("case,versioned", CASES, ids=[f"{c[0]}-{'v1' if v else 'legacy'}" for c, v in CASES])
def test_hostile_producer_gets_clear_error_and_one_deleter_call(case, versioned):
    _, kwargs, words, deletes = case
    kwargs = dict(kwargs)
    if not versioned and kwargs.get("capsule_name", "").endswith("versioned"):
        kwargs["capsule_name"] = kwargs["capsule_name"].replace("_versioned", "")
    p = FakeProducer(versioned=versioned, **kwargs)
    before = sys.getrefcount(p)
    if words is None:  # a consistent tensor: must simply work
        q = qb.quantize(p, group_size=4)
        assert q.shape == (12,)
    else:
        with pytest.raises(qb.ValidationError) as info:
            qb.quantize(p, name="fc1")
        message = str(info.value)
        assert "layer 'fc1'" in message and "Fix:" in message
        for w in words:
            assert w in message, message
        assert info.value.layer == "fc1"
        del info
    assert p.deleted == deletes
    assert sys.getrefcount(p) == before


def test_consistent_fake_producer_is_read_in_place(no_leaked_exports):
    p = FakeProducer(np.arange(24, dtype=np.float32).reshape(4, 6))
    kind, addr, nbytes = qb._native._borrow_info(p)
    assert (kind, addr, nbytes) == ("dlpack", p.array.ctypes.data, 96)
    assert p.deleted == 1
    q = qb.quantize(p, bits=8, group_size=None)
    np.testing.assert_allclose(np.from_dlpack(q.dequantize()), p.array, atol=0.05)
    assert p.deleted == 2
    assert p.calls[-1] == {"max_version": (1, 0)}


def test_legacy_only_producer_falls_back_to_plain_call():
    p = FakeProducer(versioned=False, legacy_only=True)
    qb.quantize(p)
    assert p.calls == [{}]
    assert p.deleted == 1


def test_null_strides_mean_contiguous():
    p = FakeProducer(strides="null")
    q = qb.quantize(p, bits=8, group_size=None)
    np.testing.assert_allclose(np.from_dlpack(q.dequantize()), p.array, atol=0.05)
    assert p.deleted == 1


def test_null_deleter_is_allowed():
    p = FakeProducer(null_deleter=True)
    qb.quantize(p)
    assert p.deleted == 0


def test_dlpack_that_raises_is_a_validation_error_with_cause():
    p = FakeProducer(dlpack_raises=BufferError("cannot export"))
    with pytest.raises(qb.ValidationError, match="cannot export") as info:
        qb.quantize(p)
    assert isinstance(info.value.__cause__, BufferError)


def test_dlpack_returning_non_capsule():
    p = FakeProducer(dlpack_returns=[1, 2, 3])
    with pytest.raises(qb.ValidationError, match="instead of a PyCapsule"):
        qb.quantize(p)


def test_error_after_consumption_still_releases_on_nan():
    a = np.ones((4, 4), dtype=np.float32)
    a[2, 3] = np.inf
    p = FakeProducer(a)
    with pytest.raises(qb.ValidationError) as info:
        qb.quantize(p, name="w")
    assert info.value.index == 11
    assert p.deleted == 1


def test_real_producers_keep_their_refcount():
    import torch

    for x in (np.ones((8, 8), np.float32), torch.ones(8, 8), np.ones(3, np.int32)):
        before = sys.getrefcount(x)
        try:
            qb.quantize(x)
        except qb.ValidationError:
            pass
        assert sys.getrefcount(x) == before
