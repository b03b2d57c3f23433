"""Finding a checkpoint's files and which .safetensors file holds each tensor."""

from __future__ import annotations

import glob
import json
import os
import re
import struct

import numpy as np

from llmos import _core
from llmos.io.config import read_json
from llmos.errors import ModelFileError, SafetensorsError, TensorError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def tensor_locations(model_dir: str) -> dict[str, str]:
    """Maps every tensor name of the checkpoint to the path of the file that holds it."""
    index_path = os.path.join(model_dir, INDEX_FILE)
    single_path = os.path.join(model_dir, SINGLE_FILE)
    if os.path.exists(index_path):
        index = read_json(index_path, limit="max_index_bytes")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise SafetensorsError(
                f"{index_path}: field 'weight_map': expected an object of tensor name -> file name",
                file=index_path, field="weight_map")
        out = {}
        for name, fname in weight_map.items():
            if os.path.basename(fname) != fname or not fname.endswith(".safetensors"):
                raise SafetensorsError(
                    f"{index_path}: field 'weight_map': '{fname}' (for '{name}') is not a .safetensors "
                    "file name in the checkpoint folder", file=index_path, field="weight_map")
            path = os.path.join(model_dir, fname)
            if not os.path.exists(path):
                raise ModelFileError(f"{path}: shard listed in {INDEX_FILE} (for '{name}') is missing", file=path)
            out[name] = path
        return out
    files = [single_path] if os.path.exists(single_path) else sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        found = sorted(os.listdir(model_dir))
        hint = ""
        if any(f.endswith((".bin", ".pt", ".pth")) for f in found):
            hint = " (PyTorch pickle weights are not loaded, for safety: save the model with safetensors)"
        raise ModelFileError(
            f"{model_dir}: no {SINGLE_FILE}, {INDEX_FILE} or other .safetensors file{hint}; found: {', '.join(found) or 'nothing'}",
            file=single_path)
    out = {}
    for path in files:
        tensors, _ = _core.safetensors_read_header(path)
        for t in tensors:
            out.setdefault(t["name"], path)
    return out


def find(locations: dict[str, str], name: str) -> tuple[str, str] | None:
    """(file, tensor) for a canonical tensor name, tolerating a missing or extra top-level
    prefix ("model.", "transformer."): base-model checkpoints are saved without it. None if
    the checkpoint has no such tensor."""
    candidates = [name]
    for prefix in ("model.", "transformer."):
        if name.startswith(prefix):
            candidates.append(name[len(prefix):])
        else:
            candidates.append(prefix + name)
    for c in candidates:
        if c in locations:
            return locations[c], c
    return None


def resolve(locations: dict[str, str], name: str, model_dir: str, what: str) -> tuple[str, str]:
    """find(), raising TensorError (naming what needs the tensor) when it is missing."""
    found = find(locations, name)
    if found is not None:
        return found
    files = sorted({os.path.basename(p) for p in locations.values()})
    raise TensorError(
        f"{model_dir}: tensor '{name}' (needed for {what}) is not in {', '.join(files) or 'the checkpoint'}",
        file=os.path.join(model_dir, files[0]) if len(files) == 1 else model_dir, field=name)


def float_source(locations: dict[str, str], role: str, layer: int, parts, model_dir: str) -> tuple:
    """The core's source tuple for a role loaded from float tensors: (role, layer,
    [(file, tensor, transpose)], no QuantType (None), no group). parts: the family's
    [(canonical name, transpose)] for the role."""
    what = role if layer < 0 else f"{role} of layer {layer}"
    resolved = []
    for name, transpose in parts:
        sel = _SELECTION.match(name)
        if sel:
            file, tensor = resolve(locations, sel["name"], model_dir, what)
            resolved.append((name, _select(file, tensor, int(sel["index"]), sel["step"]), transpose))
            continue
        file, tensor = resolve(locations, name, model_dir, what)
        resolved.append((file, tensor, transpose))
    return (role, layer, resolved, None, 0)


# "name[E]" or "name[E][C::2]": expert E of a tensor stacked over experts (dim 0), optionally
# every other column of its last dim from C (gpt-oss interleaves gate and up columns).
_SELECTION = re.compile(r"^(?P<name>.+)\[(?P<index>\d+)\](?:\[(?P<step>[01])::2\])?$")
_SAFETENSORS_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}  # bf16 as raw bits, as the core takes


def _select(file: str, tensor: str, index: int, step: str | None) -> np.ndarray:
    """The selection of _SELECTION from a safetensors file, read through a memory map."""
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    info = header[tensor]
    dtype = _SAFETENSORS_NP.get(info["dtype"])
    shape = info["shape"]
    if dtype is None or len(shape) < 2 or index >= shape[0]:
        raise TensorError(f"{file}: tensor '{tensor}': dtype {info['dtype']} shape {shape} has no expert {index} "
                          "of float values", file=file, field=tensor)
    start, end = info["data_offsets"]
    data = np.memmap(file, dtype=dtype, mode="r", offset=8 + n + start, shape=tuple(shape))
    out = data[index]
    if step is not None:
        out = out[..., int(step)::2]
    return np.ascontiguousarray(out)


def tensor_shapes(locations: dict[str, str]) -> dict[str, list[int]]:
    """The shape of every tensor of the checkpoint, from the safetensors headers (no data read)."""
    out: dict[str, list[int]] = {}
    for path in sorted(set(locations.values())):
        tensors, _ = _core.safetensors_read_header(path)
        for t in tensors:
            if locations.get(t["name"]) == path:
                out[t["name"]] = list(t["shape"])
    return out
