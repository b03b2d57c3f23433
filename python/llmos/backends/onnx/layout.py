"""The decoder I/O layout (optimum's `text-generation-with-past`) and finding it in a folder.

Inputs: input_ids [batch, seq], attention_mask [batch, past + seq], position_ids [batch, seq],
past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim]. Outputs: logits
[batch, seq, vocab], present.{i}.key / .value [batch, kv_heads, past + seq, head_dim].
optimum, the onnxruntime-genai model builder and our export all write this layout (the
builder drops position_ids; older optimum merged graphs add use_cache_branch), so one
reader serves all of them. This module does not import onnx: `llmos.load` uses it to decide
whether a folder is an ONNX model at all.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from llmos.errors import ModelFileError, ModelFormatError

# Export choices, here (not in export.py / decoder.py) so the CLI can offer them without
# importing onnx.
PRECISIONS = ("fp32", "fp16", "int4")
DEFAULT_OPSET = 17

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"
USE_CACHE_BRANCH = "use_cache_branch"
METADATA_FILE = "llmos_onnx.json"
GENAI_CONFIG = "genai_config.json"
# Decoder file names, most capable first: with a KV cache before without.
ONNX_FILES = ("model.onnx", "decoder_model_merged.onnx", "decoder_with_past_model.onnx", "decoder_model.onnx")

_PAST = re.compile(r"^past(?:_key_values)?[._](\d+)[._](key|value)$")
_PRESENT = re.compile(r"^present(?:_key_values)?[._](\d+)[._](key|value)$")


def past_key(i: int) -> str:
    return f"past_key_values.{i}.key"


def past_value(i: int) -> str:
    return f"past_key_values.{i}.value"


def present_key(i: int) -> str:
    return f"present.{i}.key"


def present_value(i: int) -> str:
    return f"present.{i}.value"


def find_onnx_file(path: str) -> str | None:
    """The decoder .onnx file of a folder (or `path` itself when it is an .onnx file), or None."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path if path.endswith(".onnx") else None
    if not os.path.isdir(path):
        return None
    genai = os.path.join(path, GENAI_CONFIG)
    if os.path.isfile(genai):
        try:
            with open(genai, encoding="utf-8") as f:
                name = json.load(f)["model"]["decoder"]["filename"]
            if isinstance(name, str) and os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a broken genai_config.json still leaves the usual names to try
    for name in ONNX_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    found = sorted(f for f in os.listdir(path) if f.endswith(".onnx") and os.path.isfile(os.path.join(path, f)))
    return os.path.join(path, found[0]) if len(found) == 1 else None


def is_onnx_model(path: str) -> bool:
    """True for a folder holding an ONNX decoder and no safetensors weights (or an .onnx file):
    a Hugging Face folder that also ships an onnx/ copy still loads into the core."""
    path = os.fspath(path)
    if os.path.isdir(path) and any(f.endswith(".safetensors") for f in os.listdir(path)):
        return False
    return find_onnx_file(path) is not None


@dataclass
class Tensor:
    name: str
    type: str           # numpy dtype name: float32, float16, int64, int32, bool...
    shape: list         # ints for fixed dims, strings (or None) for symbolic ones


@dataclass
class DecoderLayout:
    """Where a decoder graph keeps each part of the layout."""

    input_ids: Tensor
    logits: Tensor
    attention_mask: Tensor | None = None
    position_ids: Tensor | None = None
    use_cache_branch: Tensor | None = None
    past: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    present: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.past)

    @property
    def kv_type(self) -> str:
        return self.past[0][0].type if self.past else "float32"

    def kv_dims(self) -> tuple[int | None, int | None]:
        """(kv heads, head_dim) when the graph fixes them."""
        if not self.past:
            return None, None
        shape = self.past[0][0].shape
        heads = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else None
        dim = shape[3] if len(shape) == 4 and isinstance(shape[3], int) else None
        return heads, dim


def describe(inputs: list[Tensor], outputs: list[Tensor], file: str) -> DecoderLayout:
    """Reads the decoder layout from a graph's inputs and outputs; raises ModelFormatError
    naming what does not fit."""
    ins = {t.name: t for t in inputs}
    outs = {t.name: t for t in outputs}

    def bad(what: str, field_name: str | None = None) -> ModelFormatError:
        return ModelFormatError(
            f"{file}: not a decoder in the optimum layout (inputs input_ids, attention_mask, position_ids, "
            f"past_key_values.N.key/value; outputs logits, present.N.key/value): {what}; the graph has inputs "
            f"{', '.join(ins) or 'none'} and outputs {', '.join(outs) or 'none'}", file=file, field=field_name)

    if INPUT_IDS not in ins:
        raise bad("no input 'input_ids'", INPUT_IDS)
    if LOGITS not in outs:
        raise bad("no output 'logits'", LOGITS)
    ids = ins[INPUT_IDS]
    if ids.type not in ("int64", "int32") or len(ids.shape) != 2:
        raise bad(f"input_ids is {ids.type} of rank {len(ids.shape)}, expected int64/int32 [batch, sequence]",
                  INPUT_IDS)
    logits = outs[LOGITS]
    if len(logits.shape) != 3 or not logits.type.startswith("float"):
        raise bad(f"logits is {logits.type} of rank {len(logits.shape)}, expected float [batch, sequence, vocab]",
                  LOGITS)
    lay = DecoderLayout(input_ids=ids, logits=logits, attention_mask=ins.get(ATTENTION_MASK),
                        position_ids=ins.get(POSITION_IDS), use_cache_branch=ins.get(USE_CACHE_BRANCH))

    past: dict[int, dict[str, Tensor]] = {}
    for t in inputs:
        m = _PAST.match(t.name)
        if m:
            past.setdefault(int(m.group(1)), {})[m.group(2)] = t
        elif t.name not in (INPUT_IDS, ATTENTION_MASK, POSITION_IDS, USE_CACHE_BRANCH):
            raise bad(f"unexpected input '{t.name}'", t.name)
    present: dict[int, dict[str, str]] = {}
    for t in outputs:
        m = _PRESENT.match(t.name)
        if m:
            present.setdefault(int(m.group(1)), {})[m.group(2)] = t.name
    if past:
        if sorted(past) != list(range(len(past))):
            raise bad(f"past layers {sorted(past)} are not numbered 0..{len(past) - 1}")
        for i in range(len(past)):
            for part in ("key", "value"):
                if part not in past[i]:
                    raise bad(f"layer {i} has no past {part} input", f"past_key_values.{i}.{part}")
                if part not in present.get(i, {}):
                    raise bad(f"layer {i} has a past {part} input but no present {part} output", f"present.{i}.{part}")
                t = past[i][part]
                if len(t.shape) != 4 or not t.type.startswith("float"):
                    raise bad(f"input '{t.name}' is {t.type} of rank {len(t.shape)}, expected float "
                              "[batch, kv_heads, past_sequence, head_dim]", t.name)
            lay.past.append((past[i]["key"], past[i]["value"]))
            lay.present.append((present[i]["key"], present[i]["value"]))
    return lay


def read_metadata(folder: str, name: str) -> dict | None:
    """A JSON side file of the folder, or None when absent."""
    p = os.path.join(folder, name)
    if not os.path.isfile(p):
        return None
    try:
        with open(p, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelFormatError(f"{p}: not valid JSON ({e})", file=p) from None
    except OSError as e:
        raise ModelFileError(f"{p}: cannot read ({e.strerror})", file=p) from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{p}: expected a JSON object at the top level", file=p)
    return data
