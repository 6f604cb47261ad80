"""quantbridge: zero-copy int8/int4/int2 quantization of tensors from any framework.

Tensors come in through DLPack (``__dlpack__``: numpy, torch, jax, ...) or the Arrow
PyCapsule Interface (pyarrow, polars, ...) and are read in place, strided or not; results
go out the same way without a copy::

    import numpy as np, quantbridge as qb
    q = qb.quantize(np.random.randn(4096, 4096).astype(np.float32), bits=4, group_size=128)
    codes = np.from_dlpack(q.codes)          # uint8, packed two codes per byte
    restored = np.from_dlpack(q.dequantize())
"""

from ._native import (
    BatchQuantizationError,
    BatchResult,
    NativeTensor,
    PerformanceWarning,
    QuantizationError,
    QuantizationWarning,
    QuantizedTable,
    QuantizedTensor,
    ValidationError,
    __version__,
    configure_buffer_pool,
    configure_metrics,
    metrics,
    reset_metrics,
)
from ._api import dequantize, quantize, quantize_arrow, quantize_arrow_batch, quantize_batch
from ._files import dequantize_file, inspect_file, quantize_file
from . import compat, dask, ray

__all__ = [
    "BatchQuantizationError",
    "BatchResult",
    "NativeTensor",
    "PerformanceWarning",
    "QuantizationError",
    "QuantizationWarning",
    "QuantizedTable",
    "QuantizedTensor",
    "ValidationError",
    "compat",
    "dask",
    "ray",
    "__version__",
    "configure_buffer_pool",
    "configure_metrics",
    "dequantize",
    "dequantize_file",
    "inspect_file",
    "metrics",
    "quantize",
    "quantize_arrow",
    "quantize_arrow_batch",
    "quantize_batch",
    "quantize_file",
    "reset_metrics",
]
