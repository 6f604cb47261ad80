"""The public quantization functions: explicit signatures and documentation over the
compiled module, which reads the spec in one place (``src/python_api/spec_args.rs``).

The maths is in ``docs/math.md``, the result layouts in ``docs/formats.md``, and what
quantbridge trusts about a producer's memory in ``docs/trust-model.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

from . import _native
from ._native import BatchResult, NativeTensor, QuantizedTable, QuantizedTensor

__all__ = ["dequantize", "quantize", "quantize_arrow", "quantize_arrow_batch", "quantize_batch"]

_Granularity = Literal["group", "channel", "tensor"]
_ScaleDtype = Literal["float32", "float16", "bfloat16"]

_SPEC_DOC = """bits: 8, 4 (default) or 2.
    group_size: elements of a row (the last axis) that share one scale; the last group of
        a row may be shorter. ``None`` means one group per row.
    symmetric: no zero points, codes centred on 0 (default False: asymmetric with an
        integer zero point, the GPTQ convention).
    granularity: ``"group"`` (default, with ``group_size``), ``"channel"`` (one group
        per row) or ``"tensor"`` (one group for everything).
    scale_dtype: ``"float32"`` (default), ``"float16"`` or ``"bfloat16"``; narrower
        scales are rounded up so the group's range stays covered."""


_F = TypeVar("_F", bound=Callable[..., Any])


def _spec(
    bits: int, group_size: int | None, symmetric: bool, granularity: str, scale_dtype: str, pack: bool = True,
    stats: bool = False,
) -> tuple[Any, ...]:
    """The spec as the compiled module reads it (``spec_args::KEYWORDS`` order): one
    positional tuple is far cheaper per call than seven keywords."""
    return (bits, group_size, symmetric, granularity, scale_dtype, pack, stats)


def _documented(f: _F) -> _F:
    """Put the shared description of the spec keywords into ``f``'s docstring."""
    f.__doc__ = (f.__doc__ or "").replace("{SPEC}", _SPEC_DOC.replace("\n", "\n    "))
    return f


@_documented
def quantize(
    tensor: Any,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    granularity: _Granularity = "group",
    scale_dtype: _ScaleDtype = "float32",
    pack: bool = True,
    stats: bool = False,
    name: str | None = None,
    gguf_type: str | None = None,
) -> QuantizedTensor:
    """Quantize one tensor, reading it in place.

    Args:
        tensor: anything with ``__dlpack__`` (numpy, torch, jax), ``__arrow_c_array__``
            (a float array is 1-D, a ``fixed_size_list<float>[k]`` array is ``(len, k)``)
            or ``__arrow_c_stream__`` (exactly one non-empty chunk); also, copied once and
            announced with a ``PerformanceWarning``, a list of numbers or a buffer.
            float32, float16, bfloat16 or float64; any shape with at least one dimension;
            any strides (transposed and sliced views are read where they lie).
        {SPEC}
        pack: pack codes ``bits`` per code (default); False stores one code per byte.
        stats: also compute ``mse``, ``max_abs_error`` and ``sqnr_db`` (``q.stats``).
        name: the layer name used in error messages.
        gguf_type: a llama.cpp block type instead of the spec's arithmetic: ``"Q8_0"``,
            ``"Q4_0"``, ``"Q4_1"``, ``"Q5_0"``, ``"Q5_1"``, ``"Q4_K"``, ``"Q5_K"`` or
            ``"Q6_K"`` (docs/gguf.md). ``codes`` are then the GGUF block bytes, row after
            row, exactly as a GGUF file stores them; ``scales`` and ``zero_points`` are
            ``None``; ``dequantize()`` equals gguf-py's. Rows must be whole blocks (32
            values, 256 for the K types). ``bits``, ``group_size``, ``symmetric``,
            ``granularity``, ``scale_dtype`` and ``pack`` do not apply.

    Returns:
        QuantizedTensor: ``codes``, ``scales`` and ``zero_points`` as read-only tensors
        that ``numpy.from_dlpack`` / ``torch.from_dlpack`` / ``pyarrow.array`` take
        without a copy.

    Raises:
        ValidationError: bad input (dtype, device, NaN/Inf with its flat index, a corrupt
            producer) or a bad keyword value; it carries ``layer``, ``found``,
            ``expected`` and ``fix``.
        QuantizationError: an internal failure (never the caller's input).
    """
    spec = _spec(bits, group_size, symmetric, granularity, scale_dtype, pack, stats)
    if gguf_type is None:
        return _native.quantize(tensor, spec, name)
    return _native.quantize(tensor, spec, name, None, gguf_type)


def dequantize(q: QuantizedTensor) -> NativeTensor:
    """``(q - zero_point) * scale`` for every element, in float32.

    Args:
        q: a result of :func:`quantize` or :func:`quantize_batch`.

    Returns:
        NativeTensor: float32 values of the source shape (``numpy.from_dlpack`` takes it).

    Raises:
        TypeError: ``q`` is not a QuantizedTensor.
    """
    return _native.dequantize(q)


@_documented
def quantize_batch(
    mapping: Mapping[str, Any],
    *,
    continue_on_error: bool = False,
    progress: bool | Callable[[str, float], object] | None = None,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    granularity: _Granularity = "group",
    scale_dtype: _ScaleDtype = "float32",
    pack: bool = True,
    stats: bool = False,
) -> BatchResult:
    """Quantize many layers in one call: one crossing into Rust, layers in parallel with
    the GIL released.

    Args:
        mapping: layer name to tensor (a dict, ``model.state_dict()``); each value as for
            :func:`quantize`.
        continue_on_error: return the layers that worked, with the failures in
            ``result.failures`` and a ``QuantizationWarning``, instead of raising.
        progress: ``True`` for a tqdm bar (plain lines without tqdm), or a callable
            ``(name, fraction_done)`` called from the calling thread after each layer.
        {SPEC}
        pack: pack codes ``bits`` per code (default).
        stats: also compute error statistics per layer.

    Returns:
        BatchResult: a dict of layer name to QuantizedTensor, in the mapping's order, with
        ``.failures`` (``{name: reason}``).

    Raises:
        BatchQuantizationError: one or more layers failed (and ``continue_on_error`` is
            False); its message and ``.failures`` name every failed layer.
        ValidationError: a bad keyword value.
        TypeError: ``mapping`` is not a mapping, or ``progress`` is not callable.
    """
    spec = _spec(bits, group_size, symmetric, granularity, scale_dtype, pack, stats)
    return _native.quantize_batch(mapping, spec, continue_on_error, progress)


@_documented
def quantize_arrow(
    table_like: Any,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    granularity: _Granularity = "group",
    scale_dtype: _ScaleDtype = "float32",
) -> QuantizedTable:
    """Quantize every row of an Arrow table of layers, reading the weights in place.

    Args:
        table_like: anything with ``__arrow_c_stream__`` or ``__arrow_c_array__``
            (pyarrow Table / RecordBatch / RecordBatchReader, polars DataFrame) with
            columns ``layer_name`` (utf8), ``weights`` (list / large_list /
            fixed_size_list of float16, float32 or float64) and optionally ``shape``
            (list of int32 or int64; default ``[len]``).
        {SPEC}

    Returns:
        QuantizedTable: columns ``layer_name``, ``codes`` (large_binary), ``scales``,
        ``zero_points``, ``shape``, ``bits``, ``group_size``, ``symmetric``; take it with
        ``pyarrow.table(result)`` or ``polars.from_arrow(result)`` (no copy).

    Raises:
        ValidationError: a missing or mistyped column, or a bad keyword value.
        BatchQuantizationError: rows that failed (nulls, bad shapes, NaN), all named.
    """
    return _native.quantize_arrow(table_like, _spec(bits, group_size, symmetric, granularity, scale_dtype))


@_documented
def quantize_arrow_batch(
    record_batch_like: Any,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    granularity: _Granularity = "group",
    scale_dtype: _ScaleDtype = "float32",
) -> QuantizedTable:
    """:func:`quantize_arrow` for one record batch (``__arrow_c_array__`` preferred).

    Args:
        record_batch_like: a record batch with the columns :func:`quantize_arrow` takes.
        {SPEC}

    Returns:
        QuantizedTable: as :func:`quantize_arrow`.

    Raises:
        ValidationError: a missing or mistyped column, or a bad keyword value.
        BatchQuantizationError: rows that failed, all named.
    """
    return _native.quantize_arrow_batch(record_batch_like, _spec(bits, group_size, symmetric, granularity, scale_dtype))
