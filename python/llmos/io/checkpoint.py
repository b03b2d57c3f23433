"""Finding a checkpoint's files and which .safetensors file holds each tensor."""

from __future__ import annotations

import glob
import os

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
        file, tensor = resolve(locations, name, model_dir, what)
        resolved.append((file, tensor, transpose))
    return (role, layer, resolved, None, 0)


def tensor_shapes(locations: dict[str, str]) -> dict[str, list[int]]:
    """The shape of every tensor of the checkpoint, from the safetensors headers (no data read)."""
    out: dict[str, list[int]] = {}
    for path in sorted(set(locations.values())):
        tensors, _ = _core.safetensors_read_header(path)
        for t in tensors:
            if locations.get(t["name"]) == path:
                out[t["name"]] = list(t["shape"])
    return out
