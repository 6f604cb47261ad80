"""docs/api.md, §5, §8 from Python with numpy, torch, pyarrow and polars inputs: every API
bit-identical, Arrow in and out without copies, batches that name every failure, the
legacy path's copy announced, metrics that add up."""

import gc
import warnings

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import quantbridge as qb
from fake_arrow import CountedArray

SPECS = st.fixed_dictionaries({
    "bits": st.sampled_from([2, 4, 8]),
    "group_size": st.one_of(st.none(), st.integers(1, 64)),
    "symmetric": st.booleans(),
})


def parts(q):
    return q.codes.tobytes(), q.scales.tobytes(), None if q.zero_points is None else q.zero_points.tobytes()


@given(n=st.integers(1, 3000), offset=st.integers(0, 50), spec=SPECS, seed=st.integers(0, 2**16))
def test_every_producer_gives_the_same_result(n, offset, spec, seed):
    x = (np.random.default_rng(seed).standard_normal(n + offset).astype(np.float32) * 2)[offset:]
    expected = parts(qb.quantize(x, **spec))
    arrow = pa.array(x)
    sliced = pa.array(np.concatenate([np.zeros(offset, np.float32), x])).slice(offset)
    assert parts(qb.quantize(torch.from_numpy(x), **spec)) == expected
    assert parts(qb.quantize(arrow, **spec)) == expected
    assert parts(qb.quantize(CountedArray(sliced), **spec)) == expected  # Arrow path, offset != 0
    assert parts(qb.quantize(pa.chunked_array([arrow]), **spec)) == expected
    assert parts(qb.quantize(pl.Series(x), **spec)) == expected
    with pytest.warns(qb.PerformanceWarning, match="copied"):
        assert parts(qb.quantize(x.tolist(), **spec)) == expected


@given(rows=st.integers(1, 12), cols=st.integers(1, 90), spec=SPECS)
def test_table_and_batch_apis_match_quantize(rows, cols, spec):
    rng = np.random.default_rng(rows * 100 + cols)
    layers = {f"l{i}": rng.standard_normal((rows, cols)).astype(np.float32) for i in range(3)}
    table = pa.table({
        "layer_name": list(layers),
        "weights": pa.array([w.ravel() for w in layers.values()], pa.large_list(pa.float32())),
        "shape": pa.array([list(w.shape) for w in layers.values()], pa.list_(pa.int32())),
    })
    out = pa.table(qb.quantize_arrow(table, **spec))
    batch = qb.quantize_batch(layers, **spec)
    for row in out.to_pylist():
        q = qb.quantize(layers[row["layer_name"]], **spec)
        assert row["codes"] == q.codes.tobytes()
        assert np.array_equal(np.array(row["scales"], np.float32), np.from_dlpack(q.scales).ravel())
        assert row["shape"] == [rows, cols] and row["bits"] == spec["bits"] and row["symmetric"] == spec["symmetric"]
        assert parts(batch[row["layer_name"]]) == parts(q)
    assert pa.table(qb.quantize_arrow_batch(table.to_batches()[0], **spec)).equals(out)
    assert pa.table(qb.quantize_arrow(pl.from_arrow(table), **spec)).column("codes").equals(out.column("codes"))


def test_nanoarrow_and_arro3_in_and_out():
    import arro3.core as ac
    import nanoarrow as na

    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    expected = parts(qb.quantize(x))
    assert parts(qb.quantize(na.c_array(x, na.float32()))) == expected
    assert parts(qb.quantize(ac.Array.from_numpy(x))) == expected
    table = pa.table({"layer_name": ["a"], "weights": [x]})
    out = qb.quantize_arrow(ac.Table.from_arrow(table))
    assert ac.Table.from_arrow(out).num_rows == 1
    assert pa.table(out).column("codes")[0].as_py() == expected[0]
    assert na.Array(qb.quantize(x).codes).to_pylist() == list(expected[0])


def test_arrow_output_is_shared_not_copied():
    x = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    q = qb.quantize(x)
    codes = pa.array(q.codes)
    assert codes.buffers()[1].address == np.from_dlpack(q.codes).ctypes.data
    row = pa.array(q)
    assert row.type.field("codes").type == pa.large_binary()
    assert row[0]["codes"].as_py() == q.codes.tobytes()
    assert pa.array(qb.quantize(x, scale_dtype="bfloat16").scales).type == pa.uint16()
    out = pa.table(qb.quantize_arrow(pa.table({"layer_name": ["w"], "weights": [x.ravel()]})))
    assert out.schema.metadata[b"quantbridge.spec"].startswith(b"{\"bits\": 4")


def test_quantized_table_reads_into_polars():
    t = pa.table({"layer_name": ["a", "b"], "weights": [[1.0, -2.0, 3.0], [0.5, 0.25]]})
    df = pl.DataFrame(pa.table(qb.quantize_arrow(t, symmetric=True)))
    assert df["layer_name"].to_list() == ["a", "b"]
    assert df["zero_points"].to_list() == [None, None]


def test_arrow_errors_name_the_row_and_release_once():
    with pytest.raises(qb.ValidationError, match="null in row 1"):
        qb.quantize(pa.array([1.0, None, 3.0], pa.float32()))
    t = pa.table({"layer_name": ["ok", "nulls", "ragged", None],
                  "weights": [[1.0, 2.0], [1.0, None], [1.0, 2.0, 3.0], [1.0]],
                  "shape": [[2], [2], [2, 2], [1]]})
    with pytest.raises(qb.BatchQuantizationError) as info:
        qb.quantize_arrow(t)
    assert set(info.value.failures) == {"nulls", "ragged", "row 3"}
    with pytest.raises(qb.ValidationError, match="weights"):
        qb.quantize_arrow(pa.table({"layer_name": ["a"], "weights": [["x"]]}))
    p = CountedArray(pa.array([1, 2, 3], pa.int64()))
    with pytest.raises(qb.ValidationError, match="Int64"):
        qb.quantize(p)
    gc.collect()
    assert p.released == 1


def test_batch_collects_every_failure_and_continues_on_request():
    layers = {"good": torch.randn(8, 32), "nan": np.array([np.nan], np.float32),
              "ints": np.arange(8), "text": "no tensor", "good2": pa.array(np.ones(16, np.float32))}
    with pytest.raises(qb.BatchQuantizationError) as info:
        qb.quantize_batch(layers)
    assert set(info.value.failures) == {"nan", "ints", "text"}
    assert all(name in str(info.value) for name in ("nan", "ints", "text"))
    with pytest.warns(qb.QuantizationWarning, match="3 layer"):
        result = qb.quantize_batch(layers, continue_on_error=True)
    assert isinstance(result, qb.BatchResult) and set(result) == {"good", "good2"}
    assert set(result.failures) == {"nan", "ints", "text"}


def test_progress_callback_sees_every_layer_and_ends_at_one():
    seen = []
    layers = {f"w{i}": np.ones((4, 64 * (i + 1)), np.float32) for i in range(6)}
    qb.quantize_batch(layers, progress=lambda name, fraction: seen.append((name, fraction)))
    assert sorted(n for n, _ in seen) == sorted(layers)
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    qb.quantize_batch(layers, progress=True)  # a tqdm bar (tqdm is a test dependency)


def test_progress_callback_errors_propagate():
    def boom(name, fraction):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        qb.quantize_batch({"a": np.ones(8, np.float32), "b": np.ones(8, np.float32)}, progress=boom)


def test_buffer_protocol_and_byteswapped_inputs_are_copied_once():
    import array

    x = np.linspace(-1, 1, 300, dtype=np.float32)
    expected = parts(qb.quantize(x))
    qb.reset_metrics()
    with pytest.warns(qb.PerformanceWarning, match="buffer"):
        assert parts(qb.quantize(array.array("f", x.tolist()))) == expected
    with pytest.warns(qb.PerformanceWarning, match="byte-swapped"):
        assert parts(qb.quantize(x.astype(">f4"))) == expected
    assert qb.metrics()["bytes_copied"] == 2 * x.nbytes
    with pytest.raises(qb.ValidationError, match="ragged"):
        qb.quantize([[1.0, 2.0], [3.0]])
    with pytest.raises(qb.ValidationError, match="uint8"):
        qb.quantize(b"\x00\x01")


def test_metrics_and_degradation_warning():
    qb.reset_metrics()
    x = np.ones((64, 64), np.float32)
    qb.quantize(x)
    qb.quantize_batch({"a": x, "b": torch.ones(8, 8)})
    m = qb.metrics()
    assert m["calls"] == {"quantize": 1, "quantize_batch": 1}
    assert m["tensors"] == 3 and m["bytes_copied"] == 0 and m["boundary_crossings"] == 2
    assert m["input_bytes"] == 2 * x.nbytes + 256
    old = qb.configure_metrics(degradation_fraction=0.5, min_bytes=1 << 20, min_samples=2)
    try:
        big = np.ones(1 << 20, np.float32)
        for _ in range(3):
            qb.quantize(big)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            qb.quantize(big.tolist())
        assert any("moving average" in str(w.message) for w in caught)
    finally:
        qb.configure_metrics(degradation_fraction=0.0)
    assert old["degradation_fraction"] == 0.5


def test_debug_log_record_per_call(caplog):
    with caplog.at_level("DEBUG", logger="quantbridge"):
        qb.quantize(np.ones(16, np.float32))
    [record] = [r for r in caplog.records if r.name == "quantbridge"]
    assert record.quantbridge["api"] == "quantize" and record.quantbridge["bytes_copied"] == 0


def test_the_benchmarks_read_pass_reads_every_byte_in_place():
    """`_native._read_pass` (the benchmarks' read limit) reads the producer's own bytes: its
    wrapping sum of 8-byte words and leftover bytes changes with any byte, and matches
    numpy's for an aligned float32 array and a bfloat16 tensor too short for one word."""
    x = np.random.default_rng(3).standard_normal(1000, dtype=np.float32)
    words = x.view(np.uint64)
    assert qb._native._read_pass(x) == int(words.sum(dtype=np.uint64))
    x[517] += 1.0
    assert qb._native._read_pass(x) == int(x.view(np.uint64).sum(dtype=np.uint64))
    short = torch.ones(3, dtype=torch.bfloat16)
    assert qb._native._read_pass(short) == 3 * (0x80 + 0x3F)
