"""GGUF block types: byte for byte what ggml's reference quantizers write (built from the
llama-cpp-python sdist, tests/python/ggml_reference.py) and what gguf-py's quantizer
writes where it has one; dequantization bit for bit gguf-py's."""

from __future__ import annotations

import gguf
import numpy as np
import pyarrow as pa
import pytest
import torch
from gguf import GGMLQuantizationType

import quantbridge as qb
from ggml_reference import BLOCK

TYPES = list(BLOCK)
GGUF_PY_QUANTIZES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]


def _codes(q) -> np.ndarray:
    return np.from_dlpack(q.codes).copy()


def _cases(rows: int = 4, cols: int = 512) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    normal = rng.standard_normal((rows, cols)).astype(np.float32)
    huge = np.zeros((rows, cols), np.float32)
    huge[1, 17] = 3e4
    huge[2] = rng.standard_normal(cols) * 1e-3
    ties = np.tile(np.array([127.0, 0.5, 1.5, -2.5, 3.5, -0.5] + [0.0] * 26, np.float32), (rows, cols // 32))
    negative_max = np.abs(normal) * 0.1
    negative_max[:, ::32] = -5.0
    subnormal = (rng.standard_normal((rows, cols)) * 1e-39).astype(np.float32)
    wide = (normal * np.logspace(-4, 4, cols, dtype=np.float32)).astype(np.float32)
    signed_zeros = np.abs(normal).copy()
    signed_zeros[:, ::3] = -0.0
    signed_zeros[:, ::7] = 0.0
    signed_zeros[0, :64] = np.where(np.arange(64) % 2, -0.0, 0.0)
    return {"signed-zeros": signed_zeros,"normal": normal, "zeros": np.zeros((rows, cols), np.float32), "huge": huge, "ties": ties,
            "negative-max": negative_max, "subnormal": subnormal, "wide-range": wide}


CASES = _cases()


@pytest.mark.parametrize("gguf_type", TYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_bytes_are_ggmls(ggml, gguf_type, case):
    x = CASES[case]
    np.testing.assert_array_equal(_codes(qb.quantize(x, gguf_type=gguf_type)), ggml.quantize(x, gguf_type))


@pytest.mark.parametrize("gguf_type", GGUF_PY_QUANTIZES)
@pytest.mark.parametrize("case", list(CASES))
def test_bytes_are_gguf_pys(gguf_type, case):
    x = CASES[case]
    with np.errstate(all="ignore"):  # gguf-py divides by subnormal scales, as ggml does
        expected = gguf.quantize(x, GGMLQuantizationType[gguf_type]).reshape(-1)
    ours = _codes(qb.quantize(x, gguf_type=gguf_type))
    if case == "signed-zeros" and gguf_type in ("Q4_1", "Q5_1"):
        # A block whose minimum is zero stores m = ±0.0: ggml keeps the first zero's sign,
        # numpy's min() (gguf-py) may pick another. quantbridge follows ggml (checked above);
        # the two may differ in that sign bit (byte 3 of the block) and nowhere else.
        size = BLOCK[gguf_type][1]
        differ = np.nonzero(ours != expected)[0]
        assert np.all(differ % size == 3) and np.all((ours ^ expected)[differ] == 0x80)
        return
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("gguf_type", TYPES)
@pytest.mark.parametrize("case", ["normal", "wide-range", "zeros"])
def test_dequantize_is_gguf_pys_bit_for_bit(gguf_type, case):
    x = CASES[case]
    q = qb.quantize(x, gguf_type=gguf_type)
    expected = gguf.dequantize(_codes(q).reshape(x.shape[0], -1), GGMLQuantizationType[gguf_type])
    got = np.from_dlpack(q.dequantize())
    assert got.shape == x.shape
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("gguf_type", TYPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_widened_like_ggml(ggml, gguf_type, dtype):
    x = torch.from_numpy(CASES["normal"]).to(dtype)
    np.testing.assert_array_equal(_codes(qb.quantize(x, gguf_type=gguf_type)),
                                  ggml.quantize(x.float().numpy(), gguf_type))


@pytest.mark.parametrize("gguf_type", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
def test_strided_and_transposed_views_are_read_in_place(ggml, gguf_type):
    base = torch.from_numpy(np.random.default_rng(3).standard_normal((512, 1024)).astype(np.float32))
    for view in (base.T, base[::2, 256:768], base.T[:, ::2]):
        assert not view.is_contiguous()
        qb.reset_metrics()
        codes = _codes(qb.quantize(view, gguf_type=gguf_type))
        assert qb.metrics()["bytes_copied"] == 0
        np.testing.assert_array_equal(codes, ggml.quantize(view.contiguous().numpy(), gguf_type))


def test_the_result_is_a_quantized_tensor_of_blocks():
    x = CASES["normal"]
    q = qb.quantize(x, gguf_type="q4_k", name="blk.0.attn_q.weight", stats=True)
    assert (q.gguf_type, q.scales, q.zero_points, q.shape) == ("Q4_K", None, None, (4, 512))
    assert q.codes.dtype == "uint8" and q.nbytes == 4 * 2 * 144
    assert q.stats["sqnr_db"] > 15
    error = x.astype(np.float64) - np.from_dlpack(q.dequantize())
    assert q.stats["mse"] == pytest.approx(np.mean(error**2), rel=1e-9)
    assert q.stats["max_abs_error"] == pytest.approx(np.abs(error).max(), rel=1e-6)
    assert "gguf_type=Q4_K" in repr(q)
    assert qb.quantize(x, bits=4).gguf_type is None


@pytest.mark.parametrize("gguf_type, block", [("Q4_0", 32), ("Q6_K", 256)])
def test_rows_that_are_not_whole_blocks_are_refused(gguf_type, block):
    with pytest.raises(qb.ValidationError, match=f"multiple of {block}") as info:
        qb.quantize(np.ones((4, block + 16), np.float32), gguf_type=gguf_type, name="w")
    assert info.value.layer == "w"


def test_unknown_types_and_non_finite_values_are_refused():
    with pytest.raises(qb.ValidationError, match="Q4_K"):
        qb.quantize(np.ones((1, 32), np.float32), gguf_type="Q3_K")
    x = np.ones((2, 256), np.float32)
    x[1, 3] = np.inf
    with pytest.raises(qb.ValidationError, match="259"):
        qb.quantize(x, gguf_type="Q8_0")


def test_gguf_results_do_not_pretend_to_other_layouts():
    q = qb.quantize(np.ones((2, 256), np.float32), gguf_type="Q4_0")
    with pytest.raises(qb.ValidationError, match="codes"):
        pa.array(q)
    with pytest.raises(qb.ValidationError, match="gguf_type"):
        q.to_format("mlx")
