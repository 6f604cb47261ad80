"""ggml's own reference quantizers, built for the tests from the llama-cpp-python sdist on
PyPI (which vendors llama.cpp): ggml-quants.c alone, compiled with the system C compiler
into a small shared library loaded with ctypes. Without FP contraction, as ggml's portable
x86-64 build runs (docs/gguf.md says why that matters)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

# Pinned so the reference does not move under the tests.
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"

STUBS = r"""
#include <stdlib.h>
#include <stddef.h>
#include <stdint.h>
/* ggml-quants.c calls these only for types the tests do not use. */
void ggml_abort(const char *file, int line, const char *fmt, ...) { abort(); }
size_t ggml_row_size(int type, int64_t ne) { abort(); }
const char *ggml_type_name(int type) { return "?"; }
size_t ggml_type_size(int type) { abort(); }
"""

BLOCK = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
         "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210)}


def build(workdir: Path) -> ctypes.CDLL:
    """Download the sdist (llama.cpp itself is not built), extract ggml's sources, compile."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                    "llama-cpp-python", "-d", str(workdir), LLAMA_CPP_PYTHON], check=True)
    sdist = next(workdir.glob("llama_cpp_python-*.tar.gz"))
    wanted = ("/vendor/llama.cpp/ggml/src/", "/vendor/llama.cpp/ggml/include/")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers()
                   if any(w in m.name for w in wanted) and m.name.endswith((".c", ".h"))]
        tar.extractall(workdir, members=members, filter="data")
    src = next(workdir.glob("llama_cpp_python-*/vendor/llama.cpp/ggml/src"))
    (workdir / "stubs.c").write_text(STUBS)
    lib = workdir / "libggml_quants_ref.so"
    subprocess.run(["cc", "-O2", "-DNDEBUG", "-ffp-contract=off", "-fPIC", "-shared", "-std=c11",
                    f"-I{src}", f"-I{src.parent / 'include'}", "-o", str(lib),
                    str(src / "ggml-quants.c"), str(workdir / "stubs.c"), "-lm"], check=True)
    return ctypes.CDLL(str(lib))


class Reference:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib

    def quantize(self, x: np.ndarray, gguf_type: str) -> np.ndarray:
        """``quantize_row_<type>_ref`` over the rows of ``x`` (as float32, C order)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        block, size = BLOCK[gguf_type]
        fn = getattr(self.lib, f"quantize_row_{gguf_type[:2].lower()}{gguf_type[2:]}_ref")
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        out = np.zeros(x.size // block * size, np.uint8)
        fn(x.ctypes.data, out.ctypes.data, x.size)
        return out
