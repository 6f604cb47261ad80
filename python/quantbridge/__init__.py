"""quantbridge: zero-copy int8/int4/int2 quantization of tensors from any framework.

Tensors come in through DLPack (``__dlpack__``: numpy, torch, jax, ...) and are read in
place, strided or not; results go out through DLPack without a copy::

    import numpy as np, quantbridge as qb
    q = qb.quantize(np.random.randn(4096, 4096).astype(np.float32), bits=4, group_size=128)
    codes = np.from_dlpack(q.codes)          # uint8, packed two codes per byte
    restored = np.from_dlpack(q.dequantize())
"""

from ._native import (
    BatchQuantizationError,
    NativeTensor,
    PerformanceWarning,
    QuantizationError,
    QuantizedTensor,
    ValidationError,
    __version__,
    dequantize,
    quantize,
)

__all__ = [
    "BatchQuantizationError",
    "NativeTensor",
    "PerformanceWarning",
    "QuantizationError",
    "QuantizedTensor",
    "ValidationError",
    "__version__",
    "dequantize",
    "quantize",
]
