"""The original system's API: ``arrow_quant_v2.ArrowQuantV2`` (docs/compat.md).

Code written for the public ``pallasting/ArrowQuant_V2`` module runs with only its import
changed, or with none: quantbridge's wheel also installs a top-level ``arrow_quant_v2``
module that re-exports this one. Every method is one call into the same compiled
functions as ``quantbridge.quantize`` / ``quantize_batch`` / ``quantize_arrow``, so inputs
go through the same borrowed-tensor guard (read in place, no copy), batches cross into
Rust once and run in parallel without the GIL, and the codes, scales and zero points are
bit-identical to ``quantbridge.quantize(x, bits=bit_width, granularity="tensor",
pack=False)``: the original quantized each layer as a whole (one scale and one zero
point), with one code per byte, and so does this class.

In scope: ``quantize`` (the legacy dict API), ``quantize_numpy``, ``quantize_numpy_2d``,
``quantize_batch``, ``quantize_batch_with_progress``, ``quantize_arrow``,
``quantize_arrow_batch`` and ``quantize_batch_arrow``. Out of scope, raising
``NotImplementedError`` that names the quantbridge function doing the job where there is
one: the diffusion-model, safetensors-to-parquet, async, Markov/thermodynamic and
monitoring APIs.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from . import _native
from ._api import _spec
from ._native import BatchQuantizationError, BatchResult, QuantizationError, QuantizedTensor, ValidationError

__all__ = [
    "ArrowQuantV2",
    "BatchQuantizationError",
    "ConfigurationError",
    "MetadataError",
    "ModelNotFoundError",
    "QuantizationError",
    "ShapeMismatchError",
    "ValidationError",
]


# The original module's exception names, so that ``except arrow_quant_v2.X`` still
# compiles and catches what it meant: a bad argument is a ``ValidationError`` (also a
# ``ValueError``), as the original's configuration errors were ``ValueError``s.
ConfigurationError = ValidationError
ShapeMismatchError = ValidationError


class ModelNotFoundError(QuantizationError):
    """The original's, for its model-folder APIs (outside the scope here: never raised)."""


class MetadataError(QuantizationError):
    """The original's, for its model-folder APIs (outside the scope here: never raised)."""

_MODES = ("diffusion", "time_aware", "base")
_BIT_WIDTHS = (2, 4, 8)


def _invalid(message: str, *, found: str, expected: str, fix: str, layer: str | None = None) -> ValidationError:
    """A ``ValidationError`` (a ``ValueError``) whose message starts with the original's
    words and carries quantbridge's ``found`` / ``expected`` / ``fix``."""
    err = ValidationError(f"{message} (found {found}; expected {expected}). Fix: {fix}")
    err.layer, err.found, err.expected, err.fix = layer or "", found, expected, fix
    return err


def _bit_width(bit_width: Any) -> int:
    """``None`` means 4, as in the original; anything but 2, 4 or 8 is its ValueError."""
    if bit_width is None:
        return 4
    if isinstance(bit_width, int) and not isinstance(bit_width, bool) and bit_width in _BIT_WIDTHS:
        return bit_width
    raise _invalid(
        f"Invalid bit_width: {bit_width!r}. Must be 2, 4, or 8",
        found=f"bit_width={bit_width!r}",
        expected="2, 4 or 8",
        fix="pass bit_width=8, bit_width=4 (the default) or bit_width=2",
    )


def _flag(value: Any, name: str) -> bool:
    """``Optional[bool]`` as the original's signature declares it: ``None`` is False."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise TypeError(f"{name} must be True, False or None, not {type(value).__name__}")


def _spec_for(bits: int) -> tuple[Any, ...]:
    """The original's arithmetic shape: the whole layer as one group, asymmetric, one
    code per byte, float32 scales."""
    return _spec(bits, None, False, "tensor", "float32", pack=False)


def _floats(values: _native.NativeTensor | None) -> list[float]:
    """float32 scales as Python floats (exact)."""
    return [] if values is None else array.array("f", values.tobytes()).tolist()


def _zero_points(q: QuantizedTensor) -> list[float]:
    """One zero point per scale, as floats (the original's type)."""
    if q.zero_points is None:
        return [0.0] * (q.scales.nbytes // 4 if q.scales is not None else 0)
    return [float(z) for z in q.zero_points.tobytes()]


def _layer_dict(q: QuantizedTensor) -> dict[str, Any]:
    """A layer as the original's batch methods return it. ``quantized_data`` is a
    read-only ``memoryview`` over the engine's codes (bytes-like; ``bytes(...)`` copies)."""
    return {
        "quantized_data": memoryview(q.codes),
        "scales": _floats(q.scales),
        "zero_points": _zero_points(q),
        "shape": list(q.shape),
        "bit_width": q.bits,
    }


def _layer_dicts(results: BatchResult) -> dict[str, dict[str, Any]]:
    """The batch as ``{name: layer dict}``; still a ``BatchResult`` (a dict) with ``.failures``."""
    out: Any = BatchResult()
    out.update((name, _layer_dict(q)) for name, q in results.items())
    out.failures = results.failures
    return out


class _LayerProgress:
    """The original's progress callback: ``callback(layer_name, layers_done / layers)``
    after each layer, from the calling thread; an exception it raises is printed and
    ignored, as the original does."""

    def __init__(self, callback: Callable[[str, float], object], layers: int) -> None:
        self._callback, self._layers, self._done = callback, layers, 0

    def __call__(self, name: str, _share_of_elements: float) -> None:
        self._done += 1
        try:
            self._callback(name, self._done / self._layers)
        except Exception as e:  # the original's documented behaviour
            print(f"Progress callback error (ignored): {e}", file=sys.stderr)


def _out_of_scope(what: str, instead: str | None) -> NoReturn:
    hint = f" Use {instead} instead." if instead else ""
    raise NotImplementedError(f"ArrowQuantV2.{what} is outside quantbridge's compatibility scope (docs/compat.md).{hint}")


class ArrowQuantV2:
    """ArrowQuantV2(mode="diffusion")

    The original's quantizer. ``mode`` is checked as the original checks it ("diffusion",
    "time_aware" or "base"); it selects nothing here, since the original's methods in
    scope quantize every layer the same way in every mode.
    """

    def __init__(self, mode: str = "diffusion") -> None:
        if mode not in _MODES:
            raise _invalid(
                "Invalid mode. Must be 'diffusion', 'time_aware', or 'base'",
                found=f"mode={mode!r}",
                expected="'diffusion', 'time_aware' or 'base'",
                fix="pass mode='diffusion' (the default)",
            )
        self.mode = "diffusion" if mode == "time_aware" else mode

    def __repr__(self) -> str:
        return f"ArrowQuantV2(mode={self.mode!r})"

    # -- dicts of tensors ----------------------------------------------------------------

    def quantize(self, weights: Mapping[str, Any], bit_width: int | None = None) -> dict[str, dict[str, Any]]:
        """The legacy dict API: ``{name: values}`` (lists of floats, or any tensor) to
        ``{name: {"quantized_data", "scales", "zero_points", "shape", "bit_width"}}``.

        The original returned ``None`` per layer (a placeholder); this returns the real
        results. Lists are copied once (a ``PerformanceWarning`` says so).
        """
        bits = _bit_width(bit_width)
        results = _native.quantize_batch(weights, _spec_for(bits), api="ArrowQuantV2.quantize")
        return _layer_dicts(results)

    def quantize_batch(
        self, weights_dict: Mapping[str, Any], bit_width: int | None = None, continue_on_error: bool | None = None
    ) -> dict[str, dict[str, Any]]:
        """Every layer in one call, in parallel without the GIL; ``{name: layer dict}``.

        A failing layer raises ``BatchQuantizationError`` (a ``ValueError``) naming every
        failed layer, or with ``continue_on_error=True`` is left out, listed in the
        result's ``.failures`` and in a ``QuantizationWarning``.
        """
        bits = _bit_width(bit_width)
        keep_going = _flag(continue_on_error, "continue_on_error")
        results = _native.quantize_batch(
            weights_dict, _spec_for(bits), continue_on_error=keep_going, api="ArrowQuantV2.quantize_batch"
        )
        return _layer_dicts(results)

    def quantize_batch_with_progress(
        self,
        weights_dict: Mapping[str, Any],
        bit_width: int | None = None,
        progress_callback: Callable[[str, float], object] | None = None,
        continue_on_error: bool | None = None,
    ) -> dict[str, dict[str, Any]]:
        """:meth:`quantize_batch`, calling ``progress_callback(layer_name, fraction)`` as
        layers finish (fraction = layers done / layers, ending at 1.0)."""
        bits = _bit_width(bit_width)
        keep_going = _flag(continue_on_error, "continue_on_error")
        if progress_callback is not None and not callable(progress_callback):
            raise TypeError(f"progress_callback must be callable or None, not {type(progress_callback).__name__}")
        progress = _LayerProgress(progress_callback, len(weights_dict)) if progress_callback is not None else None
        results = _native.quantize_batch(
            weights_dict,
            _spec_for(bits),
            continue_on_error=keep_going,
            progress=progress,
            api="ArrowQuantV2.quantize_batch_with_progress",
        )
        return _layer_dicts(results)

    # -- one array -----------------------------------------------------------------------

    def quantize_numpy(self, weights: Any, layer_name: str | None = None, bit_width: int | None = None) -> dict[str, Any]:
        """One array (numpy, or any tensor), read in place: ``quantized_data`` (uint8, one
        code per element, flat), ``scales`` and ``zero_points`` (float32) as read-only
        numpy arrays over quantbridge's memory, ``shape`` (tuple), ``bit_width``,
        ``layer_name``."""
        bits = _bit_width(bit_width)
        name = "tensor" if layer_name is None else layer_name
        q = _native.quantize(weights, _spec_for(bits), name, api="ArrowQuantV2.quantize_numpy")
        return _numpy_dict(q, name)

    def quantize_numpy_2d(self, weights: Any, layer_name: str | None = None, bit_width: int | None = None) -> dict[str, Any]:
        """:meth:`quantize_numpy` for a 2-D weight matrix; any other rank is a ValueError."""
        bits = _bit_width(bit_width)
        name = "tensor" if layer_name is None else layer_name
        ndim = len(getattr(weights, "shape", ()))
        if ndim != 2:
            raise _invalid(
                f"quantize_numpy_2d takes a 2-D array, got {ndim}-D",
                found=f"a {ndim}-D input",
                expected="a 2-D array",
                fix="reshape it, e.g. w.reshape(w.shape[0], -1), or use quantize_numpy()",
                layer=name,
            )
        q = _native.quantize(weights, _spec_for(bits), name, api="ArrowQuantV2.quantize_numpy_2d")
        return _numpy_dict(q, name)

    # -- Arrow ---------------------------------------------------------------------------

    def quantize_arrow(self, weights_table: Any, bit_width: int | None = None) -> Any:
        """A table with ``layer_name`` (string), ``weights`` (list<float32>) and optional
        ``shape`` (list<int64>) to a ``pyarrow.Table`` with the original's schema:
        ``layer_name``, ``quantized_data`` (binary), ``scales``, ``zero_points``
        (list<float32>), ``shape`` (list<int64>), ``bit_width`` (uint8)."""
        import pyarrow as pa  # type: ignore[import-untyped]

        bits = _bit_width(bit_width)
        out = _native.quantize_arrow(weights_table, _spec_for(bits), api="ArrowQuantV2.quantize_arrow", layout="arrow_quant_v2")
        return pa.table(out)

    def quantize_arrow_batch(self, record_batch: Any, bit_width: int | None = None) -> Any:
        """:meth:`quantize_arrow` for one record batch; a ``pyarrow.RecordBatch``."""
        import pyarrow as pa  # type: ignore[import-untyped]

        bits = _bit_width(bit_width)
        out = _native.quantize_arrow_batch(
            record_batch, _spec_for(bits), api="ArrowQuantV2.quantize_arrow_batch", layout="arrow_quant_v2"
        )
        return pa.record_batch(out)

    def quantize_batch_arrow(self, weights_table: Any, bit_width: int | None = None, continue_on_error: bool | None = None) -> Any:
        """:meth:`quantize_arrow` returning a ``pyarrow.RecordBatch``; with
        ``continue_on_error=True`` failed rows are left out and named in a
        ``QuantizationWarning``."""
        import warnings

        import pyarrow as pa  # type: ignore[import-untyped]

        bits = _bit_width(bit_width)
        keep_going = _flag(continue_on_error, "continue_on_error")
        out = _native.quantize_arrow(
            weights_table,
            _spec_for(bits),
            api="ArrowQuantV2.quantize_batch_arrow",
            continue_on_error=keep_going,
            layout="arrow_quant_v2",
        )
        if out.failures:
            lines = "".join(f"\n  {name}: {reason}" for name, reason in out.failures.items())
            warnings.warn(
                f"Quantization failed for {len(out.failures)} layer(s), left out:{lines}",
                _native.QuantizationWarning,
                stacklevel=2,
            )
        return pa.record_batch(out)

    # -- outside the compatibility scope -------------------------------------------------

    def quantize_diffusion_model(self, model_path: Any, output_path: Any, *args: Any, **kwargs: Any) -> NoReturn:
        _out_of_scope("quantize_diffusion_model", "quantbridge.quantize_file(model_path, output_path, ...) for a safetensors model folder")

    def quantize_diffusion_model_arrow(self, model_path: Any, output_path: Any, *args: Any, **kwargs: Any) -> NoReturn:
        _out_of_scope("quantize_diffusion_model_arrow", "quantbridge.quantize_file(model_path, 'out.arrow', ...)")

    def quantize_from_safetensors(self, safetensors_path: Any, output_path: Any, *args: Any, **kwargs: Any) -> NoReturn:
        _out_of_scope("quantize_from_safetensors", "quantbridge.quantize_file(safetensors_path, output_path)")

    def validate_quality(self, *args: Any, **kwargs: Any) -> NoReturn:
        _out_of_scope("validate_quality", "quantbridge.quantize(x, stats=True).stats, or the report of quantbridge.quantize_file")

    def quantize_layer_auto(self, *args: Any, **kwargs: Any) -> NoReturn:
        _out_of_scope("quantize_layer_auto", "quantbridge.quantize")

    def get_markov_metrics(self, *args: Any, **kwargs: Any) -> NoReturn:
        _out_of_scope("get_markov_metrics", None)


def _numpy_dict(q: QuantizedTensor, name: str) -> dict[str, Any]:
    import numpy as np

    assert q.scales is not None, "the SPEC arithmetic always has scales"
    zero_points = _zero_points(q)
    return {
        "quantized_data": np.from_dlpack(q.codes).reshape(-1),
        "scales": np.from_dlpack(q.scales).reshape(-1),
        "zero_points": np.asarray(zero_points, dtype=np.float32),
        "shape": tuple(q.shape),
        "bit_width": q.bits,
        "layer_name": name,
    }


# The original module's other names, outside the compatibility scope: importing one says
# so, and what to use instead, rather than a bare AttributeError.
_OUT_OF_SCOPE = {
    "AsyncArrowQuantV2": None,
    "DiffusionQuantConfig": "the spec keywords of quantbridge.quantize_file (bits=, group_size=, symmetric=)",
    "quantize_diffusion_model": "quantbridge.quantize_file",
    "load_sharded_safetensors": "quantbridge.quantize_file on the folder or its model.safetensors.index.json",
    "PyShardedSafeTensorsLoader": "quantbridge.quantize_file on the folder or its model.safetensors.index.json",
}


def __getattr__(name: str) -> Any:
    if name in _OUT_OF_SCOPE:
        instead = _OUT_OF_SCOPE[name]
        hint = f" Use {instead} instead." if instead else ""
        raise NotImplementedError(f"arrow_quant_v2.{name} is outside quantbridge's compatibility scope (docs/compat.md).{hint}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
