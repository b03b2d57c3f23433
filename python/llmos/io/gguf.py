"""GGUF files (llama.cpp, Ollama) as Hugging Face checkpoint folders: the architecture from the
metadata onto config.json, the vocabulary onto tokenizer.json (llmos/io/gguf_tokenizer.py: byte-level
BPE or SentencePiece BPE; the chat template in tokenizer_config.json), the tensors onto
model.safetensors under the transformers names.

Weights: a file with quantized matrices is written by llmos/runtime/gguf_blocks.py
as an llmos pre-quantized checkpoint: Q8_0 and Q4_0 blocks become llmos int8 / int4 blocks
bit for bit, Q4_K blocks int4-asym ones (their scales rounded to float16), Q5_K / Q6_K are
dequantized and re-quantized to int8 (the errors are stated there), F32/F16/BF16 matrices stay
float. `suggested_quant` names the checkpoint's format (int4 when the file has 4-bit matrices,
else int8). `write_folder` writes the whole file in float32 instead (every tensor dequantized),
for loading at another quant= or none.
Per architecture (llmos/io/gguf_arch.py): llama.cpp's converter permutes the llama Q/K rows into
its rope layout, undone here exactly (on whole rows: floats and blocks alike); Gemma's norms are
stored as 1 + w; experts are stacked [expert, rows, cols] and cut per expert here.

A hostile file is refused before anything large is allocated: the header's counts, each tensor's
shape and element count and its data range are checked against llmos.limits and the file size.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from llmos import limits
from llmos.errors import ModelFileError, ModelFormatError
from llmos.extras import require
from llmos.io import gguf_arch
from llmos.io.gguf_arch import ARCHITECTURES, NOT_WEIGHTS, arch_for, hf_names

_Q8 = "int8"
_Q4 = "int4"
# GGML type name -> the llmos size class of its weights (None: float): suggested_quant's answer.
# How each type's blocks become llmos blocks is llmos/runtime/gguf_blocks.py's.
_TYPES = {"F32": None, "F16": None, "BF16": None, "Q8_0": _Q8, "Q4_0": _Q4, "Q4_K": _Q4, "Q5_K": _Q8,
          "Q6_K": _Q8}


def _gguf():
    require("gguf", "reading a GGUF file")
    import gguf

    return gguf


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether `path` is a file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _check_header(path: str, size: int) -> None:
    """The header's counts against the limits, before the gguf reader walks (and maps) them."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:4] != b"GGUF":
        raise ModelFormatError(f"{path}: not a GGUF file (no GGUF header)", file=path, field="magic")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:])
    if version not in (2, 3):
        raise ModelFormatError(f"{path}: GGUF version {version} is not supported (2 or 3)", file=path,
                               field="version")
    _limit(path, "gguf_max_tensors", n_tensors, "tensor_count")
    _limit(path, "gguf_max_metadata", n_kv, "metadata_kv_count")


def _limit(path: str, name: str, value: int, field: str) -> None:
    bound = getattr(limits.current(), name)
    if value > bound:
        raise ModelFormatError(f"{path}: {field}={value} is over the limit of {bound} (llmos.limits.{name}; "
                               f"raise it with llmos.limits.configure({name}=...))", file=path, field=field)


class GgufFile:
    """One GGUF file, checked: metadata, tensors (lazily dequantized), tokenizer."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ModelFileError(f"{self.path}: no such file", file=self.path)
        size = os.path.getsize(self.path)
        _check_header(self.path, size)
        gguf = _gguf()
        try:
            self.reader = gguf.GGUFReader(self.path, "r")
        except (ValueError, IndexError, KeyError, struct.error, OverflowError, UnicodeDecodeError, MemoryError) as e:
            raise ModelFormatError(f"{self.path}: malformed GGUF ({type(e).__name__}: {e})", file=self.path,
                                   field="header") from None
        self.fields = {name: f for name, f in self.reader.fields.items()}
        self.arch = self.string("general.architecture")
        if self.arch not in ARCHITECTURES:
            raise ModelFormatError(f"{self.path}: GGUF architecture {self.arch!r} is not supported; supported: "
                                   f"{', '.join(sorted(ARCHITECTURES))} (llama with expert_count: Mixtral)", file=self.path,
                                   field="general.architecture")
        self.tensors = {}
        for t in self.reader.tensors:
            shape = [int(d) for d in t.shape]
            n = int(np.prod(shape, dtype=object)) if shape else 1
            if len(shape) > 4 or any(d <= 0 for d in shape):
                raise ModelFormatError(f"{self.path}: tensor {t.name}: bad shape {shape}", file=self.path,
                                       field=f"{t.name}.shape")
            _limit(self.path, "gguf_max_tensor_elements", n, f"{t.name}.n_elements")
            if t.data_offset + int(t.n_bytes) > size or t.data.nbytes != int(t.n_bytes):
                raise ModelFormatError(f"{self.path}: tensor {t.name}: data [{t.data_offset}, "
                                       f"{t.data_offset + int(t.n_bytes)}) runs past the file's {size} bytes",
                                       file=self.path, field=f"{t.name}.offset")
            if t.tensor_type.name not in _TYPES:
                raise ModelFormatError(f"{self.path}: tensor {t.name} has GGML type {t.tensor_type.name}; llmos "
                                       f"reads {', '.join(_TYPES)}", file=self.path, field=f"{t.name}.type")
            self.tensors[t.name] = t
        self.spec = arch_for(self)
        self._sources = None

    # --- metadata ------------------------------------------------------------------------------
    def value(self, key: str, default=None, *, required: bool = False):
        f = self.fields.get(key)
        if f is None:
            if required:
                raise ModelFormatError(f"{self.path}: metadata {key} is missing", file=self.path, field=key)
            return default
        try:
            return f.contents()
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            raise ModelFormatError(f"{self.path}: metadata {key} is malformed ({e})", file=self.path,
                                   field=key) from None

    def string(self, key: str) -> str:
        v = self.value(key, required=True)
        if not isinstance(v, str):
            raise ModelFormatError(f"{self.path}: metadata {key} is not a string", file=self.path, field=key)
        return v

    def number(self, key: str, default=None, *, required: bool = False):
        v = self.value(f"{self.arch}.{key}", default, required=required)
        if isinstance(v, float):
            v = float(str(np.float32(v)))  # GGUF stores float32: 1e-05, not 9.99999974e-06
        if v is not None and not isinstance(v, (int, float)):
            raise ModelFormatError(f"{self.path}: metadata {self.arch}.{key} is not a number", file=self.path,
                                   field=f"{self.arch}.{key}")
        return v

    # --- config --------------------------------------------------------------------------------
    def config(self) -> dict:
        scaling = self.value(f"{self.arch}.rope.scaling.type", "none")
        linear = scaling == "linear" and self.spec.model_type != "phi3"  # Gemma 3: its full layers only
        longrope = scaling == "longrope" and self.spec.model_type == "phi3"  # the factors are tensors
        if scaling != "none" and not (linear or longrope):
            raise ModelFormatError(f"{self.path}: {self.arch}.rope.scaling.type={scaling!r} is not supported from "
                                   "GGUF (load the Hugging Face folder)", file=self.path,
                                   field=f"{self.arch}.rope.scaling.type")
        tokens = self.value("tokenizer.ggml.tokens", required=True)
        limits.check("gguf_max_vocab", len(tokens), what=f"{self.path}: tokenizer.ggml.tokens")
        n_head = self.number("attention.head_count", required=True)
        hidden = self.number("embedding_length", required=True)
        # per-layer lists are built from it before the family's own checks run
        _limit(self.path, "max_layers", self.number("block_count", required=True), f"{self.arch}.block_count")
        cfg = {
            "vocab_size": len(tokens),
            "hidden_size": hidden,
            "intermediate_size": self.number("feed_forward_length", required=True),
            "num_hidden_layers": self.number("block_count", required=True),
            "num_attention_heads": n_head,
            "num_key_value_heads": self.number("attention.head_count_kv", n_head),
            "head_dim": self.number("attention.key_length", hidden // max(1, n_head)),
            "max_position_embeddings": self.number("context_length", 4096),
            "rms_norm_eps": self.number("attention.layer_norm_rms_epsilon", 1e-6),
            "rope_theta": self.number("rope.freq_base", 10000.0),
            "tie_word_embeddings": "output.weight" not in self.tensors,
            "torch_dtype": "float32",
            "hidden_act": "silu",
        }
        if linear:
            factor = self.number("rope.scaling.factor", required=True)
            if not factor > 0:
                raise ModelFormatError(f"{self.path}: {self.arch}.rope.scaling.factor={factor} is not positive",
                                       file=self.path, field=f"{self.arch}.rope.scaling.factor")
            cfg["rope_scaling"] = {"rope_type": "linear", "factor": factor}
        if self.arch in ("llama", "mistral"):
            cfg["attention_bias"] = "blk.0.attn_q.bias" in self.tensors
        for key, name in (("bos_token_id", "tokenizer.ggml.bos_token_id"),
                          ("eos_token_id", "tokenizer.ggml.eos_token_id")):
            v = self.value(name)
            if v is not None:
                cfg[key] = int(v)
        return gguf_arch.config(self, self.spec, cfg)

    # --- tensors -------------------------------------------------------------------------------
    def suggested_quant(self) -> str | None:
        """The llmos format the file loads as (`Model.quant.name`): int4 when it has 4-bit matrices,
        else int8; None when every tensor is float."""
        kinds = {_TYPES[t.tensor_type.name] for t in self.tensors.values()} - {None}
        return _Q4 if _Q4 in kinds else (_Q8 if kinds else None)

    def sources(self) -> dict[str, tuple[str, int | None]]:
        """{transformers tensor name: (GGUF tensor, expert or None)} for every weight in the file
        (a stacked expert tensor holds one per expert; -1: the tensor is one expert alone)."""
        if self._sources is None:
            out = {}
            for name in self.tensors:
                if name in NOT_WEIGHTS:
                    continue
                for hf, expert in hf_names(self, self.spec, name):
                    if hf in out:
                        raise ModelFormatError(f"{self.path}: tensors {out[hf][0]} and {name} both hold {hf}",
                                               file=self.path, field=name)
                    out[hf] = (name, expert)
            self._sources = out
        return self._sources

    def array(self, name: str, cfg: dict, expert: int | None = None) -> np.ndarray:
        """The tensor `name` as float32, in the transformers layout; `expert`: only that expert of
        a stacked expert tensor (None or -1: all of it)."""
        gguf = _gguf()
        t = self.tensors[name]
        shape = tuple(reversed([int(d) for d in t.shape]))
        data = t.data
        if expert is not None and expert >= 0:
            data, shape = data[expert], shape[1:]
        try:
            if t.tensor_type.name == "F32":
                w = np.asarray(data, dtype=np.float32).reshape(shape)
            else:
                w = gguf.quants.dequantize(data, t.tensor_type).astype(np.float32).reshape(shape)
        except (ValueError, NotImplementedError) as e:
            raise ModelFormatError(f"{self.path}: tensor {name} ({t.tensor_type.name}) cannot be read: {e}",
                                   file=self.path, field=name) from None
        if self.spec.norm_shift and name.endswith("norm.weight"):
            w = w - np.float32(self.spec.norm_shift)  # the converter stored 1 + w
        heads = self.rope_heads(name, cfg)
        return w if heads is None else unpermute(w, heads)

    def hf_array(self, hf: str, cfg: dict) -> np.ndarray:
        """The transformers tensor `hf` as float32."""
        name, expert = self.sources()[hf]
        w = self.array(name, cfg, expert)
        if hf.endswith("shared_expert_gate.weight"):
            w = w.reshape(1, -1)  # [1, hidden] in transformers; llama.cpp may hold it 1-D
        return np.ascontiguousarray(w)

    def vector(self, name: str, n: int) -> list[float]:
        """The 1-D float tensor `name` of `n` values (rope factors) as a list."""
        t = self.tensors[name]
        if [int(d) for d in t.shape] != [n] or t.tensor_type.name != "F32":
            raise ModelFormatError(f"{self.path}: tensor {name}: expected {n} float32 values, got "
                                   f"{t.tensor_type.name} {[int(d) for d in t.shape]}", file=self.path,
                                   field=f"{name}.shape")
        return [float(v) for v in np.asarray(t.data, np.float32)]

    def rope_heads(self, name: str, cfg: dict) -> int | None:
        """The head count whose rope permutation llama.cpp applied to the rows of `name`, or None."""
        if self.spec.rope_permuted and (name.endswith("attn_q.weight") or name.endswith("attn_k.weight")):
            return cfg["num_attention_heads"] if "attn_q" in name else cfg["num_key_value_heads"]
        return None

    def state_dict(self, cfg: dict) -> dict[str, np.ndarray]:
        return {hf: self.hf_array(hf, cfg) for hf in self.sources()}

    # --- tokenizer -----------------------------------------------------------------------------
    def tokenizer_json(self) -> str:
        from llmos.io.gguf_tokenizer import tokenizer_json

        return tokenizer_json(self)

    def tokenizer_config(self) -> dict:
        tokens = self.value("tokenizer.ggml.tokens", required=True)
        out = {"model_max_length": 1 << 30}
        for key, name in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                          ("pad_token", "padding_token_id")):
            v = self.value(f"tokenizer.ggml.{name}")
            if v is not None and 0 <= int(v) < len(tokens):
                out[key] = tokens[int(v)]
        template = self.value("tokenizer.chat_template")
        if isinstance(template, str):
            out["chat_template"] = template
        return out

    def write_metadata(self, out_dir: str | os.PathLike) -> tuple[Path, dict]:
        """Creates `out_dir` with the file's config.json, tokenizer.json and tokenizer_config.json;
        returns the folder and the config (every checkpoint written from the file starts so)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = self.config()
        (out / "tokenizer.json").write_text(self.tokenizer_json())
        (out / "tokenizer_config.json").write_text(json.dumps(self.tokenizer_config(), indent=2))
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
        return out, cfg

    def write_folder(self, out_dir: str | os.PathLike) -> Path:
        """Writes the file as a Hugging Face checkpoint folder (float32 weights)."""
        from safetensors.numpy import save_file

        out, cfg = self.write_metadata(out_dir)
        save_file(self.state_dict(cfg), str(out / "model.safetensors"), metadata={"format": "pt"})
        return out


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's convert_hf_to_gguf permute of Q/K rows (its rope layout)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permute (the inverse of `unpermute`), for writing test files."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

