"""A checkpoint's weights by role (embed, layers.3.qkv.weight...), both ways.

Reading mirrors the C++ loader (cpp/model/weights.cc): the parts of a role are stacked along
output rows, Conv1D weights are transposed, and norm weights receive the family's offset
(Gemma's 1 + w), so the arrays are exactly what the core computes with. Writing is the
inverse, giving tensors under the family's Hugging Face names.
"""

from __future__ import annotations

import os

import numpy as np

from llmos import _core
from llmos.io.checkpoint import resolve, tensor_locations
from llmos.io.config import ConfigReader, read_json
from llmos.errors import TensorError
from llmos.arch.families import Architecture, Family, family_for
from llmos.onnx.blocks import Blocks, prequantized, read_blocks

# Roles that receive Architecture.norm_weight_offset (the `norm` flag of weights.cc).
NORM_ROLES = frozenset({"final_norm.weight", "attn_norm.weight", "q_norm.weight", "k_norm.weight",
                        "attn_post_norm.weight", "ffn_norm.weight", "ffn_post_norm.weight"})


def role_key(role: str, layer: int) -> str:
    return role if layer < 0 else f"layers.{layer}.{role}"


def split_key(key: str) -> tuple[str, int]:
    if key.startswith("layers."):
        _, layer, role = key.split(".", 2)
        return role, int(layer)
    return key, -1


def part_rows(arch: Architecture, role: str, n_parts: int) -> list[int]:
    """Rows each source tensor contributes to a stacked role."""
    if n_parts == 1:
        return [-1]
    d = arch.head_dim
    if role.startswith("qkv.") and n_parts == 3:
        return [arch.num_heads * d, arch.num_kv_heads * d, arch.num_kv_heads * d]
    if role.startswith("up.") and n_parts == 2:
        return [arch.intermediate_size, arch.intermediate_size]
    raise TensorError(f"role {role}: cannot split into {n_parts} tensors", field=role)


def _to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32, copy=False)


def read_checkpoint(path: str, check=None) -> tuple[Architecture, Family, dict, dict[str, np.ndarray | Blocks]]:
    """(architecture, family, config.json dict, {role key: float32 array}) of a checkpoint folder.
    A matrix that llmos.quantize stored quantized comes as its Blocks. check(arch), when given,
    runs before any weight is read (an export that refuses the architecture reads nothing)."""
    config_path = os.path.join(path, "config.json")
    raw = read_json(config_path)
    cfg = ConfigReader(raw, config_path)
    family = family_for(cfg)
    arch = family.architecture(cfg)
    if check is not None:
        check(arch)
    locations = tensor_locations(path)
    quantized = prequantized(locations)
    dtypes: dict[str, dict[str, str]] = {}
    weights: dict[str, np.ndarray | Blocks] = {}
    for role, layer, parts in family.tensors(arch):
        if (role, layer) in quantized:
            weights[role_key(role, layer)] = read_blocks(*quantized[role, layer])
            continue
        what = role if layer < 0 else f"{role} of layer {layer}"
        arrays = []
        for name, transpose in parts:
            file, tensor = resolve(locations, name, path, what)
            if file not in dtypes:
                tensors, _ = _core.safetensors_read_header(file)
                dtypes[file] = {t["name"]: t["dtype"] for t in tensors}
            dtype = dtypes[file][tensor]
            if dtype not in ("F32", "F16", "BF16", "F64"):
                raise TensorError(f"{file}: tensor '{tensor}' has dtype {dtype}, not a float type (needed for {what})",
                                  file=file, field=tensor)
            a = _to_float32(_core.safetensors_read_tensor(file, tensor), dtype)
            arrays.append(a.T if transpose else a)
        w = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        if role in NORM_ROLES and arch.norm_weight_offset:
            w = w + np.float32(arch.norm_weight_offset)
        weights[role_key(role, layer)] = np.ascontiguousarray(w, dtype=np.float32)
    return arch, family, raw, weights


def checkpoint_tensors(arch: Architecture, family: Family, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of read_checkpoint: {Hugging Face tensor name: array} for `family`."""
    out: dict[str, np.ndarray] = {}
    for role, layer, parts in family.tensors(arch):
        key = role_key(role, layer)
        if key not in weights:
            raise TensorError(f"no weight for {role}" + (f" of layer {layer}" if layer >= 0 else ""), field=key)
        w = weights[key]
        if role in NORM_ROLES and arch.norm_weight_offset:
            w = w - np.float32(arch.norm_weight_offset)
        rows = part_rows(arch, role, len(parts))
        start = 0
        for (name, transpose), n in zip(parts, rows):
            piece = w if n < 0 else w[start:start + n]
            start += max(n, 0)
            out[name] = np.ascontiguousarray(piece.T if transpose else piece)
    return out
