"""Ray Data: quantize an embedding column batch by batch (docs/distributed.md).

::

    import ray, quantbridge as qb
    ds = ray.data.read_parquet("s3://bucket/embeddings/")
    ds.map_batches(qb.ray.Quantize(column="embedding", bits=8), batch_format="pyarrow",
                   zero_copy_batch=True).write_parquet("s3://bucket/embeddings-int8/")

``Quantize`` does not import Ray; install Ray with ``pip install quantbridge[ray]``.
"""

from ._datasets import Quantize

__all__ = ["Quantize"]
