"""Arrow producers that lie (ctypes, tests/python/fake_arrow.py) get a clear
ValidationError, never a crash, and their release callback runs exactly once, whether the
capsule was consumed or refused."""

import gc

import numpy as np
import pyarrow as pa
import pytest

import quantbridge as qb
from fake_arrow import CountedArray

FLOATS = pa.array(np.arange(100, dtype=np.float32))
LISTS = pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32()))

# (description, array, CountedArray overrides, words the message must contain)
HOSTILE = [
    ("too few buffers", FLOATS, dict(n_buffers=1), ["1 buffers", "requires 2"]),
    ("too many buffers", FLOATS, dict(n_buffers=4), ["4 buffers"]),
    ("children on a primitive", FLOATS, dict(n_children=2), ["2 children"]),
    ("negative length", FLOATS, dict(length=-5), ["length -5"]),
    ("negative offset", FLOATS, dict(offset=-1), ["offset -1"]),
    ("absurd length", FLOATS, dict(length=10**15), ["cannot be allocated"]),
    ("NULL data buffer", FLOATS, dict(null_buffer_index=1), ["buffer 1 is NULL"]),
    ("nulls without a bitmap", FLOATS, dict(null_count=3), ["no validity bitmap"]),
    ("null count above length", FLOATS, dict(null_count=500), ["null_count 500"]),
    ("list without its child", LISTS, dict(n_children=0), ["0 children"]),
    ("wrong capsule name", FLOATS, dict(capsule_name="wrong_name"), ["wrong_name"]),
    ("__arrow_c_array__ raises", FLOATS, dict(raises=RuntimeError("boom")), ["raised", "boom"]),
]


@pytest.mark.parametrize("what,array,overrides,words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_lying_arrow_producers(what, array, overrides, words):
    producer = CountedArray(array, **overrides)
    with pytest.raises(qb.ValidationError) as info:
        qb.quantize(producer)
    message = str(info.value)
    assert all(w in message for w in words), message
    assert info.value.fix
    gc.collect()
    expected = 0 if "raises" in overrides else 1
    assert producer.released == expected, (what, producer.released)


def test_nulls_name_the_row_and_release_once():
    producer = CountedArray(pa.array([1.0, 2.0, None, 4.0], pa.float32()))
    with pytest.raises(qb.ValidationError, match="row 2"):
        qb.quantize(producer)
    gc.collect()
    assert producer.released == 1


def test_good_producer_releases_once_after_the_work():
    producer = CountedArray(FLOATS)
    q = qb.quantize(producer)
    assert producer.released == 1
    assert q.codes.tobytes() == qb.quantize(np.arange(100, dtype=np.float32)).codes.tobytes()
