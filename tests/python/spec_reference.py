"""docs/math.md written independently in numpy, for bit-exact comparison with quantbridge.

Nothing here is shared with the Rust engine: it is the contract re-derived from the spec
text, in float32 numpy arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

F32 = np.float32
TINY = np.finfo(np.float32).tiny


@dataclass
class Reference:
    codes: np.ndarray  # packed uint8 stream, or unpacked uint8/int8 in the tensor's shape
    scales: np.ndarray  # float32 values of the stored scales, shape (rows, groups) or (1,)
    zero_points: np.ndarray | None
    dequantized: np.ndarray  # float32, the tensor's shape


def round_up(scale: np.ndarray, scale_dtype: str) -> np.ndarray:
    """Smallest value of `scale_dtype` that is >= scale (positive float32 input)."""
    scale = np.asarray(scale, dtype=F32)
    if scale_dtype == "float32":
        return scale
    if scale_dtype == "float16":
        h = scale.astype(np.float16)
        h = np.where(h.astype(F32) < scale, np.nextafter(h, np.float16(np.inf)), h)
        return h.astype(F32)
    if scale_dtype == "bfloat16":
        bits = scale.view(np.uint32) & np.uint32(0xFFFF0000)
        truncated = bits.view(F32)
        return np.where(truncated < scale, (bits + np.uint32(0x10000)).view(F32), truncated)
    raise ValueError(scale_dtype)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Little-end-first packing of a flat uint8 code stream."""
    per_byte = 8 // bits
    flat = codes.reshape(-1).astype(np.uint8)
    padded = np.zeros(-(-flat.size // per_byte) * per_byte, dtype=np.uint8)
    padded[: flat.size] = flat
    lanes = padded.reshape(-1, per_byte)
    out = np.zeros(lanes.shape[0], dtype=np.uint8)
    for j in range(per_byte):
        out |= (lanes[:, j] << (bits * j)).astype(np.uint8)
    return out


def quantize(x, *, bits=4, group_size=128, symmetric=False, granularity="group",
             scale_dtype="float32", pack_codes=True) -> Reference:
    x = np.asarray(x)
    values = x.astype(F32)  # float64 rounds to nearest float32; f16/bf16 are exact
    shape = values.shape
    cols = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    mat = values.reshape(rows, cols)
    if granularity == "tensor":
        groups = mat.reshape(1, 1, -1)
        gs = max(mat.size, 1)
    else:
        gs = cols if (granularity == "channel" or group_size is None) else min(group_size, cols)
        gs = max(gs, 1)
        gpr = -(-cols // gs)
        padded = np.zeros((rows, gpr * gs), dtype=F32)  # 0 padding changes neither min/max-with-0 nor max|x|
        padded[:, :cols] = mat
        groups = padded.reshape(rows, gpr, gs)

    if symmetric:
        qmax = F32(2 ** (bits - 1) - 1)
        a = np.abs(groups).max(axis=-1, initial=F32(0))
        scale = (a / qmax).astype(F32)
    else:
        qmax = F32(2 ** bits - 1)
        mn = np.minimum(groups.min(axis=-1, initial=F32(0)), F32(0))
        mx = np.maximum(groups.max(axis=-1, initial=F32(0)), F32(0))
        scale = ((mx - mn) / qmax).astype(F32)
    scale = np.where(scale < TINY, F32(1), scale).astype(F32)  # 0 (and subnormal) -> 1
    scale = round_up(scale, scale_dtype)
    inv = (F32(1) / scale).astype(F32)[..., None]
    if symmetric:
        q = np.clip(np.rint(groups * inv), -qmax, qmax)
        zp = None
        deq = q * scale[..., None]
    else:
        zp = np.clip(np.rint(-mn / scale), F32(0), qmax).astype(F32)
        q = np.clip(np.rint(groups * inv) + zp[..., None], F32(0), qmax)
        deq = (q - zp[..., None]) * scale[..., None]

    def trim(a):
        if granularity == "tensor":
            return a.reshape(shape)
        return a.reshape(rows, -1)[:, :cols].reshape(shape)

    q = trim(q)
    deq = trim(deq).astype(F32)
    if pack_codes:
        stored = (q + 2 ** (bits - 1)) if symmetric else q
        codes = pack(stored.astype(np.int64).astype(np.uint8), bits)
    else:
        codes = q.astype(np.int8) if symmetric else q.astype(np.uint8)
    scales = scale.reshape(1) if granularity == "tensor" else scale.reshape(rows, -1)
    zps = None if zp is None else (zp.reshape(1) if granularity == "tensor" else zp.reshape(rows, -1)).astype(np.uint8)
    return Reference(codes=codes, scales=scales, zero_points=zps, dequantized=deq)
