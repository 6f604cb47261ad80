"""How torch tensors enter: plain CPU tensors through torch's C exporter, everything else
through the public DLPack methods, and lazily negated views refused."""

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import quantbridge as qb

SPEC = dict(bits=4, group_size=16)


def codes_of(x):
    q = qb.quantize(x, **SPEC)
    return np.from_dlpack(q.codes).copy(), np.from_dlpack(q.scales).copy()


def same_as_numpy(t):
    codes, scales = codes_of(t)
    want_codes, want_scales = codes_of(np.ascontiguousarray(t.detach().numpy()))
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(scales, want_scales)


@pytest.fixture
def counted_dlpack_methods(monkeypatch):
    calls = []
    for name in ("__dlpack__", "__dlpack_device__"):
        method = getattr(torch.Tensor, name)

        def counted(self, *args, _method=method, _name=name, **kwargs):
            calls.append(_name)
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def test_plain_cpu_tensors_skip_the_python_dlpack_methods(counted_dlpack_methods):
    # torch's __dlpack__ and __dlpack_device__ are Python code: 3.1 of a 5.5 µs small call.
    g = torch.Generator().manual_seed(0)
    base = torch.randn(32, 48, generator=g)
    for t in (base, base.T, base[:, ::3], torch.nn.Linear(48, 32).weight, base.to(torch.bfloat16)):
        same_as_numpy(t.float() if t.dtype == torch.bfloat16 else t)
        qb.quantize(t, **SPEC)
    assert counted_dlpack_methods == []


def test_subclasses_keep_the_public_protocol(counted_dlpack_methods):
    class Tagged(torch.Tensor):
        pass

    t = torch.randn(16, 32).as_subclass(Tagged)
    same_as_numpy(t)
    assert "__dlpack__" in counted_dlpack_methods


def test_a_subclass_that_exports_itself_is_asked_to():
    class OwnExport(torch.Tensor):
        # No __torch_function__ override (as nn.Parameter): only the own __dlpack__ differs.
        __torch_function__ = torch._C._disabled_torch_function_impl
        exports = 0

        def __dlpack__(self, *args, **kwargs):
            OwnExport.exports += 1
            return super().__dlpack__(*args, **kwargs)

    t = torch.randn(16, 32).as_subclass(OwnExport)
    same_as_numpy(t)
    assert OwnExport.exports >= 1


def test_a_torch_function_mode_sees_the_export():
    seen = []

    class Recording(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", ""))
            return func(*args, **(kwargs or {}))

    t = torch.randn(16, 32)
    with Recording():
        qb.quantize(t, **SPEC)
    assert "__dlpack__" in seen


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: torch.ones(4, 16).to_sparse(), "layout other than torch.strided"),
        (lambda: torch.ones(4, 16, device="meta"), "meta"),
    ],
    ids=["sparse", "meta"],
)
def test_tensors_torch_cannot_export_get_the_protocols_refusal(make, message):
    with pytest.raises(qb.ValidationError, match=message):
        qb.quantize(make(), **SPEC)


def test_a_lazily_negated_view_is_refused_not_read_with_the_wrong_sign():
    # torch's DLPack export drops the negative bit: torch.from_dlpack(v) reads -v.
    z = torch.randn(8, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    view = z.conj().imag
    assert view.is_neg()
    with pytest.raises(qb.ValidationError, match=r"resolve_neg\(\)"):
        qb.quantize(view, **SPEC)
    resolved = view.resolve_neg()
    same_as_numpy(resolved)
    back = np.from_dlpack(qb.dequantize(qb.quantize(resolved, bits=8, group_size=16)))
    assert np.all(np.sign(back[np.abs(back) > 0.1]) == np.sign(resolved.numpy()[np.abs(back) > 0.1]))
