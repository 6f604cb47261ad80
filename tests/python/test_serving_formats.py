"""compressed-tensors and MLX folders, checked with the formats' own readers: the
compressed-tensors decompressor, transformers' from_pretrained, mlx.core.dequantize and
mlx.nn.QuantizedLinear (docs/formats.md (serving formats))."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as mxnn
import numpy as np
import pytest
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationConfig
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file as load_torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils.quantization_config import CompressedTensorsConfig

import quantbridge as qb
from quantbridge._files import default_checkpoint

MINILM = default_checkpoint()

# transformers warns when a quantization_config is passed for a folder that has one.
pytestmark = pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")

CT_SPECS = {
    "int4-g128-asym": dict(bits=4, group_size=128),
    "int8-channel-sym": dict(bits=8, group_size=None, symmetric=True),
    "int4-g32": dict(bits=4, group_size=32),
}


@pytest.fixture(scope="module")
def minilm_weights() -> dict[str, np.ndarray]:
    return load_numpy(str(MINILM / "model.safetensors"))


@pytest.fixture(scope="module", params=list(CT_SPECS))
def ct_minilm(request, tmp_path_factory) -> tuple[Path, dict]:
    spec = CT_SPECS[request.param]
    out = tmp_path_factory.mktemp("ct") / f"minilm-{request.param}"
    qb.quantize_file(None, out, format="compressed-tensors", **spec)
    return out, spec


def _modules(state: dict, suffix: str) -> list[str]:
    return sorted(k[: -len(suffix)] for k in state if k.endswith(suffix))


def test_compressed_tensors_decompressor_gives_exactly_our_dequantize(ct_minilm, minilm_weights):
    out, spec = ct_minilm
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    scheme = QuantizationConfig.model_validate(config).config_groups["group_0"]
    state = load_torch(str(out / "model.safetensors"))
    modules = _modules(state, ".weight_packed")
    assert len(modules) == 37  # every Linear of MiniLM: 6 layers x 6, and the pooler
    for m in modules:
        local = {k[len(m) + 1:]: v for k, v in state.items() if k.startswith(m + ".weight_")}
        restored = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
        ours = np.from_dlpack(qb.quantize(minilm_weights[m + ".weight"], **spec).dequantize())
        assert restored.dtype == torch.float32
        np.testing.assert_array_equal(restored.numpy(), ours, err_msg=m)


def test_compressed_tensors_config_block(ct_minilm):
    out, spec = ct_minilm
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (q["quant_method"], q["format"], q["quantization_status"]) == ("compressed-tensors", "pack-quantized", "compressed")
    weights = q["config_groups"]["group_0"]["weights"]
    assert weights["num_bits"] == spec["bits"] and weights["type"] == "int"
    assert weights["symmetric"] == spec.get("symmetric", False)
    assert weights["strategy"] == ("group" if spec["group_size"] else "channel")
    assert weights["group_size"] == spec["group_size"]
    assert q["ignore"] == ["lm_head"]


def _sentence_embeddings(model, folder: Path) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(str(folder))  # the copied tokenizer files
    batch = tokenizer(["The cat sat on the mat.", "Quantization shrinks models.", "vLLM serves them."],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def _dequantizing_config() -> CompressedTensorsConfig:
    # transformers' compressed mode sizes asymmetric zero points unpacked
    # (vllm-project/llm-compressor#1618); dequantizing at load is what it offers on CPU.
    try:
        return CompressedTensorsConfig(dequantize=True)
    except TypeError:
        return CompressedTensorsConfig(run_compressed=False)


@pytest.mark.parametrize("name, spec, floor", [
    ("int8", dict(bits=8, group_size=None, symmetric=True), 0.999),
    ("int4", dict(bits=4, group_size=128), 0.93),
])
def test_transformers_opens_the_minilm_folder(tmp_path, name, spec, floor):
    out = tmp_path / f"minilm-{name}"
    qb.quantize_file(None, out, format="compressed-tensors", **spec)
    reference = _sentence_embeddings(AutoModel.from_pretrained(str(MINILM)).eval(), MINILM)
    kwargs = {} if spec.get("symmetric") else {"quantization_config": _dequantizing_config()}
    model = AutoModel.from_pretrained(str(out), **kwargs).eval()
    got = _sentence_embeddings(model, out)
    cosine = torch.nn.functional.cosine_similarity(reference, got)
    assert cosine.min().item() >= floor, cosine


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random Llama saved by transformers in shards, as a hub model is."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("llama") / "tiny-llama"
    LlamaForCausalLM(config).eval().save_pretrained(str(folder), max_shard_size="150KB")
    return folder


@pytest.mark.parametrize("spec, bound", [
    (dict(bits=8, group_size=None, symmetric=True), 0.03),
    (dict(bits=4, group_size=32), 0.25),
    (dict(bits=4, group_size=128, symmetric=True), 0.25),
])
def test_a_sharded_llama_loads_with_automodelforcausallm(tiny_llama, tmp_path, spec, bound):
    out = tmp_path / "tiny-llama-ct"
    reports = qb.quantize_file(tiny_llama, out, format="compressed-tensors", **spec)
    kept = {r["name"]: r["kept_because"] for r in reports if not r["quantized"]}
    assert "lm_head (kept" not in str(kept) and "output head" in kept["lm_head.weight"]
    assert "embedding" in kept["model.embed_tokens.weight"]
    assert sum(r["quantized"] for r in reports) == 14  # 7 Linears per layer
    # Sharded like the input, with an index that names every stored tensor.
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == sorted(p.name for p in tiny_llama.glob("*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    stored = {k: shard for shard in shards for k in load_numpy(str(out / shard))}
    assert index["weight_map"] == stored
    assert (out / "generation_config.json").read_bytes() == (tiny_llama / "generation_config.json").read_bytes()

    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()(ids).logits
        kwargs = {} if spec.get("symmetric") else {"quantization_config": _dequantizing_config()}
        got = AutoModelForCausalLM.from_pretrained(str(out), **kwargs).eval()(ids).logits
    relative = ((got - reference).norm() / reference.norm()).item()
    assert relative < bound, relative


def test_a_bfloat16_model_gets_bfloat16_scales(tiny_llama, tmp_path):
    bf16 = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.bfloat16).save_pretrained(str(bf16))
    out = tmp_path / "bf16-ct"
    qb.quantize_file(bf16, out, format="compressed-tensors", bits=4, group_size=32, symmetric=True)
    state = {}
    for shard in out.glob("*.safetensors"):
        state.update(load_torch(str(shard)))
    assert state["model.layers.0.mlp.up_proj.weight_scale"].dtype == torch.bfloat16
    with pytest.raises(qb.ValidationError, match="model's dtype"):
        qb.quantize_file(bf16, tmp_path / "f32-scales", format="compressed-tensors", scale_dtype="float32")
    assert not (tmp_path / "f32-scales").exists()
    model = AutoModelForCausalLM.from_pretrained(str(out), quantization_config=_dequantizing_config()).eval()
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(model(torch.arange(8).reshape(1, 8)).logits).all()


@pytest.fixture(scope="module", params=[(4, 64), (8, 32), (2, 128)], ids=lambda p: f"int{p[0]}-g{p[1]}")
def mlx_minilm(request, tmp_path_factory) -> tuple[Path, int, int]:
    bits, group = request.param
    out = tmp_path_factory.mktemp("mlx") / f"minilm-{bits}-{group}"
    qb.quantize_file(None, out, format="mlx", bits=bits, group_size=group)
    return out, bits, group


def test_mlx_dequantize_matches_ours(mlx_minilm, minilm_weights):
    out, bits, group = mlx_minilm
    assert json.loads((out / "config.json").read_text())["quantization"] == {"group_size": group, "bits": bits}
    stored = mx.load(str(out / "model.safetensors"))
    modules = _modules(stored, ".biases")
    assert len(modules) == 37
    for m in modules:
        w = stored[m + ".weight"]
        assert w.dtype == mx.uint32
        theirs = np.array(mx.dequantize(w, stored[m + ".scales"], stored[m + ".biases"], group_size=group, bits=bits))
        ours = np.from_dlpack(qb.quantize(minilm_weights[m + ".weight"], bits=bits, group_size=group).dequantize())
        # MLX computes scale*q + bias with bias = -zp*scale rounded: equal up to float32 rounding.
        np.testing.assert_allclose(theirs, ours, rtol=1e-6, atol=1e-6 * np.abs(ours).max(), err_msg=m)


def test_mlx_quantized_linear_runs_the_layer(mlx_minilm, minilm_weights):
    out, bits, group = mlx_minilm
    stored = mx.load(str(out / "model.safetensors"))
    m = "encoder.layer.0.intermediate.dense"
    weight, bias = minilm_weights[m + ".weight"], minilm_weights[m + ".bias"]
    layer = mxnn.QuantizedLinear(weight.shape[1], weight.shape[0], bias=True, group_size=group, bits=bits)
    layer.update({"weight": stored[m + ".weight"], "scales": stored[m + ".scales"],
                  "biases": stored[m + ".biases"], "bias": stored[m + ".bias"]})
    x = np.random.default_rng(0).standard_normal((4, weight.shape[1])).astype(np.float32)
    got = np.array(layer(mx.array(x)))
    exact = x @ weight.T + bias
    # Output i's error is at most sum_j |x_j| |W_ij - W'_ij|: the quantization error.
    ours = np.from_dlpack(qb.quantize(weight, bits=bits, group_size=group).dequantize())
    bound = np.abs(x) @ np.abs(ours - weight).T
    assert np.all(np.abs(got - exact) <= bound * 1.001 + 1e-4)
    np.testing.assert_allclose(got, x @ ours.T + bias, rtol=1e-4, atol=1e-4)


def test_to_format_gives_the_folder_tensors(minilm_weights, tmp_path):
    out = tmp_path / "ct"
    qb.quantize_file(None, out, format="compressed-tensors", bits=4, group_size=128)
    state = load_torch(str(out / "model.safetensors"))
    name = "encoder.layer.3.attention.output.dense.weight"
    q = qb.quantize(minilm_weights[name], bits=4, group_size=128, name=name)
    parts = {k: torch.from_dlpack(v) for k, v in q.to_format("compressed-tensors").items()}
    module = name[: -len(".weight")]
    assert set(parts) == {f"{module}.weight_{p}" for p in ("packed", "scale", "zero_point", "shape")}
    for key, tensor in parts.items():
        assert torch.equal(tensor, state[key]), key
    # The packed words are the codes themselves, not a copy.
    assert parts[f"{module}.weight_packed"].data_ptr() == np.from_dlpack(q.codes).ctypes.data

    mlx_parts = q.to_format("mlx", name="x.weight")
    assert sorted(mlx_parts) == ["x.biases", "x.scales", "x.weight"]
    bare = q.to_format("mlx", name="")
    assert sorted(bare) == ["biases", "scales", "weight"]


def test_to_format_refuses_what_the_format_cannot_store():
    w = np.ones((8, 256), np.float32)
    with pytest.raises(qb.ValidationError, match="32, 64 or 128"):
        qb.quantize(w, bits=4, group_size=256).to_format("mlx")
    with pytest.raises(qb.ValidationError, match="2-D"):
        qb.quantize(np.ones((2, 8, 256), np.float32), bits=4, group_size=128).to_format("compressed-tensors")
    with pytest.raises(qb.ValidationError, match="pack=True"):
        qb.quantize(w, bits=4, group_size=128, pack=False).to_format("compressed-tensors")
    with pytest.raises(qb.ValidationError, match="mlx"):
        qb.quantize(w, bits=4, group_size=128).to_format("gguf")


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def _bad(tmp_path: Path, inp: Path, out: Path, match: str, **kwargs) -> None:
    before = _listing(tmp_path)
    with pytest.raises((qb.ValidationError, OSError), match=match):
        qb.quantize_file(inp, out, **kwargs)
    assert _listing(tmp_path) == before  # nothing written, nothing partial left


def test_bad_inputs_are_one_clear_error_and_nothing_is_written(tiny_llama, tmp_path):
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((tiny_llama.parent / "tiny-llama" / next(
        p.name for p in tiny_llama.glob("*.safetensors"))).read_bytes())
    _bad(tmp_path, no_config, tmp_path / "o1", "config.json", format="compressed-tensors")

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for p in tiny_llama.iterdir():
        (truncated / p.name).write_bytes(p.read_bytes())
    shard = sorted(truncated.glob("*.safetensors"))[3]
    shard.write_bytes(shard.read_bytes()[:-100])
    _bad(tmp_path, truncated, tmp_path / "o2", "truncated|corrupt|unreadable", format="compressed-tensors")

    missing = tmp_path / "missing-shard"
    missing.mkdir()
    for p in tiny_llama.iterdir():
        (missing / p.name).write_bytes(p.read_bytes())
    sorted(missing.glob("*.safetensors"))[5].unlink()
    _bad(tmp_path, missing, tmp_path / "o3", "does not exist", format="mlx", group_size=64)

    _bad(tmp_path, tiny_llama, tmp_path / "o4", "32, 64 or 128", format="mlx", group_size=256)
    _bad(tmp_path, tiny_llama, tiny_llama / "inside", "inside the input folder", format="mlx", group_size=64)
    assert not (tiny_llama / "inside").exists()
    _bad(tmp_path, tiny_llama, tmp_path / "o5", "format", format="gguf")


def test_an_existing_output_folder_needs_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OSError, match="--force"):
        qb.quantize_file(None, out, format="mlx", group_size=64)
    assert _listing(out) == ["old.txt"]
    qb.quantize_file(None, out, format="mlx", group_size=64, force=True)
    assert "old.txt" not in _listing(out) and "model.safetensors" in _listing(out)
    assert _listing(tmp_path) == ["out"]  # no temporary or old folder left beside it
