"""GGUF files in and out, like llama-quantize, checked with gguf-py's GGUFReader: metadata
copied (only general.file_type and general.quantization_version set), tensor order, names
and types as requested, data byte-identical to gguf-py's (and ggml's) quantizers."""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import quantbridge as qb
from quantbridge._files import default_checkpoint

EXE = shutil.which("quantbridge") or pytest.fail("the quantbridge executable is not installed")


def write_gguf(path: Path, tensors: dict[str, np.ndarray], arch: str = "llama", **kv) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(path.stem)
    writer.add_file_type(1)
    for key, value in kv.items():
        writer.add_uint32(key, value)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def minilm_gguf(tmp_path_factory) -> Path:
    """The embedded MiniLM's weights as an F16 GGUF (norms and biases in F32, as convert_hf_to_gguf writes)."""
    weights = load_file(str(default_checkpoint() / "model.safetensors"))
    tensors = {k.replace("encoder.layer.", "blk."): (v.astype(np.float16) if v.ndim >= 2 else v)
               for k, v in weights.items() if v.dtype == np.float32}
    return write_gguf(tmp_path_factory.mktemp("gguf") / "minilm-f16.gguf", tensors, arch="bert")


def _llama_vocab(writer: gguf.GGUFWriter, size: int) -> None:
    """A SentencePiece-style vocabulary llama.cpp accepts: specials, byte tokens, filler."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(size - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (size - 259)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * size)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)


@pytest.fixture(scope="module")
def tiny_llama_gguf(tmp_path_factory) -> Path:
    """A tiny random Llama made with transformers, written as llama.cpp's converter would
    (llama.cpp's names and metadata, a vocabulary, F16 weights and F32 norms), so llama.cpp
    itself can load it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    state = LlamaForCausalLM(config).state_dict()
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama-f16.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_file_type(1)
    writer.add_context_length(128)
    writer.add_embedding_length(256)
    writer.add_block_count(8)
    writer.add_feed_forward_length(512)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(64)
    writer.add_layer_norm_rms_eps(1e-5)
    _llama_vocab(writer, 512)
    for name, value in state.items():
        if name in names:
            gguf_name = names[name]
        else:
            _, _, layer, *rest = name.split(".")
            gguf_name = f"blk.{layer}.{parts['.'.join(rest[:-1])]}.weight"
        array = value.float().numpy()
        writer.add_tensor(gguf_name, array.astype(np.float16) if array.ndim == 2 else array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _llama_cpp_logits(path: Path, tokens: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    model = Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    model.eval(tokens)
    logits = np.array(model.scores[: len(tokens)], dtype=np.float32)
    model.close()
    return logits


# llama-cpp-python's verbose=False redirects to /dev/null and leaves the file to the collector.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
# Bounds on the logits' relative error for this random 8-layer model (measured: Q8_0
# 0.005-0.01, Q5_0 0.10, Q4_K_M 0.17); the bytes themselves are checked exactly above.
@pytest.mark.parametrize("gguf_type, bound", [("Q8_0", 0.02), ("Q5_0", 0.15), ("Q4_K_M", 0.25)])
def test_llama_cpp_runs_the_quantized_model(tiny_llama_gguf, tmp_path, gguf_type, bound):
    out = tmp_path / f"tiny-llama-{gguf_type}.gguf"
    qb.quantize_file(tiny_llama_gguf, out, gguf_type=gguf_type)
    tokens = [1, 17, 300, 42, 511, 260, 7, 99]
    reference = _llama_cpp_logits(tiny_llama_gguf, tokens)
    got = _llama_cpp_logits(out, tokens)
    assert np.isfinite(got).all() and got.shape == (len(tokens), 512)
    relative = np.linalg.norm(got - reference) / np.linalg.norm(reference)
    assert relative < bound, relative


def _fields(reader: gguf.GGUFReader) -> dict[str, list[bytes]]:
    return {f.name: [p.tobytes() for p in f.parts[1:]] for f in reader.fields.values() if not f.name.startswith("GGUF.")}


def _check_copy(src: Path, out: Path, file_type: int) -> gguf.GGUFReader:
    before, after = gguf.GGUFReader(str(src)), gguf.GGUFReader(str(out))
    a, b = _fields(before), _fields(after)
    assert set(b) - set(a) <= {"general.quantization_version"}
    for key in a:
        if key != "general.file_type":
            assert a[key] == b[key], key
    assert int(after.fields["general.file_type"].parts[-1][0]) == file_type
    assert [t.name for t in after.tensors] == [t.name for t in before.tensors]
    assert [list(t.shape) for t in after.tensors] == [list(t.shape) for t in before.tensors]
    return after


@pytest.mark.parametrize("gguf_type, file_type", [("Q8_0", 7), ("Q4_0", 2), ("Q4_1", 3), ("Q5_0", 8), ("Q5_1", 9)])
def test_legacy_types_are_gguf_pys_bytes(minilm_gguf, tmp_path, gguf_type, file_type):
    out = tmp_path / f"minilm-{gguf_type}.gguf"
    reports = qb.quantize_file(minilm_gguf, out, gguf_type=gguf_type)
    reader = _check_copy(minilm_gguf, out, file_type)
    source = {t.name: t for t in gguf.GGUFReader(str(minilm_gguf)).tensors}
    quantized = 0
    for t in reader.tensors:
        if t.tensor_type.name == "F32":
            assert source[t.name].data.ndim == 1  # only norms and biases stay in float
            continue
        assert t.tensor_type.name == gguf_type
        x = np.asarray(source[t.name].data, dtype=np.float32)
        expected = gguf.quantize(x, gguf.GGMLQuantizationType[gguf_type])
        np.testing.assert_array_equal(np.asarray(t.data).reshape(-1), expected.reshape(-1), err_msg=t.name)
        quantized += 1
    assert quantized == sum(r["quantized"] for r in reports) == 40


def test_q4_k_m_follows_llama_cpps_mixture(tiny_llama_gguf, tmp_path, ggml):
    out = tmp_path / "tiny-llama-Q4_K_M.gguf"
    reports = qb.quantize_file(tiny_llama_gguf, out, gguf_type="Q4_K_M")
    reader = _check_copy(tiny_llama_gguf, out, 15)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["output.weight"] == "Q6_K"
    # 8 layers: use_more_bits gives layer 0 (the first eighth), 3 and 6 (every third from 1)
    # and 7 (the last eighth).
    for i in range(8):
        more = i in (0, 3, 6, 7)
        assert types[f"blk.{i}.attn_v.weight"] == ("Q6_K" if more else "Q4_K"), i
        assert types[f"blk.{i}.ffn_down.weight"] == ("Q6_K" if more else "Q4_K"), i
        assert types[f"blk.{i}.attn_q.weight"] == "Q4_K"
        assert types[f"blk.{i}.attn_norm.weight"] == "F32"
    assert types["token_embd.weight"] == "Q4_K"
    source = {t.name: np.asarray(t.data, dtype=np.float32) for t in gguf.GGUFReader(str(tiny_llama_gguf)).tensors}
    for t in reader.tensors:
        if t.tensor_type.name in ("Q4_K", "Q6_K"):
            np.testing.assert_array_equal(np.asarray(t.data).reshape(-1), ggml.quantize(source[t.name], t.tensor_type.name),
                                          err_msg=t.name)
            restored = gguf.dequantize(np.asarray(t.data), t.tensor_type)
            assert np.abs(restored - source[t.name]).max() < 0.05
    report = {r["name"]: r for r in reports}
    assert report["blk.0.attn_v.weight"]["gguf_type"] == "Q6_K" and report["blk.0.attn_v.weight"]["bits"] == 6


def test_rows_that_are_not_whole_super_blocks_fall_back_like_llama_cpp(minilm_gguf, tmp_path):
    # MiniLM's rows are 384 or 1536 values: 1536 is six super-blocks, 384 is not one.
    out = tmp_path / "minilm-Q4_K.gguf"
    qb.quantize_file(minilm_gguf, out, gguf_type="Q4_K")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.output.dense.weight"] == "Q4_K"  # (384, 1536): rows of 1536
    assert types["blk.0.attention.self.query.weight"] == "Q5_0"


def test_data_is_aligned_as_the_header_says(minilm_gguf, tmp_path):
    out = tmp_path / "aligned.gguf"
    qb.quantize_file(minilm_gguf, out, gguf_type="Q8_0")
    reader = gguf.GGUFReader(str(out))
    assert all(t.data_offset % 32 == 0 for t in reader.tensors)
    assert out.stat().st_size == reader.tensors[-1].data_offset + reader.tensors[-1].n_bytes


def test_include_and_exclude_choose_tensors(minilm_gguf, tmp_path):
    out = tmp_path / "some.gguf"
    reports = qb.quantize_file(minilm_gguf, out, gguf_type="Q8_0", exclude=[r"^blk\.0\."])
    kept = {r["name"]: r["kept_because"] for r in reports if not r["quantized"]}
    assert kept["blk.0.attention.self.query.weight"].startswith("matched --exclude")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.attention.self.query.weight"] == "F16"


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_bad_gguf_inputs_are_one_line_and_leave_nothing(minilm_gguf, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(minilm_gguf.read_bytes()[:1000])
    corrupt = tmp_path / "corrupt.gguf"
    data = bytearray(minilm_gguf.read_bytes()[:4096])
    data[8:16] = (2**40).to_bytes(8, "little")  # a tensor count no file holds
    corrupt.write_bytes(bytes(data))
    already = tmp_path / "already.gguf"
    qb.quantize_file(minilm_gguf, already, gguf_type="Q8_0")
    before = _listing(tmp_path)
    for source, out, match in [
        (truncated, "a.gguf", "truncated or corrupt"),
        (corrupt, "b.gguf", "tensors"),
        (already, "c.gguf", "already quantized"),
        (default_checkpoint(), "d.gguf", "convert_hf_to_gguf"),
        (minilm_gguf, "e.safetensors", ".gguf"),
    ]:
        result = subprocess.run([EXE, "quantize", source, "-o", tmp_path / out, "--gguf-type", "Q4_0"],
                                capture_output=True, text=True)
        assert result.returncode == 1, result.stderr
        lines = [l for l in result.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and match in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert _listing(tmp_path) == before


def test_an_existing_output_needs_force_and_sigterm_leaves_nothing(tiny_llama_gguf, tmp_path):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"old")
    result = subprocess.run([EXE, "quantize", tiny_llama_gguf, "-o", out, "--gguf-type", "Q4_K_M"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "--force" in result.stderr and out.read_bytes() == b"old"
    big = write_gguf(tmp_path / "big.gguf", {f"blk.{i}.ffn_up.weight": np.ones((1024, 4096), np.float16)
                                              for i in range(48)})
    proc = subprocess.Popen([EXE, "quantize", big, "-o", tmp_path / "big-q4.gguf", "--gguf-type", "Q4_K_M"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().startswith("quantbridge:")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert _listing(tmp_path) == ["big.gguf", "out.gguf"]


def test_inspect_lists_gguf_tensors_and_metadata(minilm_gguf, tmp_path):
    out = tmp_path / "q.gguf"
    qb.quantize_file(minilm_gguf, out, gguf_type="Q4_K_M")
    info = qb.inspect_file(out)
    assert info["metadata"]["general.file_type"] == "15"
    types = {t["name"]: t["dtype"] for t in info["tensors"]}
    assert types["blk.0.output.dense.weight"] == "Q4_K" and types["blk.0.output.dense.bias"] == "F32"
