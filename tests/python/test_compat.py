"""`arrow_quant_v2.ArrowQuantV2` (docs/compat.md), tested from the original system's
documented behaviour (its `src/python.rs` docstrings, `docs/API_REFERENCE.md` and the
behaviour its own tests describe), as a user of the original would call it: only the
import is quantbridge's.

Every result must also be bit-identical to `qb.quantize(x, bits=b, granularity="tensor",
pack=False)`: the compat class is a shape around the same engine, not a second one."""

import ctypes
import inspect
import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch

import quantbridge as qb
from arrow_quant_v2 import ArrowQuantV2


def reference(x, bits=4):
    """What the compat class must return for `x`: the engine's per-tensor, unpacked result."""
    q = qb.quantize(x, bits=bits, granularity="tensor", pack=False)
    zp = [float(z) for z in q.zero_points.tobytes()]
    return q.codes.tobytes(), np.from_dlpack(q.scales).ravel().tolist(), zp


def weights(n=3, shape=(64, 48), seed=0):
    rng = np.random.default_rng(seed)
    return {f"layer.{i}.weight": rng.standard_normal(shape).astype(np.float32) for i in range(n)}


def table(layers, with_shape=True):
    columns = {
        "layer_name": list(layers),
        "weights": pa.array([w.ravel() for w in layers.values()], pa.list_(pa.float32())),
    }
    if with_shape:
        columns["shape"] = pa.array([list(w.shape) for w in layers.values()], pa.list_(pa.int64()))
    return pa.table(columns)


ORIGINAL_SCHEMA = pa.schema([
    pa.field("layer_name", pa.string(), nullable=False),
    pa.field("quantized_data", pa.binary(), nullable=False),
    pa.field("scales", pa.list_(pa.float32()), nullable=False),
    pa.field("zero_points", pa.list_(pa.float32()), nullable=False),
    pa.field("shape", pa.list_(pa.int64()), nullable=False),
    pa.field("bit_width", pa.uint8(), nullable=False),
])


# -- the module and the constructor --------------------------------------------------------


def test_the_original_module_name_is_quantbridge_compat():
    import arrow_quant_v2

    assert arrow_quant_v2.ArrowQuantV2 is qb.compat.ArrowQuantV2
    assert issubclass(arrow_quant_v2.ValidationError, ValueError)
    assert issubclass(arrow_quant_v2.QuantizationError, Exception)
    assert not hasattr(qb, "Quantizer"), "one compatibility class, not two"


@pytest.mark.parametrize("mode", ["diffusion", "time_aware", "base"])
def test_the_original_modes_are_accepted(mode):
    assert ArrowQuantV2(mode=mode).mode == ("diffusion" if mode == "time_aware" else mode)
    assert ArrowQuantV2().mode == "diffusion"


def test_an_unknown_mode_is_the_original_value_error():
    with pytest.raises(ValueError, match=r"Invalid mode\. Must be 'diffusion', 'time_aware', or 'base'"):
        ArrowQuantV2("fast")


ORIGINAL_SIGNATURES = {
    "quantize": "(weights, bit_width=None)",
    "quantize_numpy": "(weights, layer_name=None, bit_width=None)",
    "quantize_numpy_2d": "(weights, layer_name=None, bit_width=None)",
    "quantize_batch": "(weights_dict, bit_width=None, continue_on_error=None)",
    "quantize_batch_with_progress": "(weights_dict, bit_width=None, progress_callback=None, continue_on_error=None)",
    "quantize_arrow": "(weights_table, bit_width=None)",
    "quantize_arrow_batch": "(record_batch, bit_width=None)",
    "quantize_batch_arrow": "(weights_table, bit_width=None, continue_on_error=None)",
}


@pytest.mark.parametrize("method", sorted(ORIGINAL_SIGNATURES))
def test_signatures_are_the_originals(method):
    sig = inspect.signature(getattr(ArrowQuantV2(), method))
    plain = sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()],
                        return_annotation=inspect.Signature.empty)
    assert str(plain) == ORIGINAL_SIGNATURES[method]


# -- quantize_batch and the legacy dict API ------------------------------------------------


def test_quantize_batch_returns_the_originals_dicts_bit_identical_to_the_engine():
    w = weights()
    out = ArrowQuantV2().quantize_batch(w, 8)  # bit_width positional, as the original allows
    assert isinstance(out, dict) and list(out) == list(w)
    for name, x in w.items():
        r = out[name]
        assert set(r) == {"quantized_data", "scales", "zero_points", "shape", "bit_width"}
        assert r["bit_width"] == 8 and r["shape"] == [64, 48]
        assert isinstance(r["scales"], list) and all(isinstance(s, float) for s in r["scales"])
        assert isinstance(r["zero_points"], list) and all(isinstance(z, float) for z in r["zero_points"])
        assert len(r["quantized_data"]) == x.size  # one code per byte
        assert (bytes(r["quantized_data"]), r["scales"], r["zero_points"]) == reference(x, 8)


def test_quantized_data_is_a_bytes_like_view_not_a_copy():
    w = weights(1)
    qb.reset_metrics()
    data = ArrowQuantV2().quantize_batch(w, continue_on_error=None)["layer.0.weight"]["quantized_data"]
    assert qb.metrics()["bytes_copied"] == 0
    assert isinstance(data, memoryview) and data.readonly and data.format == "B"
    assert data == reference(w["layer.0.weight"])[0]  # compares equal to bytes
    assert np.frombuffer(data, np.uint8).size == w["layer.0.weight"].size
    with pytest.raises(TypeError):
        data[0] = 1


def test_default_bit_width_is_4_and_every_width_round_trips():
    x = weights(1)["layer.0.weight"]
    q = ArrowQuantV2()
    assert q.quantize_batch({"w": x})["w"]["bit_width"] == 4
    for bits in (2, 4, 8):
        r = q.quantize_batch({"w": x}, bit_width=bits)["w"]
        codes = np.frombuffer(r["quantized_data"], np.uint8).astype(np.float32).reshape(x.shape)
        restored = (codes - r["zero_points"][0]) * r["scales"][0]
        assert codes.max() < 2**bits
        assert np.abs(restored - x).max() <= r["scales"][0] / 2 * 1.0001


def test_an_empty_dict_gives_an_empty_result():
    assert ArrowQuantV2().quantize_batch({}) == {}
    assert ArrowQuantV2().quantize_batch({}, bit_width=4, continue_on_error=True) == {}


@pytest.mark.parametrize("method", ["quantize", "quantize_batch", "quantize_batch_with_progress", "quantize_numpy",
                                    "quantize_numpy_2d", "quantize_arrow", "quantize_arrow_batch", "quantize_batch_arrow"])
@pytest.mark.parametrize("bits", [3, 16, 0])
def test_invalid_bit_width_is_the_originals_value_error_everywhere(method, bits):
    x = np.ones((4, 8), np.float32)
    arg = {"quantize_numpy": x, "quantize_numpy_2d": x, "quantize_arrow": table({"w": x}),
           "quantize_arrow_batch": table({"w": x}).to_batches()[0], "quantize_batch_arrow": table({"w": x})}.get(method, {"w": x})
    with pytest.raises(ValueError, match=rf"Invalid bit_width: {bits}\. Must be 2, 4, or 8") as info:
        getattr(ArrowQuantV2(), method)(arg, bit_width=bits)
    assert "bit_width=" in info.value.fix and "bits=" not in info.value.fix.replace("bit_width=", "")


def test_fail_fast_names_every_failed_layer_in_a_value_error():
    w = weights(4)
    w["layer.1.weight"][3, 3] = np.nan
    w["layer.3.weight"][0, 0] = np.inf
    with pytest.raises(ValueError) as info:
        ArrowQuantV2().quantize_batch(w, bit_width=4)
    e = info.value
    assert isinstance(e, qb.BatchQuantizationError)
    assert set(e.failures) == {"layer.1.weight", "layer.3.weight"}
    assert "Quantization failed for 2 layer(s)" in str(e) and str(e).count("contains NaN or Inf") == 2
    assert "at index 147" in e.failures["layer.1.weight"]  # 3 * 48 + 3, row-major


def test_continue_on_error_leaves_failed_layers_out_and_says_which():
    w = weights(5)
    w["layer.1.weight"][0, 1] = np.nan
    w["layer.3.weight"] = "not a tensor"
    with pytest.warns(qb.QuantizationWarning, match="layer.1.weight"):
        out = ArrowQuantV2().quantize_batch(w, bit_width=4, continue_on_error=True)
    assert sorted(out) == ["layer.0.weight", "layer.2.weight", "layer.4.weight"]
    assert set(out.failures) == {"layer.1.weight", "layer.3.weight"}
    good = ArrowQuantV2().quantize_batch({k: w[k] for k in out}, bit_width=4)
    assert all(bytes(out[k]["quantized_data"]) == bytes(good[k]["quantized_data"]) for k in out)
    with pytest.warns(qb.QuantizationWarning):
        assert ArrowQuantV2().quantize_batch({"bad": np.full(4, np.nan, np.float32)}, continue_on_error=True) == {}


def test_continue_on_error_must_be_a_bool_or_none():
    with pytest.raises(TypeError, match="continue_on_error"):
        ArrowQuantV2().quantize_batch(weights(1), 4, "yes")


def test_the_legacy_dict_api_returns_real_results():
    x = weights(1)["layer.0.weight"]
    with pytest.warns(qb.PerformanceWarning):  # a list is copied once, and said so
        out = ArrowQuantV2().quantize({"list": x.tolist(), "tensor": torch.from_numpy(x)}, bit_width=2)
    for r in out.values():
        assert r["bit_width"] == 2 and r["shape"] == [64, 48]
        assert (bytes(r["quantized_data"]), r["scales"], r["zero_points"]) == reference(x, 2)


def test_inputs_the_original_refused_are_accepted_on_purpose():
    """docs/compat.md lists these: non-contiguous arrays, float64, torch tensors, lists."""
    x = weights(1, shape=(40, 60))["layer.0.weight"]
    q = ArrowQuantV2()
    strided = x[::2, ::3]
    assert bytes(q.quantize_batch({"w": strided})["w"]["quantized_data"]) == reference(np.ascontiguousarray(strided))[0]
    x64 = x.astype(np.float64)
    assert q.quantize_numpy(x64, "w")["quantized_data"].tobytes() == reference(x64)[0]
    assert bytes(q.quantize_batch({"t": torch.from_numpy(x)})["t"]["quantized_data"]) == reference(x)[0]


# -- progress ------------------------------------------------------------------------------


def test_progress_reports_each_layer_once_with_its_share_of_layers():
    w = weights(10, shape=(8, 8))
    calls = []
    out = ArrowQuantV2().quantize_batch_with_progress(w, 4, lambda name, f: calls.append((name, f)))
    assert len(out) == 10 and len(calls) == 10
    assert {name for name, _ in calls} == set(w)
    fractions = [f for _, f in calls]
    assert all(isinstance(f, float) for f in fractions)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] == 0.1
    same = ArrowQuantV2().quantize_batch(w, 4)
    assert all(bytes(out[k]["quantized_data"]) == bytes(same[k]["quantized_data"]) for k in w)


def test_progress_without_a_callback_and_on_an_empty_dict():
    assert len(ArrowQuantV2().quantize_batch_with_progress(weights(2))) == 2
    calls = []
    assert ArrowQuantV2().quantize_batch_with_progress({}, progress_callback=lambda n, f: calls.append(f)) == {}
    assert calls == []


def test_an_exception_in_the_progress_callback_is_printed_and_ignored(capsys):
    def broken(name, fraction):
        raise RuntimeError("display went away")

    out = ArrowQuantV2().quantize_batch_with_progress(weights(3), progress_callback=broken)
    assert len(out) == 3
    assert capsys.readouterr().err.count("Progress callback error (ignored): display went away") == 3


# -- one array -----------------------------------------------------------------------------


@pytest.mark.parametrize("method,x", [
    ("quantize_numpy", np.random.default_rng(2).standard_normal(1000).astype(np.float32)),
    ("quantize_numpy_2d", np.random.default_rng(3).standard_normal((128, 96)).astype(np.float32)),
])
def test_quantize_numpy_returns_numpy_arrays_and_the_layer_name(method, x):
    before = x.copy()
    r = getattr(ArrowQuantV2(), method)(x, "layer.0")
    assert set(r) == {"quantized_data", "scales", "zero_points", "shape", "bit_width", "layer_name"}
    assert r["quantized_data"].dtype == np.uint8 and r["quantized_data"].shape == (x.size,)
    assert r["scales"].dtype == np.float32 and r["zero_points"].dtype == np.float32
    assert r["shape"] == x.shape and r["bit_width"] == 4 and r["layer_name"] == "layer.0"
    codes, scales, zps = reference(x)
    assert r["quantized_data"].tobytes() == codes and r["scales"].tolist() == scales and r["zero_points"].tolist() == zps
    np.testing.assert_array_equal(x, before)


def test_quantize_numpy_names_the_layer_in_its_errors():
    x = np.ones(100, np.float32)
    x[50] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf") as info:
        ArrowQuantV2().quantize_numpy(x, "encoder.fc", bit_width=4)
    assert info.value.layer == "encoder.fc" and info.value.index == 50


@pytest.mark.parametrize("shape", [(100,), (10, 20, 30)])
def test_quantize_numpy_2d_refuses_other_ranks(shape):
    with pytest.raises(ValueError, match="2-D"):
        ArrowQuantV2().quantize_numpy_2d(np.ones(shape, np.float32), "w")


def test_quantize_numpy_2d_reads_fortran_order_in_place():
    x = np.asfortranarray(np.random.default_rng(4).standard_normal((10, 20)).astype(np.float32))
    qb.reset_metrics()
    r = ArrowQuantV2().quantize_numpy_2d(x, "w")
    assert qb.metrics()["bytes_copied"] == 0
    assert r["shape"] == (10, 20) and r["quantized_data"].tobytes() == reference(np.ascontiguousarray(x))[0]


# -- Arrow ---------------------------------------------------------------------------------


def test_quantize_arrow_returns_a_pyarrow_table_with_the_original_schema():
    w = weights(3, shape=(16, 40))
    out = ArrowQuantV2().quantize_arrow(table(w), bit_width=4)
    assert isinstance(out, pa.Table) and out.schema.equals(ORIGINAL_SCHEMA)
    assert out.num_rows == 3 and out.num_columns == 6 and len(out.to_batches()) == 1
    assert out.column("layer_name").to_pylist() == list(w)
    for row in out.to_pylist():
        x = w[row["layer_name"]]
        assert (row["quantized_data"], row["scales"], row["zero_points"]) == reference(x)
        assert row["shape"] == [16, 40] and row["bit_width"] == 4


def test_quantize_arrow_batch_returns_a_record_batch_equal_to_the_table_result():
    t = table(weights(2))
    batch = ArrowQuantV2().quantize_arrow_batch(t.to_batches()[0], bit_width=8)
    assert isinstance(batch, pa.RecordBatch) and batch.schema.equals(ORIGINAL_SCHEMA)
    assert pa.Table.from_batches([batch]).equals(ArrowQuantV2().quantize_arrow(t, bit_width=8))
    assert batch.column("bit_width")[0].as_py() == 8


def test_without_a_shape_column_a_row_is_one_dimensional():
    out = ArrowQuantV2().quantize_arrow(table(weights(1, shape=(1000,)), with_shape=False))
    assert out.column("shape").to_pylist() == [[1000]]


def test_an_empty_table_gives_an_empty_result():
    empty = table(weights(1)).slice(0, 0)
    assert ArrowQuantV2().quantize_arrow(empty).num_rows == 0
    assert ArrowQuantV2().quantize_batch_arrow(empty).num_rows == 0
    assert ArrowQuantV2().quantize_arrow_batch(empty.to_batches()[0] if empty.to_batches() else
                                               pa.RecordBatch.from_pylist([], schema=empty.schema)).num_rows == 0


@pytest.mark.parametrize("missing", ["layer_name", "weights"])
def test_a_missing_column_is_the_originals_value_error(missing):
    t = table(weights(1)).drop_columns([missing])
    for call in (ArrowQuantV2().quantize_arrow, ArrowQuantV2().quantize_batch_arrow,
                 lambda t: ArrowQuantV2().quantize_arrow_batch(t.to_batches()[0])):
        with pytest.raises(ValueError, match=f"Missing required column '{missing}'"):
            call(t)


def test_non_finite_rows_are_value_errors_naming_the_layer():
    w = weights(3)
    w["model.layers.0.self_attn.q_proj.weight"] = w.pop("layer.1.weight")
    w["model.layers.0.self_attn.q_proj.weight"][2, 2] = -np.inf
    for call in (ArrowQuantV2().quantize_arrow, ArrowQuantV2().quantize_batch_arrow):
        with pytest.raises(ValueError, match="contains NaN or Inf") as info:
            call(table(w))
        assert "model.layers.0.self_attn.q_proj.weight" in str(info.value)


def test_a_shape_that_does_not_match_the_weights_names_the_layer():
    t = pa.table({"layer_name": ["shape_too_large"], "weights": pa.array([np.ones(10, np.float32)], pa.list_(pa.float32())),
                  "shape": pa.array([[3, 5]], pa.list_(pa.int64()))})
    with pytest.raises(ValueError, match="shape") as info:
        ArrowQuantV2().quantize_batch_arrow(t)
    assert "shape_too_large" in str(info.value)


def test_quantize_batch_arrow_continues_past_failed_rows_when_asked():
    w = weights(4)
    w["layer.2.weight"][1, 1] = np.nan
    with pytest.warns(qb.QuantizationWarning, match=r"Quantization failed for 1 layer\(s\), left out:\n  layer.2.weight"):
        out = ArrowQuantV2().quantize_batch_arrow(table(w), 4, continue_on_error=True)
    assert isinstance(out, pa.RecordBatch) and out.schema.equals(ORIGINAL_SCHEMA)
    assert out.column("layer_name").to_pylist() == ["layer.0.weight", "layer.1.weight", "layer.3.weight"]
    for row in out.to_pylist():  # the kept rows moved down over the failed one, intact
        assert (row["quantized_data"], row["scales"], row["zero_points"]) == reference(w[row["layer_name"]])
    with pytest.raises(ValueError, match="layer.2.weight"):
        ArrowQuantV2().quantize_batch_arrow(table(w), 4, continue_on_error=False)


# -- out of scope, and the mistakes the issue found ----------------------------------------


@pytest.mark.parametrize("method,instead", [
    ("quantize_diffusion_model", "quantbridge.quantize_file"),
    ("quantize_from_safetensors", "quantbridge.quantize_file"),
    ("validate_quality", "stats=True"),
    ("get_markov_metrics", None),
])
def test_out_of_scope_methods_say_so_and_what_to_use(method, instead):
    with pytest.raises(NotImplementedError, match="outside quantbridge's compatibility scope") as info:
        getattr(ArrowQuantV2(), method)("model/", "out/")
    assert instead is None or instead in str(info.value)


def test_out_of_scope_module_names_say_so():
    import arrow_quant_v2

    with pytest.raises(NotImplementedError, match="AsyncArrowQuantV2"):
        arrow_quant_v2.AsyncArrowQuantV2  # noqa: B018
    with pytest.raises(AttributeError):
        arrow_quant_v2.no_such_name  # noqa: B018


def test_a_table_passed_as_a_tensor_is_told_to_pick_a_column():
    t = pa.table({"w": np.arange(8, dtype=np.float32)})
    with pytest.raises(qb.ValidationError) as info:
        qb.quantize(t)
    assert "qb.quantize(table[\"w\"])" in info.value.fix and "cast" not in info.value.fix


def test_native_tensors_expose_a_read_only_buffer():
    q = qb.quantize(np.linspace(-1, 1, 64, dtype=np.float32))
    view = memoryview(q.codes)
    assert view.readonly and bytes(view) == q.codes.tobytes() and view.nbytes == q.codes.nbytes
    assert memoryview(q.scales).tobytes() == q.scales.tobytes()
    with pytest.raises(TypeError, match="not writable"):
        ctypes.c_char.from_buffer(q.codes)  # needs writable memory
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del q  # the view keeps the memory alive
        assert len(bytes(view)) == 32
