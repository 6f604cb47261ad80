"""quantize() is bit-exact with an independent numpy implementation of docs/math.md, for numpy
and torch inputs in every layout and dtype the spec accepts."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import quantbridge as qb
import spec_reference as ref
from helpers import assert_matches_reference

SPECS = [
    dict(bits=b, symmetric=s, granularity=g, group_size=gs, scale_dtype=sd)
    for b in (2, 4, 8)
    for s in (False, True)
    for g, gs in (("group", 128), ("group", 7), ("channel", None), ("tensor", None))
    for sd in ("float32", "float16", "bfloat16")
]


def spec_id(s):
    return f"int{s['bits']}-{'sym' if s['symmetric'] else 'asym'}-{s['granularity']}{s['group_size'] or ''}-{s['scale_dtype']}"


def run(x, spec, pack=True):
    q = qb.quantize(x, pack=pack, **spec)
    values = x if isinstance(x, np.ndarray) else x.detach().to(torch.float32).numpy()
    r = ref.quantize(values, pack_codes=pack, **spec)
    assert_matches_reference(q, r)
    return q


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_every_spec_is_bit_exact(spec):
    rng = np.random.default_rng(42)
    x = (rng.standard_normal((33, 300)) * rng.uniform(0.01, 50, size=(33, 1))).astype(np.float32)
    x[3] = 0.0  # a constant-zero row exercises scale = 1
    x[4, :10] = 5.0
    for pack in (True, False):
        run(x, spec, pack)


NUMPY_LAYOUTS = {
    "contiguous": lambda a: a,
    "transposed": lambda a: a.T,
    "sliced": lambda a: a[1:-1:2, 3:],
    "negative-stride": lambda a: a[::-1, ::-2],
    "broadcast": lambda a: np.broadcast_to(a[:1], a.shape),
    "3d-permuted": lambda a: a.reshape(4, -1, a.shape[1]).transpose(1, 2, 0),
    "1d": lambda a: a.reshape(-1)[5:],
}


@pytest.mark.parametrize("layout", NUMPY_LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_numpy_layouts_and_dtypes(layout, dtype):
    rng = np.random.default_rng(7)
    base = (rng.standard_normal((48, 130)) * 4).astype(dtype)
    x = NUMPY_LAYOUTS[layout](base)
    for spec in (SPECS[0 + 3 * 0], dict(bits=4, symmetric=True, granularity="group", group_size=32, scale_dtype="float16")):
        run(x, spec)


TORCH_LAYOUTS = {
    "contiguous": lambda t: t,
    "transposed-weight": lambda t: t.T,
    "sliced": lambda t: t[2:, 1::3],
    "flipped": lambda t: t.flip(0),
    "expanded": lambda t: t[:1].expand(t.shape[0], -1),
    "storage-offset": lambda t: t.reshape(-1)[20:].reshape(-1, 10)[:, 2:],
}


@pytest.mark.parametrize("layout", TORCH_LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_torch_layouts_and_dtypes(layout, dtype):
    g = torch.Generator().manual_seed(3)
    base = (torch.randn(64, 140, generator=g) * 2).to(dtype)
    x = TORCH_LAYOUTS[layout](base)
    run(x, dict(bits=4, symmetric=False, granularity="group", group_size=64, scale_dtype="float32"))
    run(x, dict(bits=8, symmetric=True, granularity="channel", group_size=None, scale_dtype="bfloat16"))


def test_parameters_that_require_grad_are_borrowed_through_detach():
    w = torch.nn.Linear(64, 32).weight
    assert w.requires_grad
    run(w, dict(bits=4, symmetric=False, granularity="group", group_size=16, scale_dtype="float32"))


finite_f32 = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@st.composite
def strided_arrays(draw):
    dtype = draw(st.sampled_from([np.float32, np.float16, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=24))
    a = draw(hnp.arrays(np.float32, shape, elements=finite_f32)).astype(dtype)
    if a.ndim > 1 and draw(st.booleans()):
        a = a.transpose(draw(st.permutations(range(a.ndim))))
    index = tuple(slice(None, None, draw(st.sampled_from([1, 2, -1]))) for _ in range(a.ndim))
    return a[index]


@given(
    x=strided_arrays(),
    bits=st.sampled_from([2, 4, 8]),
    symmetric=st.booleans(),
    gran=st.sampled_from([("group", 1), ("group", 5), ("group", 128), ("channel", None), ("tensor", None)]),
    scale_dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
    pack=st.booleans(),
)
def test_hypothesis_bit_exact(x, bits, symmetric, gran, scale_dtype, pack):
    spec = dict(bits=bits, symmetric=symmetric, granularity=gran[0], group_size=gran[1], scale_dtype=scale_dtype)
    q = run(x, spec, pack)
    # docs/math.md: |x - x'| <= scale/2 (up to float32 rounding).
    values = x.astype(np.float32)
    err = np.abs(values - np.from_dlpack(q.dequantize()))
    assert np.all(err <= np.abs(values) * 1e-6 + _max_scale(q) * (0.5 + 1e-5))


def _max_scale(q):
    from helpers import scales_f32

    return float(scales_f32(q).max(initial=0.0))


def test_zero_size_tensors_give_empty_results():
    for shape in [(0,), (0, 8), (8, 0)]:
        q = qb.quantize(np.zeros(shape, dtype=np.float32))
        assert np.from_dlpack(q.codes).size == 0
        assert np.from_dlpack(q.dequantize()).shape == shape


def test_stats_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((128, 512)).astype(np.float32)
    q = qb.quantize(x, bits=4, stats=True)
    deq = np.from_dlpack(q.dequantize()).astype(np.float64)
    err = x.astype(np.float64) - deq
    # docs/math.md (statistics): squares are summed in float32 over blocks of 64 values
    # (eight per lane), in float64 beyond, so the sums agree with numpy's float64 to ~1e-7.
    assert q.stats["mse"] == pytest.approx(np.mean(err**2), rel=1e-6)
    assert q.stats["max_abs_error"] == np.abs(err).max().astype(np.float32)
    assert q.stats["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum(err**2)), rel=1e-7)
    assert qb.quantize(x).stats is None


@pytest.mark.parametrize("magnitude", [1e-30, 1e20, 1e36])
def test_stats_of_huge_and_tiny_tensors_are_finite_and_right(magnitude):
    """The float32 block sums are of values in units of the scale, so no square overflows
    (the fuzzer found inf/NaN statistics for 1e20-sized values when they were not)."""
    x = (np.random.default_rng(2).standard_normal((16, 256)) * magnitude).astype(np.float32)
    q = qb.quantize(x, bits=4, stats=True)
    err = x.astype(np.float64) - np.from_dlpack(q.dequantize()).astype(np.float64)
    assert np.isfinite(q.stats["mse"]) and np.isfinite(q.stats["sqnr_db"])
    assert q.stats["mse"] == pytest.approx(np.mean(err**2), rel=1e-6)
    assert q.stats["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum(err**2)), rel=1e-6)
