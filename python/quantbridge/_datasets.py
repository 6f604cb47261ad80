"""Quantize a vector column of a dataset batch by batch: the callable behind
``qb.ray.Quantize`` and ``qb.dask.quantize_column`` (docs/distributed.md).

Each row's vector is quantized as one layer through :func:`quantbridge.quantize_arrow`,
read in place from the batch's Arrow buffers; rows are independent, so the batches'
results concatenated equal ``quantize_arrow`` over the whole table. Nothing here imports
Ray or Dask: a batch is a ``pyarrow.Table`` / ``RecordBatch``, or a pandas DataFrame of
Arrow-backed columns (what Dask reads with ``dtype_backend="pyarrow"``), converted
without a copy.
"""

from __future__ import annotations

from typing import Any

from ._api import _Granularity, _ScaleDtype, quantize_arrow
from ._errors import validation_error

__all__ = ["Quantize"]

# The columns quantize_arrow returns (docs/formats.md, Arrow tables).
RESULT_COLUMNS = ("layer_name", "codes", "scales", "zero_points", "shape", "bits", "group_size", "symmetric")


class Quantize:
    """A batch function that replaces the vector column ``column`` of each batch by the
    quantized table's columns (``layer_name``, ``codes``, ``scales``, ``zero_points``,
    ``shape``, ``bits``, ``group_size``, ``symmetric``), keeping the batch's other columns
    (ids, text) after them.

    Args:
        column: the vectors: ``fixed_size_list`` / ``list`` / ``large_list`` of float16,
            float32 or float64.
        name_column: the column whose values (as strings) become ``layer_name``; default:
            every row is named ``column``.
        bits, group_size, symmetric, granularity, scale_dtype: the spec, as in
            :func:`quantbridge.quantize_arrow` (``group_size`` splits each vector).
    """

    def __init__(
        self,
        column: str = "embedding",
        *,
        bits: int = 8,
        group_size: int | None = 128,
        symmetric: bool = False,
        granularity: _Granularity = "group",
        scale_dtype: _ScaleDtype = "float32",
        name_column: str | None = None,
    ) -> None:
        self.column = column
        self.name_column = name_column
        self.spec: dict[str, Any] = {"bits": bits, "group_size": group_size, "symmetric": symmetric,
                                     "granularity": granularity, "scale_dtype": scale_dtype}

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa  # type: ignore[import-untyped]

        pandas = type(batch).__module__.startswith("pandas")
        if pandas:  # Arrow-backed columns convert without a copy
            table = pa.Table.from_pandas(batch, preserve_index=False)
        else:
            table = batch if isinstance(batch, pa.Table) else pa.table(batch)
        for name, option in ((self.column, "column"), (self.name_column, "name_column")):
            if name is not None and name not in table.column_names:
                raise validation_error(option, f"{name!r}, which the batch does not have ({table.column_names})",
                                       "a column of the dataset", f"pass {option}= one of {table.column_names}")
        if self.name_column is None:
            names = pa.array([self.column] * table.num_rows, pa.string())
        else:
            names = table.column(self.name_column).cast(pa.string())
        layers = pa.table({"layer_name": names, "weights": table.column(self.column)})
        result = pa.table(quantize_arrow(layers, **self.spec))
        for name in table.column_names:
            if name != self.column and name not in RESULT_COLUMNS:
                result = result.append_column(table.schema.field(name), table.column(name))
        if pandas:
            import pandas as pd  # type: ignore[import-untyped]

            return result.to_pandas(types_mapper=pd.ArrowDtype).set_axis(batch.index)
        return result

    def __repr__(self) -> str:
        spec = ", ".join(f"{k}={v!r}" for k, v in self.spec.items())
        return f"Quantize(column={self.column!r}, name_column={self.name_column!r}, {spec})"
