"""The seed-compatible ``Quantizer`` class (docs/api.md).

Every method is one call into the native module, so it goes through the same borrowed
tensor guard, the same engine and the same metrics as the modern functions: for the same
tensor and spec, all of them give bit-identical codes, scales and zero points.
"""

from __future__ import annotations

import array
import struct
from collections.abc import Callable, Mapping
from typing import Any

from . import _native
from ._api import _spec
from ._native import QuantizedTensor, ValidationError

__all__ = ["Quantizer"]


def _floats(t: _native.NativeTensor) -> list[float]:
    """A NativeTensor of float32 / float16 / bfloat16 values as Python floats."""
    raw = t.tobytes()
    if t.dtype == "float32":
        return array.array("f", raw).tolist()
    if t.dtype == "float16":
        return list(struct.unpack(f"={len(raw) // 2}e", raw))
    # bfloat16: the upper half of a float32.
    bits = array.array("H", raw)
    return list(struct.unpack(f"={len(bits)}f", struct.pack(f"={len(bits)}I", *(b << 16 for b in bits))))


class Quantizer:
    """Quantizer(bit_width=4, group_size=128, symmetric=False, *, granularity="group",
    scale_dtype="float32")

    The original system's class. ``bit_width=`` passed to a method overrides the
    instance's for that call; ``group_size=None`` means one group per row.
    """

    def __init__(
        self,
        bit_width: int = 4,
        group_size: int | None = 128,
        symmetric: bool = False,
        *,
        granularity: str = "group",
        scale_dtype: str = "float32",
    ) -> None:
        self.bit_width = bit_width
        self.group_size = group_size
        self.symmetric = symmetric
        self.granularity = granularity
        self.scale_dtype = scale_dtype

    def __repr__(self) -> str:
        return (
            f"Quantizer(bit_width={self.bit_width}, group_size={self.group_size}, "
            f"symmetric={self.symmetric}, granularity={self.granularity!r}, scale_dtype={self.scale_dtype!r})"
        )

    def _spec(self, bit_width: int | None) -> tuple[Any, ...]:
        bits = self.bit_width if bit_width is None else bit_width
        return _spec(bits, self.group_size, self.symmetric, self.granularity, self.scale_dtype)

    # -- the legacy API -------------------------------------------------------------------

    def quantize(self, weights: Mapping[str, Any], *, bit_width: int | None = None) -> dict[str, dict[str, Any]]:
        """Legacy: ``{name: {"quantized_data": bytes, "scales": [float], "zero_points":
        [float], "shape": [int], "bit_width": int}}``.

        Values may be lists of floats (copied once, with a ``PerformanceWarning``) or any
        tensor. For symmetric specs ``zero_points`` holds the storage offset
        ``2**(bit_width-1)`` of the offset-binary codes, so ``(code - zp) * scale`` holds
        for every scheme.
        """
        results = _native.quantize_batch(weights, self._spec(bit_width), api="Quantizer.quantize")
        return {name: self._legacy_entry(q) for name, q in results.items()}

    @staticmethod
    def _legacy_entry(q: QuantizedTensor) -> dict[str, Any]:
        assert q.scales is not None, "Quantizer results use the SPEC math, which always has scales"
        scales = _floats(q.scales)
        if q.zero_points is not None:
            zero_points = [float(z) for z in q.zero_points.tobytes()]
        else:
            zero_points = [float(1 << (q.bits - 1))] * len(scales)
        return {
            "quantized_data": q.codes.tobytes(),
            "scales": scales,
            "zero_points": zero_points,
            "shape": list(q.shape),
            "bit_width": q.bits,
        }

    # -- tensors --------------------------------------------------------------------------

    def quantize_numpy(self, array: Any, *, bit_width: int | None = None) -> QuantizedTensor:
        """Quantize one array (numpy, or any tensor) without copying it."""
        return _native.quantize(array, self._spec(bit_width), api="Quantizer.quantize_numpy")

    def quantize_numpy_2d(self, array: Any, *, bit_width: int | None = None) -> QuantizedTensor:
        """Like :meth:`quantize_numpy`, for a 2-D weight matrix (rows = output channels)."""
        ndim = len(getattr(array, "shape", ()))
        if ndim != 2:
            err = ValidationError(
                f"layer 'tensor': found a {ndim}-d input; expected a 2-d array. "
                "Fix: reshape it, e.g. w.reshape(w.shape[0], -1), or use quantize_numpy()"
            )
            err.layer, err.found, err.expected = "tensor", f"a {ndim}-d input", "a 2-d array"
            err.fix = "reshape it, e.g. w.reshape(w.shape[0], -1), or use quantize_numpy()"
            raise err
        return _native.quantize(array, self._spec(bit_width), api="Quantizer.quantize_numpy_2d")

    def quantize_batch(
        self, weights_dict: Mapping[str, Any], continue_on_error: bool = False, *, bit_width: int | None = None
    ) -> dict[str, QuantizedTensor]:
        """All layers in one call, in parallel; see :func:`quantbridge.quantize_batch`."""
        return _native.quantize_batch(
            weights_dict, self._spec(bit_width), continue_on_error=continue_on_error, api="Quantizer.quantize_batch"
        )

    def quantize_batch_with_progress(
        self,
        weights_dict: Mapping[str, Any],
        progress_callback: Callable[[str, float], object] | bool | None,
        continue_on_error: bool = False,
        *,
        bit_width: int | None = None,
    ) -> dict[str, QuantizedTensor]:
        """:meth:`quantize_batch` calling ``progress_callback(name, fraction)`` as layers finish."""
        return _native.quantize_batch(
            weights_dict,
            self._spec(bit_width),
            continue_on_error=continue_on_error,
            progress=progress_callback,
            api="Quantizer.quantize_batch_with_progress",
        )

    # -- Arrow ----------------------------------------------------------------------------

    def quantize_arrow(self, table: Any, *, bit_width: int | None = None) -> _native.QuantizedTable:
        """A table with ``layer_name``, ``weights``[, ``shape``] columns (docs/formats.md (Arrow tables))."""
        return _native.quantize_arrow(table, self._spec(bit_width), api="Quantizer.quantize_arrow")

    def quantize_arrow_batch(self, record_batch: Any, *, bit_width: int | None = None) -> _native.QuantizedTable:
        """One record batch with the same columns."""
        return _native.quantize_arrow_batch(record_batch, self._spec(bit_width), api="Quantizer.quantize_arrow_batch")
