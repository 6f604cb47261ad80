"""Dask: quantize an embedding column partition by partition (docs/distributed.md).

::

    import dask.dataframe as dd, quantbridge as qb
    df = dd.read_parquet("s3://bucket/embeddings/", dtype_backend="pyarrow")
    qb.dask.quantize_column(df, "embedding", bits=8).to_parquet("s3://bucket/embeddings-int8/")

With ``dtype_backend="pyarrow"`` the partitions' columns are Arrow arrays, handed to the
engine without a copy. Install Dask with ``pip install quantbridge[dask]``.
"""

from __future__ import annotations

from typing import Any

from ._datasets import Quantize

__all__ = ["Quantize", "quantize_column"]


def quantize_column(frame: Any, column: str = "embedding", **options: Any) -> Any:
    """``frame.map_partitions(Quantize(column, **options))``: a Dask DataFrame with the
    quantized table's columns, then ``frame``'s other columns (see :class:`Quantize`)."""
    quantize = Quantize(column, **options)
    # The result's schema, from the empty partition Dask keeps as `_meta`: Dask's own
    # guess runs the function on made-up rows, whose vectors are nulls.
    return frame.map_partitions(quantize, meta=quantize(frame._meta))
