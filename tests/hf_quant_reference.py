"""Packers and dequantizers for AWQ ("gemm" version) and GPTQ checkpoints, written for these
tests from the formats' definitions, independently of llmos's loader (python/llmos/hf_quant.py):
the tests pack weights here, load them with llmos, and compare.

The formats, as AutoAWQ / AutoGPTQ / GPTQModel write them (w = scale * (q - zero)):

- AWQ gemm: qweight int32 [in, out / 8], each word holding 8 consecutive output columns
  c * 8 + AWQ_ORDER[i] in bits 4i..4i+3; qzeros int32 [in / group, out / 8] packed the
  same way; scales float16 [in / group, out]. The codes are round((w + zero * scale) / scale)
  with the scale rounded to float16 first.
- GPTQ: qweight int32 [in * bits / 32, out], each word holding 32 / bits consecutive input
  rows, the first in the lowest bits; qzeros int32 [groups, out * bits / 32] packed along the
  output the same way; scales float16 [groups, out]; g_idx int32 [in] gives each input's
  group. Format "gptq" (v1) stores zero - 1 (read back as stored + 1 modulo 2^bits),
  "gptq_v2" the zero itself.

Neither AutoAWQ nor AutoGPTQ / GPTQModel installs on this CPU-only, offline setup (CUDA
builds, other torch versions), so they are not test dependencies.
"""

from __future__ import annotations

import numpy as np
import torch

AWQ_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])


def _codes(weight: np.ndarray, scales: np.ndarray, zeros: np.ndarray, group_of: np.ndarray) -> np.ndarray:
    """q[o, i] = round((w + zero * scale) / fp16(scale)) in float32, per input's group.
    weight [out, in]; scales, zeros [groups, out]."""
    s = scales[group_of].T.astype(np.float32)                      # [out, in]
    z = zeros[group_of].T.astype(np.float32)
    s16 = s.astype(np.float16).astype(np.float32)
    return np.round((weight.astype(np.float32) + z * s) / s16).astype(np.int64)


def _pack_along_last(vals: np.ndarray, bits: int, order: np.ndarray | None = None) -> np.ndarray:
    """Packs the last axis 32 / bits values per int32 word (value j of a word in bits j*bits,
    or value order[j] when an order is given)."""
    per = 32 // bits
    v = (vals.astype(np.int64) & ((1 << bits) - 1)).reshape(*vals.shape[:-1], vals.shape[-1] // per, per)
    if order is not None:
        v = v[..., order]
    shifts = np.arange(per, dtype=np.int64) * bits
    return np.ascontiguousarray((v << shifts).sum(-1).astype(np.uint32).view(np.int32))


def _unpack_along_last(words: np.ndarray, bits: int, order: np.ndarray | None = None) -> np.ndarray:
    per = 32 // bits
    w = words.astype(np.int64) & 0xFFFFFFFF
    shifts = np.arange(per, dtype=np.int64) * bits
    v = (w[..., None] >> shifts) & ((1 << bits) - 1)               # [..., words, per] in bit order
    if order is not None:
        out = np.empty_like(v)
        out[..., order] = v                                        # slot j holds value order[j]
        v = out
    return v.reshape(*words.shape[:-1], words.shape[-1] * per)


def awq_pack(weight: torch.Tensor, w_bit: int, group_size: int, scales: torch.Tensor, zeros: torch.Tensor):
    """weight [out, in] float; scales, zeros [in / group, out]. Returns (qweight int32
    [in, out / 8], qzeros int32 [in / group, out / 8], scales float16)."""
    assert w_bit == 4, "AWQ gemm is 4-bit"
    w = weight.detach().numpy()
    s, z = scales.detach().numpy(), zeros.detach().numpy()
    group_of = np.arange(w.shape[1]) // group_size
    q = _codes(w, s, z, group_of)                                   # [out, in]
    qweight = _pack_along_last(q.T, 4, AWQ_ORDER)                  # [in, out / 8]
    qzeros = _pack_along_last(z.astype(np.int64), 4, AWQ_ORDER)   # [groups, out / 8]
    return torch.from_numpy(qweight), torch.from_numpy(qzeros), scales.detach().half()


def awq_dequantize(qweight, qzeros, scales, bits, group_size):
    """float [in, out] (transposed against nn.Linear.weight): scale * (q - zero)."""
    q = _unpack_along_last(qweight.numpy(), bits, AWQ_ORDER)       # [in, out]
    z = _unpack_along_last(qzeros.numpy(), bits, AWQ_ORDER)        # [groups, out]
    group_of = np.arange(q.shape[0]) // group_size
    s = scales.float().numpy()
    return torch.from_numpy(((q - z[group_of]).astype(np.float32) * s[group_of]).astype(np.float32))


def gptq_pack(weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor, bits: int,
              *, v2: bool = False):
    """weight [out, in] float; scales, zeros [out, groups] (the GPTQ quantizer's layout);
    g_idx [in]. Returns (qweight int32 [in * bits / 32, out], qzeros int32
    [groups, out * bits / 32], scales float16 [groups, out], g_idx int32)."""
    w = weight.detach().numpy()
    s, z = scales.detach().numpy().T, zeros.detach().numpy().T       # [groups, out]
    gi = g_idx.numpy().astype(np.int64)
    q = _codes(w, s, z, gi)                                          # [out, in]
    qweight = _pack_along_last(q, bits).T.copy()                     # pack along in, then [in * bits / 32, out]
    stored = z.astype(np.int64) - (0 if v2 else 1)                   # v1 keeps zero - 1 (mod 2^bits)
    qzeros = _pack_along_last(stored, bits)
    # C order: safetensors writes an array's memory as it lies.
    return (torch.from_numpy(qweight), torch.from_numpy(qzeros),
            torch.from_numpy(np.ascontiguousarray(s, dtype=np.float16)), g_idx.to(torch.int32))


def gptq_dequantize(qweight, qzeros, scales, g_idx, bits, *, v2: bool = False):
    """float [in, out] (transposed against nn.Linear.weight): scale * (q - zero) per input's group."""
    q = _unpack_along_last(qweight.numpy().T, bits).T                # [in, out]
    z = (_unpack_along_last(qzeros.numpy(), bits) + (0 if v2 else 1)) & ((1 << bits) - 1)  # [groups, out]
    gi = g_idx.numpy().astype(np.int64)
    s = scales.float().numpy()
    return torch.from_numpy(((q - z[gi]).astype(np.float32) * s[gi]).astype(np.float32))
