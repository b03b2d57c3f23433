"""The C++ core as a backend: a checkpoint's tensors named for the core, loaded (and
quantized, or copied as pre-quantized blocks) into `_core.Model`, which runs every token."""

from __future__ import annotations

import json
from typing import Callable

import numpy as np

from llmos import _core
from llmos.adapters.lora import AdapterMerge
from llmos.arch.families import Architecture, Family
from llmos.arch.shapes import check_against_tensors
from llmos.errors import InvalidInputError, SafetensorsError
from llmos.io.checkpoint import float_source, tensor_locations, tensor_shapes
from llmos.io.config import ConfigReader
from llmos.quant import hf_import
from llmos.quant.names import QuantChoice, parse_quant


class CpuBackend:
    """A checkpoint in the C++ core. Create with `CpuBackend.load`.

    quant: the QuantChoice of the matrices (None: float); quant_method: where pre-quantized
    blocks came from ("llmos" for llmos.quantize, "awq", "gptq") or None; prequantized: the
    checkpoint was quantized before loading.
    """

    name = "cpu"
    device = "cpu"  # "cuda:N" once the core model is moved to a GPU (backends/device.py place)

    def __init__(self, core: "_core.Model", path: str, family: Family, arch: Architecture, dtype: str,
                 quant: QuantChoice | None, quant_method: str | None, prequantized: bool):
        self.core = core
        self.path = path
        self.family = family
        self.arch = arch
        self.dtype = dtype
        self.quant = quant
        self.quant_method = quant_method
        self.prequantized = prequantized

    @classmethod
    def load(cls, path: str, cfg: ConfigReader, family: Family, arch: Architecture, dtype: str, threads: int,
             quant: str | None = None, adapter: AdapterMerge | None = None,
             progress: Callable[[int, int], None] | None = None) -> "CpuBackend":
        """adapter: a LoRA adapter to merge into the float weights as they load.
        progress: called with (roles loaded, roles) as the core takes each one."""
        locations = tensor_locations(path)
        prequant = _prequantized_roles(locations)
        hf = None if prequant else hf_import.read_config(cfg)
        choice = parse_quant(quant)
        quant_method = "llmos" if prequant else None
        converted = None
        if hf is not None:
            # AWQ / GPTQ: the blocks are repacked into llmos's format and loaded through the
            # same pre-quantized path (see quant/hf_import.py); float parts stay float.
            converted = hf_import.convert(hf, family, arch, locations, path, threads=threads)
            sources, saved = converted.sources, converted.choice
            quant_method = hf.method
        else:
            # Nothing is allocated for the weights before the config agrees with the tensors.
            check_against_tensors(cfg.path, family, arch, tensor_shapes(locations), locations,
                                  skip=prequant.keys())
            sources, saved = [], parse_quant(prequant["__quant__"]) if prequant else None
            for role, layer, parts in family.tensors(arch):
                if (role, layer) in prequant:
                    file, base, qtype, group = prequant[(role, layer)]
                    sources.append((role, layer, [(file, base, False)], qtype, group))
                else:
                    sources.append(float_source(locations, role, layer, parts, path))
        to_quantize = choice
        if saved is not None:
            if choice is not None and choice.name != saved.name:
                how = f" with {hf.label}" if hf is not None else ""
                raise InvalidInputError(f"quant: {path} is already quantized{how} as {saved.name}, not {quant} "
                                        "(load it without quant=)", field="quant")
            choice, to_quantize = saved, None
        n_roles = len(sources)
        stream = converted.drain() if converted else sources
        if progress is not None:
            stream = _reported(stream, n_roles, progress)
        if adapter is not None:
            stream = adapter.sources(stream)
        q = to_quantize  # what the core quantizes at load: nothing when the blocks came quantized
        core = _core.Model(arch.to_core(_core), stream, dtype, threads,
                           q.type if q else None, q.group if q else 32, q.head_type if q else None)
        return cls(core, path, family, arch, dtype, choice, quant_method, saved is not None)

    @property
    def threads(self) -> int:
        return self.core.n_threads

    @property
    def isa(self) -> str:
        return "cuda" if self.device.startswith("cuda") else self.core.isa

    def logits(self, ids: np.ndarray) -> np.ndarray:
        return self.core.logits(ids)

    def generate(self, prompts, options, on_token=None, cancel=None, constraints=None) -> list[dict]:
        return self.core.generate(prompts, options, on_token, cancel, constraints)

    def quantized_matrices(self) -> list:
        """The quantized blocks (role, layer, type, group, codes, scale, min), for saving."""
        return self.core.quantized_matrices()


def _reported(stream, total: int, progress: Callable[[int, int], None]):
    """`stream`, calling progress(done, total) once the core has taken each source (it asks for
    the next one when it has copied the last)."""
    for done, source in enumerate(stream, start=1):
        yield source
        progress(done, total)


def _prequantized_roles(locations: dict[str, str]) -> dict:
    """For a checkpoint written by llmos.quantize: {(role, layer): (file, base name, type,
    group)} and "__quant__"; {} for any other checkpoint."""
    out: dict = {}
    for file in sorted(set(locations.values())):
        _, meta = _core.safetensors_read_header(file)
        if "llmos_format" not in meta:
            continue
        if meta["llmos_format"] != "1":
            raise SafetensorsError(f"{file}: llmos_format {meta['llmos_format']!r} is newer than this llmos reads (1)",
                                   file=file, field="llmos_format")
        try:
            entries = json.loads(meta["llmos_quantized"])
            for role, layer, qtype, group in entries:
                base = f"llmos.{role}" + (f".{layer}" if layer >= 0 else "")
                out[(role, int(layer))] = (file, base, _core.QuantType(int(qtype)), int(group))
            out["__quant__"] = meta["llmos_quant"]
        except (KeyError, ValueError, TypeError) as e:
            raise SafetensorsError(f"{file}: metadata field llmos_quantized is malformed ({e})",
                                   file=file, field="llmos_quantized") from None
    return out
