"""Write the seed corpora of the fuzz targets into fuzz/corpus/<target>/seed-* (committed).

    python3 fuzz/make_seeds.py      # needs numpy, pyarrow, safetensors (the test extras)

Seeded with real files, the checkpoint target reaches headers with data_offsets, Arrow
footers and batches within seconds instead of never.
"""

import io
import json
import pathlib
import struct

import numpy as np
import pyarrow as pa
from safetensors.numpy import save

import quantbridge as qb

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"


def put(target, name, data):
    folder = ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data)


def arrow_bytes(table, stream=False):
    sink = io.BytesIO()
    writer = pa.ipc.new_stream(sink, table.schema) if stream else pa.ipc.new_file(sink, table.schema)
    with writer:
        writer.write_table(table)
    return sink.getvalue()


def main():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 8)).astype(np.float32)
    put("checkpoint", "float32", save({"w": w}))
    put("checkpoint", "mixed", save({"w": w, "h": w.astype(np.float16), "ids": np.arange(3, dtype=np.int64),
                                     "b": np.ones(4, np.float64)}, metadata={"format": "pt"}))
    put("checkpoint", "empty", save({}))
    table = pa.table({"layer_name": ["x", "y"], "weights": pa.array([w.ravel(), w[0]], pa.large_list(pa.float32())),
                      "shape": pa.array([[4, 8], None], pa.list_(pa.int64()))})
    put("checkpoint", "arrow-file", arrow_bytes(table))
    put("checkpoint", "arrow-stream", arrow_bytes(table, stream=True))
    put("checkpoint", "index-json", json.dumps({"metadata": {}, "weight_map": {"w": "model-00001.safetensors"}}).encode())
    # quantbridge's own outputs: the reader lists them (inspect) and the job refuses them.
    src = ROOT / "_src.safetensors"
    src.write_bytes(save({"w": w}))
    for suffix in ("safetensors", "arrow"):
        out = ROOT / f"_out.{suffix}"
        qb.quantize_file(src, out, force=True)
        put("checkpoint", f"quantbridge-output-{suffix}", out.read_bytes())
        out.unlink()
    src.unlink()

    # GGUF: an F16 model (what the GGUF job requantizes) and one already quantized.
    import gguf

    def gguf_bytes(tensors, file_type=1):
        path = ROOT / "_seed.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_file_type(file_type)
        writer.add_array("tokenizer.ggml.tokens", ["a", "b"])
        for name, value in tensors.items():
            raw = gguf.GGMLQuantizationType.Q8_0 if value.dtype == np.uint8 else None
            writer.add_tensor(name, value, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        data = path.read_bytes()
        path.unlink()
        return data

    wide = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
    f16 = gguf_bytes({"blk.0.attn_v.weight": wide.astype(np.float16), "blk.0.attn_norm.weight": wide[0],
                      "output.weight": wide.astype(np.float16)})
    q8 = gguf.quantize(wide, gguf.GGMLQuantizationType.Q8_0)
    quantized = gguf_bytes({"blk.0.ffn_up.weight": q8}, file_type=7)
    for target in ("gguf", "checkpoint"):
        put(target, "gguf-f16", f16)
        put(target, "gguf-q8_0", quantized)

    put("engine", "small-2d", bytes([2, 3, 7, 1, 1, 0, 1, 2, 0, 0]) + w.tobytes())
    put("engine", "strided", bytes([2, 5, 6, 256 - 6, 1, 4, 0, 7, 3, 2]) + rng.standard_normal(64).astype(np.float32).tobytes())
    put("engine", "nan", bytes([1, 9, 1, 0, 1, 0, 2, 0]) + np.array([1, np.nan, 2, 3, 4, 5, 6, 7, 8], np.float32).tobytes())

    put("layout", "contiguous", struct.pack("<9q", 2, 4, 8, 8, 1, 0, 4096, 4096 * 2 + 1, 0))
    put("layout", "negative-stride", struct.pack("<9q", 2, 4, 8, -8, 1, 1, 8192, 1, 0))

    put("output_names", "unique", b"w.codes\xffw.scales\xffw.zero_points\xffb")
    put("output_names", "collision", b"w\xffw.codes\xffw.codes")
    put("output_names", "reserved", b"__metadata__\xffx")
    put("output_names", "odd-characters", b'a"b\xffc\\d\xff\x00\xff')


if __name__ == "__main__":
    main()
