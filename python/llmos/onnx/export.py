"""`export_onnx`: a checkpoint folder (or loaded model) -> an ONNX decoder folder.

The folder holds model.onnx (+ model.onnx.data past 2 GB), the checkpoint's config.json,
generation_config.json and tokenizer files, and llmos_onnx.json describing the export.
It is what optimum's `text-generation-with-past` export looks like, so tools that read
those read ours, and `llmos.load` runs it through onnxruntime.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Callable

import onnx

from llmos.errors import InvalidInputError, ModelFormatError
from llmos.backends.onnx import layout
from llmos.onnx.blocks import Blocks, make_blocks
from llmos.onnx.decoder import INT4_ACCURACY_LEVEL, PRECISIONS, build_decoder, refuse_unexported
from llmos.onnx.graph import MIN_OPSET
from llmos.onnx.quant import DEFAULT_BLOCK_SIZE, check_block_size
from llmos.onnx.roles import read_checkpoint, role_key

from llmos.backends.onnx.layout import DEFAULT_OPSET  # noqa: E402  (re-exported)
# protobuf cannot serialize a message of 2 GiB or more; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
DATA_FILE = "model.onnx.data"
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
              "tokenizer.model", "vocab.json", "merges.txt")


def _source_path(model_or_path) -> str:
    path = getattr(model_or_path, "path", model_or_path)
    try:
        path = os.fspath(path)
    except TypeError:
        raise InvalidInputError(f"model_or_path: expected a checkpoint folder or an llmos.Model, got "
                                f"{type(model_or_path).__name__}", field="model_or_path") from None
    if layout.is_onnx_model(path):
        raise InvalidInputError(f"{path}: is already an ONNX model; export_onnx reads a safetensors checkpoint "
                                "(convert_onnx turns an ONNX decoder into one)", field="model_or_path")
    return path


def _loaded_blocks(model_or_path) -> dict[str, Blocks]:
    """The blocks of an llmos.Model quantized at load (llmos.load(..., quant="int4")), by role
    key: the export computes with them rather than quantizing the float checkpoint its own way."""
    backend = getattr(model_or_path, "backend", None)
    if getattr(model_or_path, "quant", None) is None or not hasattr(backend, "quantized_matrices"):
        return {}
    return {role_key(role, layer): make_blocks(qtype, group, codes, scale, mn, backend.path,
                                               f"llmos.{role_key(role, layer)}")
            for role, layer, qtype, group, codes, scale, mn in backend.quantized_matrices()}


def _default_block_size(model_or_path, weights: dict) -> int:
    """The int4 group of the source: its stored 4-bit blocks, or the quantization an
    llmos.Model was loaded with ("int4-g64"); else the llmos int4 default."""
    groups = [w.group for w in weights.values() if isinstance(w, Blocks) and w.bits == 4]
    if groups:
        return max(set(groups), key=groups.count)
    quant = getattr(model_or_path, "quant", None)
    group = getattr(quant, "group", None) if getattr(quant, "base", "").startswith("int4") else None
    return group or DEFAULT_BLOCK_SIZE


def _source_quantization(weights: dict) -> dict | None:
    """{type name: number of matrices} of a checkpoint llmos quantized, else None."""
    counts: dict[str, int] = {}
    for w in weights.values():
        if isinstance(w, Blocks):
            counts[w.type.name] = counts.get(w.type.name, 0) + 1
    return counts or None


def export_onnx(model_or_path, out_dir, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                block_size: int | None = None, *, accuracy_level: int = INT4_ACCURACY_LEVEL,
                external_data: bool | None = None, check: bool = True,
                progress: Callable[[int, int], None] | None = None) -> str:
    """Writes `model_or_path` (a checkpoint folder or an `llmos.Model`) as an ONNX decoder
    with KV cache into `out_dir`; returns the path of model.onnx.

    precision: "fp32" / "fp16" (standard ONNX ops; fp16 weights and KV cache, float32 norms,
    softmax and logits) or "int4" (onnxruntime's MatMulNBits, symmetric 4-bit blocks of
    `block_size` along the input dimension; embeddings stay float32). block_size defaults
    to the group size of an int4-quantized llmos.Model passed in (llmos.load(..., quant=
    "int4-g64")) or of a checkpoint written by llmos.quantize, else 32, the llmos int4 default.
    A checkpoint written by llmos.quantize, or an llmos.Model quantized at load, exports with
    llmos's own blocks: fp32 / fp16 dequantize them;
    int4 writes its 4-bit blocks (of the block size) and its 8-bit embedding / LM head
    (int8, int6) as they are (MatMulNBits, 4 and 8 bits), leaves the matrices llmos left
    float in float, and quantizes the rest (an int8 checkpoint's layers) to 4 bits, so the
    graph computes with llmos's own weights wherever it can.
    accuracy_level: MatMulNBits compute type for int4: 4 (default) quantizes activations to
    int8 inside the kernel, the fast CPU path; 0 computes in float32 from the 4-bit weights.
    opset: ONNX opset of the standard ops (17 or later).
    external_data: store weights in model.onnx.data (default: only past 2 GB, where
    protobuf cannot hold them).
    check: run onnx.checker (full_check) on the written file.
    progress: called with (stages done, stages) after each stage: read the weights, build the
    graph, write it, check it.
    """
    src = _source_path(model_or_path)
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}",
                                field="precision")
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise InvalidInputError(f"opset: expected an integer in [{MIN_OPSET}, {newest}], got {opset!r}", field="opset")
    if block_size is not None:
        check_block_size(block_size)
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise InvalidInputError(f"accuracy_level: expected 0..4, got {accuracy_level!r}", field="accuracy_level")

    stages = 4 if check else 3

    def stage_done(n: int) -> None:
        if progress is not None:
            progress(n, stages)

    arch, _, config, weights = read_checkpoint(src, check=refuse_unexported)
    weights.update(_loaded_blocks(model_or_path))
    if block_size is None:
        block_size = _default_block_size(model_or_path, weights)
    stage_done(1)
    from llmos.version import __version__

    g = build_decoder(arch, weights, precision, opset, block_size, accuracy_level)
    model = g.model(f"llmos-{arch.family}-{precision}", "llmos", __version__)
    stage_done(2)
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    graph_meta = g.metadata
    kept = graph_meta.get("kept_blocks", {})
    source_quant = _source_quantization(weights)
    del weights, g  # the ModelProto holds its own copy of every initializer

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    onnx_path = os.path.join(out_dir, "model.onnx")
    data_path = os.path.join(out_dir, DATA_FILE)
    if os.path.exists(data_path):
        os.remove(data_path)  # onnx appends to an existing data file
    external = weight_bytes > EXTERNAL_DATA_THRESHOLD if external_data is None else bool(external_data)
    if external:
        onnx.save_model(model, onnx_path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(model, onnx_path)
    del model
    stage_done(3)
    if check:
        try:
            onnx.checker.check_model(onnx_path, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ModelFormatError(f"{onnx_path}: the exported graph fails onnx.checker: {e}", file=onnx_path) from None
        stage_done(4)

    for name in SIDE_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(out_dir, name))
    meta = {
        "format": "llmos-onnx-decoder",
        "version": 1,
        "family": arch.family,
        "precision": precision,
        "opset": opset,
        "int4": {"op": "com.microsoft.MatMulNBits", "bits": 4, "block_size": block_size,
                 "symmetric": not any(k["zero_points"] for k in kept.values()),
                 "accuracy_level": accuracy_level,
                 # Matrices written from the source's own llmos blocks, not quantized again:
                 # {name: {bits, block_size, zero_points}} (an int4 entry's int8 LM head has 8 bits).
                 "kept_blocks": kept} if precision == "int4" else None,
        "source_quantization": source_quant,
        "kv_cache_dtype": "float16" if precision == "fp16" else "float32",
        # True when present.* may alias a preallocated past buffer (every layer is
        # GroupQueryAttention); the optimum past -> present concatenation always works.
        "past_present_share_buffer": graph_meta.get("past_present_share_buffer", False),
        "num_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_kv_heads,
        "head_dim": arch.head_dim,
        "hidden_size": arch.hidden_size,
        "vocab_size": arch.vocab_size,
        "max_position_embeddings": arch.max_position_embeddings,
        "sliding_window": list(arch.sliding_window),
        "rope_long_after": arch.rope.long_after if arch.rope is not None and arch.rope.inv_freq_long is not None
        else None,
        "external_data": DATA_FILE if external else None,
        "inputs": [layout.INPUT_IDS, layout.ATTENTION_MASK, layout.POSITION_IDS, "past_key_values.{i}.key",
                   "past_key_values.{i}.value"],
        "outputs": [layout.LOGITS, "present.{i}.key", "present.{i}.value"],
        "source_model_type": config.get("model_type"),
    }
    with open(os.path.join(out_dir, layout.METADATA_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    return onnx_path


