"""Errors name the layer, what was found, what was expected and the fix (docs/api.md (errors))."""

import numpy as np
import pytest
import torch

import quantbridge as qb


def test_exception_hierarchy():
    assert issubclass(qb.ValidationError, qb.QuantizationError)
    assert issubclass(qb.ValidationError, ValueError)
    assert issubclass(qb.BatchQuantizationError, qb.QuantizationError)
    assert issubclass(qb.PerformanceWarning, UserWarning)
    assert qb.ValidationError.__module__ == "quantbridge"


@pytest.mark.parametrize("bad,where", [(np.nan, 5), (np.inf, 0), (-np.inf, 11)])
def test_non_finite_reports_first_flat_index(bad, where):
    x = np.ones((3, 4), np.float32)
    x.flat[where] = bad
    x.flat[11] = np.nan
    with pytest.raises(qb.ValidationError) as info:
        qb.quantize(x, name="encoder.0.fc")
    e = info.value
    assert e.layer == "encoder.0.fc" and e.index == where
    assert "contains NaN or Inf" in str(e) and f"at index {where}, flat" in str(e) and "nan_to_num" in e.fix


def test_non_finite_index_is_logical_for_strided_views():
    x = np.ones((4, 6), np.float32)
    x[1, 4] = np.nan  # logical index 4*4+1 = 17 in the transpose
    with pytest.raises(qb.ValidationError) as info:
        qb.quantize(x.T)
    assert info.value.index == 4 * 4 + 1


@pytest.mark.parametrize("kwargs,found", [
    (dict(bits=3), "bits=3"),
    (dict(bits=16), "bits=16"),
    (dict(group_size=0), "group_size=0"),
    (dict(group_size=-5), "group_size=-5"),
    (dict(granularity="row"), "granularity=\"row\""),
    (dict(scale_dtype="int8"), "scale_dtype=\"int8\""),
])
def test_bad_spec_arguments(kwargs, found):
    with pytest.raises(qb.ValidationError) as info:
        qb.quantize(np.ones(4, np.float32), **kwargs)
    assert found in str(info.value) and info.value.fix


def test_unsupported_inputs():
    with pytest.raises(qb.ValidationError, match="0-d"):
        qb.quantize(np.array(3.0, dtype=np.float32))
    with pytest.raises(qb.ValidationError, match="int64"):
        qb.quantize(torch.arange(4))
    with pytest.raises(qb.ValidationError, match="__dlpack__"):
        qb.quantize("not a tensor")
    with pytest.raises(qb.ValidationError, match="complex"):
        qb.quantize(np.ones(4, np.complex64))


def test_float16_scale_overflow_is_explained():
    x = np.array([0.0, 3.0e6], np.float32)
    with pytest.raises(qb.ValidationError, match="65504"):
        qb.quantize(x, scale_dtype="float16")
    qb.quantize(x, scale_dtype="bfloat16")  # bfloat16 has float32's range


def test_float32_range_overflow_is_explained():
    with pytest.raises(qb.ValidationError, match="range"):
        qb.quantize(np.array([-3e38, 3e38], np.float32))


def test_failed_call_leaves_input_untouched():
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    x[3, 3] = np.nan
    before = x.copy()
    with pytest.raises(qb.ValidationError):
        qb.quantize(x)
    np.testing.assert_array_equal(x, before)
    y = x[:3].copy()
    qb.quantize(y)
    np.testing.assert_array_equal(y, before[:3])


def test_rust_panic_is_contained_as_quantization_error():
    with pytest.raises(qb.QuantizationError, match="panic was contained: deliberate panic") as info:
        qb._native._panic_in_engine()
    assert not isinstance(info.value, qb.ValidationError)
    # The interpreter is fine and the engine still works afterwards.
    assert qb.quantize(np.ones(8, np.float32)).bits == 4


def test_masked_values_are_refused_not_quantized_as_valid():
    # DLPack carries no mask: numpy.from_dlpack and torch.from_dlpack both read the data.
    data = np.arange(16, dtype=np.float32).reshape(2, 8)
    masked = np.ma.masked_array(data, mask=np.arange(16).reshape(2, 8) == 5)
    with pytest.raises(qb.ValidationError, match=r"masked array with 1 masked value.*x\.filled"):
        qb.quantize(masked, bits=4, group_size=8)
    with pytest.raises(qb.BatchQuantizationError, match="w: found a numpy masked array"):
        qb.quantize_batch({"w": masked}, bits=4, group_size=8)
    # Nothing masked (an explicit all-False mask, or none): the data is the tensor.
    for clean in (np.ma.masked_array(data, mask=False), np.ma.masked_array(data)):
        got = np.from_dlpack(qb.quantize(clean, bits=4, group_size=8).codes)
        np.testing.assert_array_equal(got, np.from_dlpack(qb.quantize(data, bits=4, group_size=8).codes))
