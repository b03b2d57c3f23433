"""`llmos.load`: from a name or a folder to a `Model` — the registry lookup, then the backend that fits the folder (the C++ core for safetensors checkpoints,
onnxruntime for ONNX decoders), the tokenizer and the decoding defaults."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from llmos.adapters.lora import base_candidates, is_adapter_dir, prepare_merge, read_adapter_config
from llmos.arch.families import family_for
from llmos.backends.base import check_threads
from llmos.backends.cpu import CpuBackend
from llmos.backends.device import Device, core_device, parse_device, place
from llmos.backends.onnx.layout import GENAI_CONFIG, is_onnx_model
from llmos.errors import AdapterError, InvalidInputError, LlmosError, ModelFileError
from llmos.extras import require
from llmos.io.config import ConfigReader, read_json
from llmos.io.gguf import GgufFile, is_gguf
from llmos.quant.names import parse_quant
from llmos.runtime.generation import GenerationConfig
from llmos.runtime.gguf_blocks import write_checkpoint
from llmos.runtime.model import Model
from llmos.store.resolve import resolve, resolved
from llmos.text.tokenizer import Tokenizer

DTYPES = ("float32", "bfloat16", "float16")
_TORCH_DTYPE_NAMES = {"float32": "float32", "float": "float32", "bfloat16": "bfloat16",
                      "float16": "float16", "half": "float16"}


def load(path: str, dtype: str | None = None, threads: int | None = None, quant: str | None = None,
         adapter: str | None = None, device: str = "auto") -> Model:
    """Loads a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json).

    dtype: "float32", "bfloat16" or "float16" for the weights (default: the checkpoint's).
    threads: compute threads (default: the number of physical cores).
    quant: quantize the matrices at load: "int8", "int4", "int4-asym", optionally with a
    group size suffix ("int4-g64"; 32 by default).
    A checkpoint that is already quantized loads as it is: one written by llmos.quantize,
    or an AWQ / GPTQ one (`quantization_config` in config.json), whose blocks go straight
    into llmos's int4 / int8 formats (llmos/quant/hf_import.py; `Model.quant_method` says which).
    quant= may then only repeat the checkpoint's own format (`Model.quant.name`).
    adapter: a LoRA adapter folder (llmos train --lora) merged into the weights as they load,
    in memory; an adapter for another base model is refused. `path` may also be the adapter
    folder itself: its adapter_config.json names the base, which is loaded with it merged.
    device: "auto" (default), "cpu", "cuda" or "cuda:N". An ONNX model runs on onnxruntime's CUDA
    provider for "cuda:N" (the 'gpu' extra: onnxruntime-gpu) and for "auto" when that provider is
    installed, else on the CPU. A checkpoint (or GGUF file) loads on the host and then moves to the
    GPU for "cuda:N", and for "auto" when this llmos was built with CUDA and a GPU is there; an
    architecture the GPU path does not run yet (mixture of experts, attention sinks, longrope, ...:
    cpp/model/decoder_cuda.h) stays on the CPU under "auto" and raises DeviceUnavailableError
    saying why under "cuda", as does a missing driver or GPU (`Model.device` says where a model runs).

    A folder holding an ONNX decoder (model.onnx, decoder_model_merged.onnx, genai_config.json)
    and no safetensors runs through onnxruntime instead (`Model.backend.name == "onnx"`).
    `path` may also name a model in the local registry (`llmos ls`), or a GGUF file (llama.cpp,
    Ollama; needs the 'gguf' extra): its Q8_0 / Q4_0 blocks load as llmos int8 / int4 blocks
    bit for bit, Q4_K as int4-asym blocks (scales rounded to float16), Q5_K / Q6_K re-quantized
    to int8 (llmos/runtime/gguf_blocks.py states the errors), unless `quant` names another format.
    """
    threads = check_threads(threads)
    dev = parse_device(device)
    if isinstance(path, (str, os.PathLike)) and os.path.isfile(path) and is_gguf(path):
        if adapter is not None:
            raise InvalidInputError(f"adapter: {os.fspath(path)} is a GGUF file; an adapter merges into a "
                                    "safetensors checkpoint (llmos import it first)", field="adapter")
        core_device(dev, os.fspath(path))  # refused before the file is converted
        return load_gguf(os.fspath(path), dtype=dtype, threads=threads, quant=quant, device=dev)
    # One version of a registry entry, kept whole while it loads even if the name is replaced.
    with resolved(path) as path, base_and_adapter(path, adapter) as (path, adapter):
        if is_onnx_model(path):
            if adapter is not None:
                raise InvalidInputError(f"adapter: {path} is an ONNX model; an adapter merges into a safetensors "
                                        "checkpoint", field="adapter")
            return load_onnx(path, dtype=dtype, threads=threads, quant=quant, device=dev)
        return load_checkpoint(path, dtype=dtype, threads=threads, quant=quant, adapter=adapter, device=dev)


@contextlib.contextmanager
def base_and_adapter(folder: str, adapter: str | None) -> Iterator[tuple[str, str | None]]:
    """(model folder, adapter) for a model given as `folder` with an optional `adapter`: as given,
    or, when `folder` is itself an adapter folder, the base it names (kept whole while the block
    runs) with `folder` as the adapter. An adapter folder given together with another adapter is
    refused."""
    if not is_adapter_dir(folder):
        yield folder, adapter
        return
    if adapter is not None:
        raise InvalidInputError(f"adapter: {folder} is itself an adapter; give its base model as the model "
                                "(or the adapter folder alone)", field="adapter")
    with resolved(adapter_base(folder)) as base:
        yield base, folder


def adapter_base(adapter_dir: str) -> str:
    """The folder of the base model that the adapter in `adapter_dir` names (the folder it was
    trained from, else the name or path it was given as); AdapterError when none is found."""
    cfg = read_adapter_config(adapter_dir)
    candidates = base_candidates(cfg)
    for candidate in candidates:
        try:
            folder = resolve(candidate)
        except LlmosError:
            continue
        if not is_adapter_dir(folder):
            return folder
    named = " or ".join(candidates) or "no base"
    raise AdapterError(f"{adapter_dir}: the adapter's base model ({named}) is not found; give the base "
                       f"explicitly: llmos.load(BASE, adapter={adapter_dir!r}), or --model BASE --adapter "
                       f"{adapter_dir}", file=adapter_dir, field="base_model")


def load_checkpoint(path: str, dtype: str | None, threads: int, quant: str | None,
                    adapter: str | None = None, device: Device = Device("cpu")) -> Model:
    """A safetensors checkpoint folder on the C++ core, with a LoRA adapter merged if given, moved
    to the GPU when `device` resolves to one (backends/device.py)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ModelFileError(f"{path}: not a directory (expected a Hugging Face checkpoint folder)", file=path)
    config_path = os.path.join(path, "config.json")
    cfg = ConfigReader(read_json(config_path), config_path)
    family = family_for(cfg)
    arch = family.architecture(cfg)
    if dtype is None:
        dtype = checkpoint_dtype(cfg)
    if dtype not in DTYPES:
        raise InvalidInputError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}", field="dtype")
    # The tokenizer is checked before the (slower) weight load so a bad folder fails fast.
    tokenizer = Tokenizer.from_dir(path)
    defaults = generation_defaults(path, cfg)
    merge = None if adapter is None else prepare_merge(path, os.fspath(adapter))
    where = core_device(device, path)  # an unusable GPU is refused before the weights load
    backend = CpuBackend.load(path, cfg, family, arch, dtype, threads, quant, adapter=merge)
    backend.device = place(backend.core, where, device, path)
    return Model(backend, tokenizer, arch, defaults, path)


def load_gguf(path: str, dtype: str | None, threads: int, quant: str | None, device: Device = Device("cpu")) -> Model:
    """A GGUF file, written out as a checkpoint folder (llmos.io.gguf) and loaded from there. A file
    with quantized matrices becomes an llmos pre-quantized checkpoint (its blocks mapped onto
    llmos's, or re-quantized: llmos/runtime/gguf_blocks.py) unless `quant` names another format: then
    every matrix is dequantized and quantized to `quant` at load (or kept float for "none")."""
    import shutil
    import tempfile
    import weakref

    gguf = GgufFile(path)
    suggested = gguf.suggested_quant()
    choice = parse_quant(quant)
    direct = suggested is not None and (quant is None or (choice is not None and choice.name == suggested))
    tmp = tempfile.mkdtemp(prefix="llmos-gguf-")
    try:
        if direct:
            folder = write_checkpoint(gguf, tmp, threads=threads)
            model = load_checkpoint(str(folder), dtype=dtype, threads=threads, quant=None, device=device)
        else:
            folder = gguf.write_folder(tmp)
            model = load_checkpoint(str(folder), dtype=dtype, threads=threads, quant=quant, device=device)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # the folder lives as long as the model (Model.path names it; files may be read later)
    weakref.finalize(model, shutil.rmtree, tmp, True)
    return model


def load_onnx(path: str, dtype: str | None, threads: int, quant: str | None, device: Device = Device("auto")) -> Model:
    """An ONNX decoder folder on onnxruntime."""
    require("onnx", f"{path}: an ONNX model", ("onnx", "onnxruntime"))
    from llmos.backends.onnx import backend as onnx_backend  # imports onnxruntime: only when used

    if quant is not None:
        raise InvalidInputError(f"quant: {path} is an ONNX model; it computes in the precision it was exported "
                                "with (export it with --precision int4, or load a checkpoint)", field="quant")
    # The tokenizer is checked before the (slower) session creation so a bad folder fails fast.
    tokenizer = Tokenizer.from_dir(os.path.dirname(onnx_backend.decoder_file(path)))
    backend = onnx_backend.load(path, threads, dtype, device=device)
    defaults = _onnx_generation_defaults(backend.folder, backend.config, backend.genai)
    return Model(backend, tokenizer, backend.arch, defaults, path)


def generation_defaults(path: str, cfg: ConfigReader) -> GenerationConfig:
    """Decoding defaults from generation_config.json (as transformers applies them); EOS falls
    back to config.json's."""
    gen_path = os.path.join(path, "generation_config.json")
    gen = read_json(gen_path, required=False) or {}
    out = GenerationConfig.from_dict(gen, strict=False, source=gen_path)
    if out.eos_token_id is None and cfg.raw("eos_token_id") is not None:
        out.eos_token_id = cfg.raw("eos_token_id")
    return out


def _onnx_generation_defaults(folder: str, cfg: ConfigReader, genai: dict | None) -> GenerationConfig:
    if os.path.isfile(os.path.join(folder, "generation_config.json")) or cfg.data or not genai:
        return generation_defaults(folder, cfg)
    # onnxruntime-genai keeps its decoding defaults in genai_config.json "search".
    search = genai.get("search") or {}
    out = {k: search[k] for k in ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty")
           if search.get(k) is not None}
    eos = (genai.get("model") or {}).get("eos_token_id")
    if eos is not None:
        out["eos_token_id"] = eos
    return GenerationConfig.from_dict(out, strict=False, source=os.path.join(folder, GENAI_CONFIG))


def checkpoint_dtype(cfg: ConfigReader) -> str:
    """The dtype the checkpoint was saved in, per config.json (float32 when unknown)."""
    name = cfg.raw("torch_dtype") or cfg.raw("dtype") or "float32"
    return _TORCH_DTYPE_NAMES.get(str(name).replace("torch.", ""), "float32")
