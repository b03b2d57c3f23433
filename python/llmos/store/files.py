"""Which files make a model (weights, side files, ONNX external data) and what they say:
the manifest fields read from a model folder's own files."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path
from typing import Any

from llmos import _core
from llmos.arch.families import family_for
from llmos.errors import InvalidInputError, ModelFileError, ModelFormatError
from llmos.io.checkpoint import INDEX_FILE
from llmos.io.config import ConfigReader, read_json
from llmos.text.tokenizer import Tokenizer



# The files that make up a model besides its weights: what the runtime, the tokenizer and the
# chat template read, plus the licence and card that must travel with the weights.
SIDE_FILES = (
    "config.json", "generation_config.json", INDEX_FILE,
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt",
    "chat_template.jinja", "chat_template.json",
    "README.md", "USE_POLICY.md",
)


SIDE_PATTERNS = ("LICENSE*", "LICENCE*", "NOTICE*", "additional_chat_templates/*.jinja")


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}


def is_side_file(rel: str) -> bool:
    """True for the non-weight files of a model (config, tokenizer, chat templates, licence)."""
    import fnmatch

    if "/" not in rel and rel in SIDE_FILES:
        return True
    return any(fnmatch.fnmatchcase(rel, p) and rel.count("/") == p.count("/") for p in SIDE_PATTERNS)


def weight_files(names: set[str] | list[str], index: dict | None, *, where: str = "") -> list[str]:
    """The .safetensors files to take: the shards an index names, else model.safetensors, else
    every top-level .safetensors (repositories that also ship e.g. consolidated.safetensors
    duplicate their weights; the index says which set the config belongs to)."""
    names = set(names)
    if index is not None:
        wm = index.get("weight_map")
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise ModelFormatError(f"{where}{INDEX_FILE}: field 'weight_map': expected an object of tensor name -> "
                                   "file name", file=where + INDEX_FILE, field="weight_map")
        shards = sorted(set(wm.values()))
        bad = [s for s in shards if "/" in s or "\\" in s or not s.endswith(".safetensors")]
        if bad:
            raise ModelFormatError(f"{where}{INDEX_FILE}: '{bad[0]}' is not a .safetensors file in the model folder",
                                   file=where + INDEX_FILE, field="weight_map")
        missing = [s for s in shards if s not in names]
        if missing:
            raise ModelFileError(f"{where}{INDEX_FILE} lists {missing[0]}, which is missing"
                                 + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                                 file=where + missing[0])
        return shards
    if "model.safetensors" in names:
        return ["model.safetensors"]
    return sorted(n for n in names if "/" not in n and n.endswith(".safetensors"))


def _onnx_external_files(onnx_path: Path) -> list[str]:
    """Files an ONNX model keeps its tensors in (models over 2 GB must use external data)."""
    try:
        import onnx
    except ImportError:
        # Without the onnx package, fall back to the names exporters use (model.onnx.data,
        # model.onnx_data).
        prefix = onnx_path.name
        return sorted(p.name for p in onnx_path.parent.iterdir()
                      if p.is_file() and p.name != prefix and p.name.startswith((prefix + ".", prefix + "_")))
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others from protobuf
        raise ModelFormatError(f"{onnx_path}: not a readable ONNX model ({e})", file=str(onnx_path)) from None
    found: set[str] = set()

    def visit_tensor(t) -> None:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for kv in t.external_data:
                if kv.key == "location":
                    found.add(kv.value)

    def visit_graph(g) -> None:
        for t in g.initializer:
            visit_tensor(t)
        for node in g.node:
            for a in node.attribute:
                if a.HasField("t"):
                    visit_tensor(a.t)
                for t in a.tensors:
                    visit_tensor(t)
                if a.HasField("g"):
                    visit_graph(a.g)
                for sub in a.graphs:
                    visit_graph(sub)

    visit_graph(model.graph)
    for loc in sorted(found):
        if os.path.basename(loc) != loc or loc in ("", ".", ".."):
            raise ModelFormatError(f"{onnx_path}: external data location {loc!r} is outside the model folder",
                                   file=str(onnx_path), field="external_data")
        if not (onnx_path.parent / loc).is_file():
            raise ModelFileError(f"{onnx_path}: external data file {loc} is missing", file=str(onnx_path.parent / loc))
    return sorted(found)


def model_files(src: Path) -> list[str]:
    """The files (relative paths) to copy from a model folder, or from beside a FILE.onnx."""
    if src.is_file():
        if src.suffix.lower() != ".onnx":
            raise InvalidInputError(f"{src}: import takes a model folder or a .onnx file", field="path")
        folder, onnx_files = src.parent, [src.name]
    else:
        folder = src
        onnx_files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".onnx")
    names = {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    sub = folder / "additional_chat_templates"
    if sub.is_dir():
        names |= {f"additional_chat_templates/{p.name}" for p in sub.iterdir() if p.is_file()}
    side = sorted(n for n in names if is_side_file(n))
    has_safetensors = any(n.endswith(".safetensors") for n in names if "/" not in n)
    if src.is_dir() and has_safetensors:
        index = read_json(str(folder / INDEX_FILE)) if INDEX_FILE in names else None
        return sorted(set(side) | set(weight_files(names, index, where=f"{folder}{os.sep}")))
    if onnx_files:
        extra = {n for f in onnx_files for n in _onnx_external_files(folder / f)}
        # An ONNX export describes itself in JSON files whose names vary by exporter
        # (genai_config.json, ...): take them all.
        jsons = {n for n in names if "/" not in n and n.endswith(".json")}
        return sorted(set(side) | set(onnx_files) | extra | jsons)
    found = sorted(names)
    hint = ""
    if any(n.endswith((".bin", ".pt", ".pth", ".ckpt")) for n in found):
        hint = " (PyTorch pickle weights are not imported, for safety: save the model with safetensors)"
    raise ModelFileError(f"{folder}: no .safetensors or .onnx model files{hint}; found: {', '.join(found) or 'nothing'}",
                         file=str(folder))


def _safetensors_summary(folder: Path, files: list[str]) -> dict:
    elements: dict[str, int] = {}
    for rel in files:
        if not rel.endswith(".safetensors"):
            continue
        tensors, _ = _core.safetensors_read_header(str(folder / rel))
        for t in tensors:
            n = 1
            for d in t["shape"]:
                n *= int(d)
            dtype = _SAFETENSORS_DTYPES.get(t["dtype"], t["dtype"].lower())
            elements[dtype] = elements.get(dtype, 0) + n
    if not elements:
        return {}
    floats = {k: v for k, v in elements.items() if k.startswith(("float", "bfloat"))}
    dominant = max(floats or elements, key=lambda k: (floats or elements)[k])
    return {"dtype": dominant, "tensor_elements": elements, "parameters": sum(elements.values())}


def _quantization_of(config: dict) -> dict | None:
    q = config.get("quantization_config")
    if not isinstance(q, dict):
        return None
    out = {"method": q.get("quant_method") or q.get("method") or "unknown"}
    for key in ("bits", "group_size", "sym", "zero_point", "version"):
        if q.get(key) is not None:
            out[key] = q[key]
    return out


def quantized_as(folder: Path) -> str | None:
    """How a checkpoint folder's weights are quantized ("llmos int4", "awq"...), or None for
    float weights: what `llmos quantize` recorded in the safetensors metadata, else config.json's
    quantization_config. Reads headers only."""
    config = read_json(str(folder / "config.json"), required=False) or {}
    q = _quantization_of(config) if isinstance(config, dict) else None
    if q is not None:
        return str(q["method"])
    for p in sorted(folder.glob("*.safetensors")):
        _, metadata = _core.safetensors_read_header(str(p))
        if (metadata or {}).get("llmos_quant"):
            return f"llmos {metadata['llmos_quant']}"
    return None


def _relative_origin(origin: str | None, folder: Path) -> str | None:
    if not origin:
        return origin
    prefix = str(folder) + os.sep
    return origin[len(prefix):] if origin.startswith(prefix) else origin


def describe(folder: Path, files: list[str], hashes: dict[str, str] | None) -> dict:
    """The manifest fields read from the model's own files (no source or lineage)."""
    is_onnx = any(f.lower().endswith(".onnx") for f in files) and not any(f.endswith(".safetensors") for f in files)
    config_path = folder / "config.json"
    config = read_json(str(config_path), required=not is_onnx) or {}
    info: dict[str, Any] = {"model_format": "onnx" if is_onnx else "safetensors"}
    family = config.get("model_type")
    if not is_onnx:
        family_for(ConfigReader(config, str(config_path)))  # unsupported families fail here, not at load
    info["family"] = family
    info["architectures"] = config.get("architectures")
    summary = _safetensors_summary(folder, files) if not is_onnx else {}
    info["dtype"] = summary.get("dtype") or _config_dtype(config)
    info["quantization"] = _quantization_of(config)
    if summary:
        info["parameters"] = summary["parameters"]
        info["tensor_elements"] = summary["tensor_elements"]
    info.update(_text_info(folder, required=not is_onnx or (folder / "tokenizer.json").is_file()))
    entries = {}
    for rel in files:
        st = (folder / rel).stat()
        entries[rel] = {"size": st.st_size}
        if hashes is not None:
            entries[rel]["sha256"] = hashes[rel]
    info["files"] = entries
    info["size"] = sum(e["size"] for e in entries.values())
    if hashes is not None:
        info["digest"] = digest(hashes)
    return info


def _config_dtype(config: dict) -> str | None:
    name = config.get("torch_dtype") or config.get("dtype")
    return str(name).replace("torch.", "") if name else None


def _text_info(folder: Path, *, required: bool) -> dict:
    """Chat template and special tokens, read by the same Tokenizer that generation uses."""
    if not required:
        return {"chat_template": None, "chat_templates": {}, "chat_template_origin": None,
                "bos_token": None, "eos_token": None, "eos_token_ids": [], "eos_tokens": []}
    tok = Tokenizer.from_dir(folder)
    templates = dict(tok.chat_templates)
    default = tok.chat_template
    return {
        "chat_template": default,
        "chat_templates": {k: v for k, v in templates.items() if v != default or k != "default"},
        "chat_template_origin": _relative_origin(tok.chat_template_origin, folder),
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "eos_token_ids": list(tok.eos_token_ids),
        "eos_tokens": [tok.id_to_token(i) for i in tok.eos_token_ids],
    }


def digest(hashes: dict[str, str]) -> str:
    """One hash for the entry's content: sha256 of its `sha256sum`-style listing."""
    listing = "".join(f"{hashes[k]}  {k}\n" for k in sorted(hashes))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
