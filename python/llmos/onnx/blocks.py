"""The blocks of a checkpoint written by llmos.quantize, read back for the export.

llmos.quantize stores each quantized matrix as `llmos.<role>[.<layer>].codes` / `.scale` (and
`.min` for int4-asym) in the layout of cpp/quant/qformat.h. The export keeps those blocks
rather than quantizing again (each re-quantization adds its own error): onnxruntime's
MatMulNBits holds every llmos format exactly, with the same group as its block size:

    Q4       4 bits, implied zero point 8 (MatMulNBits' default): codes repacked only
    Q4Asym   4 bits, w = d * u + m: float zero point -m / d
    Q8       8 bits, implied zero point 128 (MatMulNBits' default): the bytes as they are
    Q6       8 bits: u + 96 puts Q6's zero point 32 on 128

The packing differs: llmos puts u[j] and u[j + 32] of a 64-value chunk in byte j, MatMulNBits
u[2i] and u[2i + 1] in byte i (low nibble first).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from llmos import _core
from llmos.backends.cpu import _prequantized_roles
from llmos.errors import TensorError

Q8, Q4, Q4_ASYM, Q6 = _core.QuantType.Q8, _core.QuantType.Q4, _core.QuantType.Q4Asym, _core.QuantType.Q6
CHUNK = 64  # values per packed Q4 / Q6 chunk
_CHUNK_BYTES = {Q4: 32, Q4_ASYM: 32, Q6: 48}
_ZERO_POINT = {Q8: 128, Q4: 8, Q6: 32}


@dataclass(frozen=True)
class Blocks:
    """One quantized matrix [rows, cols] (output rows, input columns) as llmos stores it."""

    type: _core.QuantType
    group: int
    cols: int
    codes: np.ndarray             # uint8 [rows, row bytes] in qformat.h's packing
    scale: np.ndarray             # float32 [rows, cols / group]
    min: np.ndarray | None = None  # float32 [rows, cols / group], Q4Asym only

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape[0], self.cols

    @property
    def bits(self) -> int:
        """Bits per value in MatMulNBits."""
        return 4 if self.type in (Q4, Q4_ASYM) else 8

    def rows(self, start: int, stop: int) -> "Blocks":
        """Output rows start..stop (a fused matrix cut into its parts)."""
        return replace(self, codes=self.codes[start:stop], scale=self.scale[start:stop],
                       min=None if self.min is None else self.min[start:stop])

    def values(self) -> np.ndarray:
        """The stored codes u, one per weight: uint8 [rows, cols]."""
        rows = self.codes.shape[0]
        if self.type == Q8:
            return self.codes
        c = self.codes.reshape(rows, self.cols // CHUNK, _CHUNK_BYTES[self.type])
        low = c[..., :32]
        u = np.concatenate([low & 0x0F, low >> 4], axis=-1)  # [rows, chunks, 64]
        if self.type == Q6:
            # Byte j of the last 16 holds the top 2 bits of u[j + 16 q] at bits 2q..2q+1.
            high = c[..., 32:48]
            u = u | (np.concatenate([(high >> (2 * q)) & 3 for q in range(4)], axis=-1) << 4)
        return u.reshape(rows, self.cols)

    def dequantize(self) -> np.ndarray:
        """float32 [rows, cols], computed as the core's dequantize_row computes it (d * u + m)."""
        rows = self.codes.shape[0]
        u = self.values().reshape(rows, -1, self.group).astype(np.float32)
        d = self.scale[..., None]
        m = self.min[..., None] if self.type == Q4_ASYM else np.float32(-_ZERO_POINT[self.type]) * d
        return (d * u + m).astype(np.float32).reshape(rows, self.cols)

    def matmul_nbits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """MatMulNBits' B [rows, cols / group, group * bits / 8], scales [rows, cols / group] and
        zero points (None: the implied 2^(bits - 1)), for bits = self.bits, block_size = group."""
        rows, blocks = self.codes.shape[0], self.cols // self.group
        u = self.values().reshape(rows, blocks, self.group)
        scales, zero_points = self.scale, None
        if self.type == Q6:
            u = u + np.uint8(128 - _ZERO_POINT[Q6])
        elif self.type == Q4_ASYM:
            d, m = self.scale, self.min
            flat = d == 0
            # A block of one repeated value has d = 0 and cannot be written as (u - zp) * d;
            # code 8 with scale m / 8 and zero point 0 gives the same value.
            scales = np.where(flat, m / np.float32(8), d).astype(np.float32)
            zero_points = np.where(flat, np.float32(0), -m / np.where(flat, np.float32(1), d)).astype(np.float32)
            u = np.where(flat[..., None], np.uint8(8), u)
        if self.bits == 4:
            u = u[..., 0::2] | (u[..., 1::2] << 4)
        return np.ascontiguousarray(u, dtype=np.uint8), np.ascontiguousarray(scales, dtype=np.float32), zero_points


def _as_float16_bits(a: np.ndarray, file: str, name: str) -> np.ndarray:
    if a.dtype == np.uint16:
        a = a.view(np.float16)
    if a.dtype != np.float16:
        raise TensorError(f"{file}: tensor '{name}' has dtype {a.dtype}, not float16", file=file, field=name)
    return a.astype(np.float32)


def make_blocks(qtype: _core.QuantType, group: int, codes: np.ndarray, scale: np.ndarray, mn: np.ndarray | None,
                where: str, base: str) -> Blocks:
    """Blocks from codes and float16 scales (and mins), their shapes checked; `where` and
    `base` name them in errors."""
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise TensorError(f"{where}: tensor '{base}.codes' must be uint8 [rows, bytes], got {codes.dtype} "
                          f"{list(codes.shape)}", file=where, field=base + ".codes")
    rows, nbytes = codes.shape
    cols = nbytes if qtype == Q8 else nbytes // _CHUNK_BYTES[qtype] * CHUNK
    if group not in (32, 64, 128) or cols == 0 or cols % group or (qtype != Q8 and nbytes % _CHUNK_BYTES[qtype]):
        raise TensorError(f"{where}: tensor '{base}.codes' ({qtype.name} [{rows}, {nbytes}]) does not hold whole "
                          f"groups of {group}", file=where, field=base + ".codes")
    scale = _as_float16_bits(scale, where, base + ".scale")
    mn = _as_float16_bits(mn, where, base + ".min") if qtype == Q4_ASYM else None
    for name, a in ((".scale", scale), (".min", mn)):
        if a is not None and a.shape != (rows, cols // group):
            raise TensorError(f"{where}: tensor '{base}{name}' has shape {list(a.shape)}, expected "
                              f"[{rows}, {cols // group}] for codes [{rows}, {nbytes}]", file=where, field=base + name)
    return Blocks(qtype, group, cols, codes, scale, mn)


def read_blocks(file: str, base: str, qtype: _core.QuantType, group: int) -> Blocks:
    """The matrix stored under `base` (llmos.<role>[.<layer>]) in `file`."""
    def read(suffix):
        return _core.safetensors_read_tensor(file, base + suffix)

    return make_blocks(qtype, group, read(".codes"), read(".scale"), read(".min") if qtype == Q4_ASYM else None,
                       file, base)


def prequantized(locations: dict[str, str]) -> dict:
    """{(role, layer): (file, base name, type, group)} of a checkpoint written by
    llmos.quantize; {} for any other checkpoint. The core's loader reads the same metadata,
    so the export sees exactly the matrices llmos runs quantized."""
    found = _prequantized_roles(locations)
    found.pop("__quant__", None)
    return found
