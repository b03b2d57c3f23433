"""LoRA adapters: their file format, and merging them into a base checkpoint, in memory as the
core loads it (`prepare_merge`) or into a new checkpoint folder (`apply_adapter`). The torch side
that trains them is llmos/train/lora.py.

An adapter folder holds ``adapter_model.safetensors`` (``<module>.lora_A.weight`` [r, in] and
``<module>.lora_B.weight`` [out, r] for every adapted module, float32) and ``adapter_config.json``
(r, alpha, the modules, and the base model: where it was (its folder, and the name or path it
was given as) and its identity, the sha256 of its weights plus its shape-defining config fields).
So an adapter folder loads by itself (`llmos.load('./fr-adapter')` finds its base), and a base
whose identity differs is refused: an adapter is never silently merged into the wrong weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmos import _core
from llmos.errors import AdapterError, InvalidInputError, ModelFileError
from llmos.io.files import sha256_file, write_json_atomic
from llmos.paths import cache_dir

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FORMAT = "llmos-lora"

# Projection names of the families llmos runs (Llama-like, fused Phi-3, GPT-2 Conv1D).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                   "qkv_proj", "gate_up_proj", "c_attn", "c_proj", "c_fc")
_IDENTITY_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
                    "num_attention_heads", "num_key_value_heads", "n_embd", "n_layer", "n_head")


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """``"r=16,alpha=32"`` (either may be left out; ``targets=q_proj+v_proj`` picks modules)."""
        values: dict = {}
        for part in filter(None, (p.strip() for p in (text or "").split(","))):
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            try:
                if not sep:
                    raise ValueError
                if key == "r":
                    values["r"] = int(value)
                elif key == "alpha":
                    values["alpha"] = float(value)
                elif key == "targets":
                    values["targets"] = tuple(t for t in value.split("+") if t)
                else:
                    raise KeyError(key)
            except KeyError:
                raise InvalidInputError(f"--lora: unknown key {key!r} (expected r, alpha, targets)",
                                        field="lora") from None
            except ValueError:
                raise InvalidInputError(f"--lora: {part!r} is not key=number (e.g. r=16,alpha=32)",
                                        field="lora") from None
        spec = cls(**values)
        if spec.r < 1 or not math.isfinite(spec.alpha) or spec.alpha <= 0 or not spec.targets:
            raise InvalidInputError(f"--lora: need r >= 1, alpha > 0 and at least one target, got {text!r}",
                                    field="lora")
        return spec


# ---- identity of a base checkpoint ------------------------------------------------------------


def weight_files(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            return sorted(set(json.load(f).get("weight_map", {}).values()))
    return sorted(n for n in os.listdir(folder) if n.endswith(".safetensors") and n != ADAPTER_WEIGHTS)


def base_identity(folder: str) -> dict:
    """What names a base model: the sha256 of its weights (over the files' hashes, as
    ``sha256sum`` lists them) and the config fields that fix tensor shapes."""
    files = weight_files(folder)
    if not files:
        raise ModelFileError(f"{folder}: no .safetensors weights", file=folder)
    listing = "".join(f"{sha256_file(os.path.join(folder, n))}  {n}\n" for n in files)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    return {"weights_sha256": hashlib.sha256(listing.encode()).hexdigest(),
            "config": {k: cfg[k] for k in _IDENTITY_FIELDS if k in cfg}}


def cached_base_identity(folder: str) -> dict:
    """base_identity, kept in $LLMOS_HOME/cache/identity: hashing a large model's weights at
    every load with an adapter would take longer than the load. The key is the folder and every
    file's name, size and modification time (a file rewritten in place with the same size within
    the same mtime tick would be missed)."""
    key = hashlib.sha256(os.path.abspath(folder).encode())
    for n in sorted(os.listdir(folder)):
        p = os.path.join(folder, n)
        if os.path.isfile(p):
            st = os.stat(p)
            key.update(f"\n{n}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    path = cache_dir("identity") / f"{key.hexdigest()[:32]}.json"
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    identity = base_identity(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, identity)
    except OSError:
        pass  # a read-only home only costs the hash next time
    return identity


# ---- adapter files ----------------------------------------------------------------------------


def is_adapter_dir(path: str) -> bool:
    """A folder that holds an adapter rather than a model: adapter_config.json and no config.json."""
    return (os.path.isfile(os.path.join(path, ADAPTER_CONFIG))
            and not os.path.isfile(os.path.join(path, "config.json")))


def read_adapter_config(adapter_dir: str) -> dict:
    """The checked adapter_config.json of an adapter folder; AdapterError when it is not one."""
    cfg_path = os.path.join(adapter_dir, ADAPTER_CONFIG)
    w_path = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            raise AdapterError(f"{adapter_dir}: not a LoRA adapter folder ({os.path.basename(p)} is missing)",
                               file=p)
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise AdapterError(f"{cfg_path}: cannot read the adapter config ({e})", file=cfg_path) from None
    if not isinstance(cfg, dict) or cfg.get("format") != ADAPTER_FORMAT:
        raise AdapterError(f"{cfg_path}: not an llmos LoRA adapter (expected \"format\": \"{ADAPTER_FORMAT}\")",
                           file=cfg_path, field="format")
    for key in ("r", "lora_alpha", "modules", "base_model"):
        if key not in cfg:
            raise AdapterError(f"{cfg_path}: field '{key}' is missing", file=cfg_path, field=key)
    if not isinstance(cfg["base_model"], dict):
        raise AdapterError(f"{cfg_path}: field 'base_model': expected an object", file=cfg_path, field="base_model")
    return cfg


def base_candidates(cfg: dict) -> list[str]:
    """Where the base model an adapter was trained on may be found, most exact first: the
    folder it was read from, then the name or path it was given as. Which one holds the same
    weights is for the identity check to say."""
    want = cfg["base_model"]
    return [c for c in (want.get("path"), want.get("name_or_path")) if isinstance(c, str) and c]


def read_adapter(adapter_dir: str) -> tuple[dict, dict]:
    """(adapter_config, tensors as float32 numpy arrays) of an adapter folder; AdapterError when
    it is not one."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    cfg = read_adapter_config(adapter_dir)
    w_path = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
    try:
        tensors = load_file(w_path)
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{w_path}: cannot read the adapter weights ({e})", file=w_path) from None
    for name in cfg["modules"]:
        for part in ("lora_A", "lora_B"):
            if f"{name}.{part}.weight" not in tensors:
                raise AdapterError(f"{w_path}: tensor {name}.{part}.weight is missing", file=w_path, field=name)
    return cfg, tensors


def _open_permissions(root: Path) -> None:
    """mkdtemp/mkstemp make owner-only files; a model folder gets the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~umask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~umask)


def replace_dir(src: Path, dst: Path) -> None:
    """Puts folder ``src`` at ``dst`` by rename; an existing ``dst`` is swapped out, not merged."""
    _open_permissions(Path(src))
    aside = None
    if dst.exists():
        aside = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.rename(dst, aside)
    try:
        os.rename(src, dst)
    except BaseException:
        if aside is not None:
            os.rename(aside, dst)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _tensor_name(name: str, available) -> str | None:
    """The checkpoint's name for module ``name``'s weight (base checkpoints drop the ``model.``
    prefix that the causal-LM wrapper adds)."""
    cands = [f"{name}.weight"]
    for prefix in ("model.", "transformer."):
        cands.append(f"{name[len(prefix):]}.weight" if name.startswith(prefix) else f"{prefix}{name}.weight")
    return next((c for c in cands if c in available), None)


def _check(base_dir: str, adapter_dir: str, cfg: dict, tensors: dict, check_identity: bool) -> dict:
    """{file name: {tensor name: module}} of the base tensors the adapter changes; AdapterError
    when the adapter was made for another base model: a module or shape it needs is missing, or
    (check_identity) the base's weights are not the ones it was trained on."""
    from safetensors import safe_open

    files = weight_files(base_dir)
    if not files:
        raise ModelFileError(f"{base_dir}: no .safetensors weights", file=base_dir)
    want = cfg["base_model"]
    trained_on = want.get("name_or_path", "another model")
    shapes: dict[str, tuple[str, tuple]] = {}
    for fname in files:
        with safe_open(os.path.join(base_dir, fname), "numpy") as f:
            for key in f.keys():
                shapes[key] = (fname, tuple(f.get_slice(key).get_shape()))
    plan: dict[str, dict[str, str]] = {}
    for name in cfg["modules"]:
        a, b = tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"]
        key = _tensor_name(name, shapes)
        if key is None:
            raise AdapterError(f"adapter {adapter_dir} was trained for {trained_on}: {base_dir} has no weight "
                               f"for module {name}, so it is a different model", file=adapter_dir, field=name)
        shape = shapes[key][1]
        need = (b.shape[0], a.shape[1])
        if name in set(cfg.get("transposed_modules") or []):
            need = need[::-1]
        if shape != need:
            raise AdapterError(f"adapter {adapter_dir} was trained for {trained_on}: tensor {key} of {base_dir} "
                               f"is {list(shape)}, the adapter needs {list(need)}", file=adapter_dir, field=key)
        plan.setdefault(shapes[key][0], {})[key] = name
    if check_identity:
        have = cached_base_identity(base_dir)
        if have["weights_sha256"] != want.get("weights_sha256"):
            raise AdapterError(
                f"adapter {adapter_dir} was trained for {trained_on} (weights sha256 "
                f"{str(want.get('weights_sha256'))[:12]}...), but {base_dir} has weights sha256 "
                f"{have['weights_sha256'][:12]}...: it is a different base model (merge anyway with "
                "check_identity=False only if these are the same weights saved differently)",
                file=adapter_dir, field="base_model")
    return plan


@dataclass(frozen=True)
class AdapterMerge:
    """An adapter checked against its base: for each base tensor it changes, the factors B
    [out, r] and A [r, in] whose product, times `scale`, is added (transposed for a Conv1D
    weight stored [in, out])."""

    factors: dict[str, tuple[np.ndarray, np.ndarray, bool]]
    scale: float

    def merged(self, file: str, tensor: str) -> np.ndarray:
        """Base tensor `tensor` of `file` with the adapter added, float32."""
        b, a, transposed = self.factors[tensor]
        w = _core.safetensors_read_tensor(file, tensor)
        if w.dtype == np.uint16:  # bfloat16 bits
            w = (w.astype(np.uint32) << 16).view(np.float32)
        delta = (b @ a) * np.float32(self.scale)
        return w.astype(np.float32) + (delta.T if transposed else delta)

    def sources(self, sources):
        """The core's sources with each adapted tensor replaced by its merged array, made when
        the core reaches its role: one merged role at a time is in memory."""
        for role, layer, parts, prequant, group in sources:
            if prequant is None and any(tensor in self.factors for _, tensor, _ in parts):
                parts = [(tensor, self.merged(file, tensor), tr) if tensor in self.factors else (file, tensor, tr)
                         for file, tensor, tr in parts]
            yield role, layer, parts, prequant, group


def prepare_merge(base_dir: str, adapter_dir: str, *, check_identity: bool = True) -> AdapterMerge:
    """The adapter in ``adapter_dir``, checked against the checkpoint ``base_dir``, to merge as the
    core loads it (``llmos.load(path, adapter=...)``): nothing is written but the base's identity
    hash in the cache. Raises AdapterError as apply_adapter does."""
    base_dir, adapter_dir = os.fspath(base_dir), os.fspath(adapter_dir)
    cfg, tensors = read_adapter(adapter_dir)
    plan = _check(base_dir, adapter_dir, cfg, tensors, check_identity)
    transposed = set(cfg.get("transposed_modules") or [])
    factors = {key: (tensors[f"{name}.lora_B.weight"].astype(np.float32),
                     tensors[f"{name}.lora_A.weight"].astype(np.float32), name in transposed)
               for keys in plan.values() for key, name in keys.items()}
    return AdapterMerge(factors, float(cfg["lora_alpha"]) / float(cfg["r"]))


def apply_adapter(base_dir: str, adapter_dir: str, out_dir: str, *, check_identity: bool = True) -> str:
    """Writes ``base_dir`` with the adapter merged into its weights to ``out_dir`` (a complete
    checkpoint folder: config, tokenizer, chat template and generation config come from the base).

    Raises AdapterError when the adapter was made for another base model: a module or shape it
    needs is missing, or (``check_identity``) the base's weights are not the ones it was trained
    on.
    """
    import torch  # the merge into files runs in torch, which keeps each tensor's dtype
    from safetensors import safe_open
    from safetensors.torch import save_file

    base_dir, adapter_dir = os.fspath(base_dir), os.fspath(adapter_dir)
    cfg, tensors = read_adapter(adapter_dir)
    plan = _check(base_dir, adapter_dir, cfg, tensors, check_identity)
    files = weight_files(base_dir)
    scale = float(cfg["lora_alpha"]) / float(cfg["r"])
    transposed = set(cfg.get("transposed_modules") or [])
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for entry in os.listdir(base_dir):
            src = os.path.join(base_dir, entry)
            if entry in files or entry.startswith(".") or entry == "llmos-manifest.json":
                continue
            if os.path.isdir(src):
                shutil.copytree(src, tmp / entry)
            else:
                shutil.copy2(src, tmp / entry)
        for fname in files:
            merged = {}
            with safe_open(os.path.join(base_dir, fname), "pt") as f:
                metadata = f.metadata()
                for key in f.keys():
                    t = f.get_tensor(key)
                    if key in plan.get(fname, {}):
                        name = plan[fname][key]
                        delta = (torch.from_numpy(tensors[f"{name}.lora_B.weight"])
                                 @ torch.from_numpy(tensors[f"{name}.lora_A.weight"])) * scale
                        if name in transposed:
                            delta = delta.t()
                        t = (t.to(torch.float32) + delta).to(t.dtype)
                    merged[key] = t.contiguous()
            save_file(merged, str(tmp / fname), metadata=metadata or {"format": "pt"})
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)
