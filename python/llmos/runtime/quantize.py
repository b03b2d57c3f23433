"""llmos.quantize: write a checkpoint whose matrices are already quantized.

The output is a Hugging Face folder (config.json, tokenizer files...) whose
model.safetensors holds, for every quantized matrix, `llmos.<role>[.<layer>].codes`
(uint8), `.scale` (float16) and, for int4-asym, `.min` (float16), laid out as
cpp/quant/qformat.h describes, plus the float tensors (norms, biases, matrices that do not
fit the blocks) under their original names. The safetensors metadata records the format
(llmos_format), the quantization, which roles are quantized, and the sha256 of the source
weights. llmos.load reads it by mmap and copies the blocks as they are: no re-quantization.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from typing import Callable

import numpy as np
from safetensors.numpy import save_file

from llmos import _core
from llmos.adapters.lora import AdapterMerge, prepare_merge
from llmos.arch.families import family_for
from llmos.backends.base import check_threads
from llmos.backends.cpu import CpuBackend
from llmos.errors import DiskFullError, InvalidInputError
from llmos.io.files import hash_file, is_disk_full
from llmos.io.checkpoint import resolve, tensor_locations
from llmos.io.config import ConfigReader, read_json
from llmos.quant.names import parse_quant

FORMAT_VERSION = "1"
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja", "chat_template.json")


def _sha256(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        hash_file(p, h)
    return h.hexdigest()


def quantize(path: str, out_dir: str, quant: str = "int4", *, threads: int | None = None,
             adapter: str | None = None, progress: Callable[[int, int], None] | None = None) -> str:
    """Quantizes the checkpoint at `path` into `out_dir` (created or empty); returns out_dir.
    Written to a temporary folder first and moved into place, so a failure leaves nothing.
    adapter: a LoRA adapter folder merged into the weights before they are quantized.
    progress: called with (steps done, steps): one step per weight role loaded and quantized
    by the core, one for writing the file."""
    choice = parse_quant(quant)
    if choice is None:
        raise InvalidInputError("quant: choose int8, int4 or int4-asym", field="quant")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise InvalidInputError(f"{out_dir}: exists and is not empty", field="out_dir")
    roles = [0]

    def loaded(done: int, total: int) -> None:
        roles[0] = total
        if progress is not None:
            progress(done, total + 1)

    merge = None if adapter is None else prepare_merge(path, os.fspath(adapter))
    m = _load_cpu(path, threads, choice.name, loaded, merge)
    if m.prequantized:
        raise InvalidInputError(f"{path}: is already quantized ({m.quant.name})", field="path")
    locations = tensor_locations(m.path)

    tensors: dict[str, np.ndarray] = {}
    quantized = []
    for role, layer, qtype, group, codes, scale, mn in m.quantized_matrices():
        base = f"llmos.{role}" + (f".{layer}" if layer >= 0 else "")
        tensors[base + ".codes"] = codes
        tensors[base + ".scale"] = scale.view(np.float16)
        if mn is not None:
            tensors[base + ".min"] = mn.view(np.float16)
        quantized.append([role, layer, int(qtype), group])  # QuantType's number
    done = {(r, l) for r, l, _, _ in quantized}
    by_file: dict[str, list[str]] = {}
    for role, layer, parts in m.family.tensors(m.arch):
        if (role, layer) in done:
            continue
        for name, _ in parts:
            file, tensor = resolve(locations, name, m.path, role)
            by_file.setdefault(file, []).append(tensor)
    for file, names in by_file.items():
        for name in names:
            # A matrix left in float (it does not fit the blocks) still gets the adapter.
            if merge is not None and name in merge.factors:
                arr = merge.merged(file, name)
            else:
                arr = _core.safetensors_read_tensor(file, name)
            # bfloat16 comes back as raw uint16 bits: widen to float32, which loads exactly.
            if arr.dtype == np.uint16:
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            tensors[name] = arr

    metadata = {
        "format": "pt",
        "llmos_format": FORMAT_VERSION,
        "llmos_quant": choice.name,
        "llmos_quantized": json.dumps(quantized),
        "llmos_source_sha256": _sha256(set(locations.values())),
    }
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".llmos-quantize-", dir=parent)
    try:
        weights = os.path.join(tmp, "model.safetensors")
        save_file(tensors, weights, metadata=metadata)
        _check_written(weights)
        if progress is not None:
            progress(roles[0] + 1, roles[0] + 1)
        for name in SIDE_FILES:
            src = os.path.join(m.path, name)
            if os.path.exists(src):
                shutil.copy2(src, os.path.join(tmp, name))
        if os.path.exists(out_dir):
            os.rmdir(out_dir)
        os.replace(tmp, out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _out_of_space(e):
            raise DiskFullError(f"no space left on the disk holding {parent} while writing the quantized model to "
                                f"{out_dir}; nothing was written (the partial files were removed). Free up space "
                                "or write elsewhere", file=out_dir) from e
        raise
    return out_dir


def _check_written(path: str) -> None:
    """safetensors can drop the error of its last buffered write (a full disk then leaves a short
    file and no exception): fsync, and read the header back, which checks the data's length."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    try:
        _core.safetensors_read_header(path)
    except Exception as e:
        raise OSError(errno.ENOSPC, f"{path} is incomplete after writing ({e})", path) from e


def _out_of_space(e: BaseException) -> bool:
    """A full disk, whether it arrives as an OSError or as safetensors' SafetensorError (which
    carries the io error only in its text: 'IoError(Os { code: 28, kind: StorageFull ...')."""
    if is_disk_full(e):
        return True
    text = str(e)
    return type(e).__name__ == "SafetensorError" and ("StorageFull" in text or "code: 28," in text
                                                      or "No space left" in text or "QuotaExceeded" in text)


def _load_cpu(path: str, threads: int | None, quant: str, progress: Callable[[int, int], None] | None = None,
              adapter: AdapterMerge | None = None) -> CpuBackend:
    """The checkpoint in the core, float32 weights quantized to `quant` at load."""
    config_path = os.path.join(path, "config.json")
    cfg = ConfigReader(read_json(config_path), config_path)
    family = family_for(cfg)
    return CpuBackend.load(path, cfg, family, family.architecture(cfg), "float32", check_threads(threads), quant,
                           adapter=adapter, progress=progress)
