"""Type stub for the compiled module quantbridge._native."""

from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

__version__: str

class _DLPackProducer(Protocol):
    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...

class QuantizationError(Exception): ...
class ValidationError(QuantizationError, ValueError):
    layer: str
    found: str
    expected: str
    fix: str
    index: int  # only for non-finite values
class BatchQuantizationError(QuantizationError):
    failures: dict[str, str]
class PerformanceWarning(UserWarning): ...
class QuantizationWarning(UserWarning): ...

class BatchResult(dict[str, QuantizedTensor]):
    failures: dict[str, str]

class QuantizedTable:
    """The §5 output table; take it with pyarrow.table() or polars.from_arrow()."""
    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any: ...
    def __arrow_c_array__(self, requested_schema: Any = None) -> tuple[Any, Any]: ...
    @property
    def num_rows(self) -> int: ...
    @property
    def column_names(self) -> list[str]: ...
    def __len__(self) -> int: ...

class NativeTensor:
    """A read-only, row-major tensor owned by quantbridge, exported through DLPack."""
    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...
    def __arrow_c_array__(self, requested_schema: Any = None) -> tuple[Any, Any]: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> Literal["uint8", "int8", "float32", "float16", "bfloat16"]: ...
    @property
    def ndim(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def tobytes(self) -> bytes: ...
    def __len__(self) -> int: ...

class QuantizedTensor:
    """An immutable quantization result (SPEC §3)."""
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def bits(self) -> int: ...
    @property
    def group_size(self) -> int | None: ...
    @property
    def granularity(self) -> Literal["group", "channel", "tensor"]: ...
    @property
    def symmetric(self) -> bool: ...
    @property
    def packed(self) -> bool: ...
    @property
    def scale_dtype(self) -> Literal["float32", "float16", "bfloat16"]: ...
    @property
    def codes(self) -> NativeTensor: ...
    @property
    def scales(self) -> NativeTensor: ...
    @property
    def zero_points(self) -> NativeTensor | None: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def compression_ratio(self) -> float: ...
    @property
    def stats(self) -> dict[str, float] | None: ...
    @property
    def name(self) -> str | None: ...
    def __arrow_c_array__(self, requested_schema: Any = None) -> tuple[Any, Any]: ...
    def dequantize(self) -> NativeTensor: ...

def quantize(
    tensor: Any,
    *,
    bits: Literal[2, 4, 8] = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    granularity: Literal["group", "channel", "tensor"] = "group",
    scale_dtype: Literal["float32", "float16", "bfloat16"] = "float32",
    pack: bool = True,
    stats: bool = False,
    name: str | None = None,
    _api: str | None = None,
) -> QuantizedTensor: ...
def dequantize(q: QuantizedTensor) -> NativeTensor: ...
def quantize_batch(
    mapping: Mapping[str, Any],
    *,
    continue_on_error: bool = False,
    progress: Callable[[str, float], object] | bool | None = None,
    bits: Literal[2, 4, 8] = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    granularity: Literal["group", "channel", "tensor"] = "group",
    scale_dtype: Literal["float32", "float16", "bfloat16"] = "float32",
    pack: bool = True,
    stats: bool = False,
    _api: str | None = None,
) -> BatchResult: ...
def quantize_arrow(
    table_like: Any,
    *,
    bits: Literal[2, 4, 8] = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    granularity: Literal["group", "channel", "tensor"] = "group",
    scale_dtype: Literal["float32", "float16", "bfloat16"] = "float32",
    _api: str | None = None,
) -> QuantizedTable: ...
def quantize_arrow_batch(
    record_batch_like: Any,
    *,
    bits: Literal[2, 4, 8] = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    granularity: Literal["group", "channel", "tensor"] = "group",
    scale_dtype: Literal["float32", "float16", "bfloat16"] = "float32",
    _api: str | None = None,
) -> QuantizedTable: ...
def quantize_file(
    input: Any,
    output: Any,
    *,
    bits: Literal[2, 4, 8] = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    granularity: Literal["group", "channel", "tensor"] = "group",
    scale_dtype: Literal["float32", "float16", "bfloat16"] = "float32",
    force: bool = False,
    select: Callable[[str], bool] | None = None,
    progress: Callable[[dict[str, Any], int, int], object] | None = None,
) -> list[dict[str, Any]]: ...
def dequantize_file(
    input: Any, output: Any, *, force: bool = False,
    progress: Callable[[dict[str, Any], int, int], object] | None = None,
) -> list[dict[str, Any]]: ...
def inspect_file(path: Any) -> dict[str, Any]: ...
def metrics() -> dict[str, Any]: ...
def reset_metrics() -> None: ...
def configure_metrics(
    *, degradation_fraction: float | None = None, min_bytes: int | None = None, min_samples: int | None = None
) -> dict[str, float | int]: ...
def _live_exports() -> int: ...
def _borrow_info(obj: Any) -> tuple[str, int, int]: ...
def _panic_in_engine() -> None: ...
