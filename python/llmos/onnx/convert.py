"""`convert_onnx`: an ONNX decoder -> a safetensors checkpoint the C++ core runs.

Weights are found by what consumes them, not by position: every initializer that feeds a
MatMul / Gemm / MatMulNBits / Gather / norm node is named after its module, either by its
own name (onnxruntime-genai builder: "model.layers.0.attn.qkv_proj.MatMul.weight", our
export: "layers.0.qkv.weight") or by its node's scope (torch exporter / optimum:
"/model/layers.0/self_attn/q_proj/MatMul" over "onnx::MatMul_123"). Orientation follows the
consumer (MatMul holds [in, out], Gemm transB and MatMulNBits [out, in]); 4- and 8-bit MatMulNBits
weights are dequantized. The architecture comes from config.json when the folder has one,
else from genai_config.json and the graph (attention attributes, rope caches, norms).
Anything weight-like left unmapped, or a role left empty, is an error that names it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil

import numpy as np

from llmos.io.config import ConfigReader
from llmos.errors import ModelFileError, ModelFormatError, UnsupportedModelError
from llmos.arch.families import family_for
from llmos.backends.onnx import layout
from llmos.onnx.decoder import rope_tables
from llmos.runtime.load import load_checkpoint, load_onnx
from llmos.onnx.quant import dequantize_int4, dequantize_int8
from llmos.onnx.roles import NORM_ROLES, checkpoint_tensors, role_key, split_key

_LAYER = r"layers\.(\d+)\."
_PATTERNS = [
    ("attn", re.compile(_LAYER + r"(?:self_attn|attn|attention)\.(q|k|v|qkv|o)_proj(?![a-z_])")),
    ("qk_norm", re.compile(_LAYER + r"(?:self_attn|attn|attention)\.(q|k)_norm(?![a-z_])")),
    ("mlp", re.compile(_LAYER + r"mlp\.(gate_up|gate|up|down)_proj(?![a-z_])")),
    ("norm", re.compile(_LAYER + r"(input_layernorm|post_attention_layernorm|pre_feedforward_layernorm|"
                                 r"post_feedforward_layernorm|final_norm_layernorm)(?![a-z_])")),
    ("gpt2", re.compile(r"(?:^|\.)h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj|ln_1|ln_2)(?![a-z_])")),
    ("gpt2_global", re.compile(r"(?:^|\.)(wte|wpe|ln_f)(?![a-z_])")),
    ("embed", re.compile(r"(?:^|\.)embed_tokens(?![a-z_])")),
    ("lm_head", re.compile(r"(?:^|\.)lm_head(?![a-z_])")),
    ("final_norm", re.compile(r"(?:^|\.)model\.norm(?![a-z_])")),
]
_LINEAR_OPS = ("MatMul", "Gemm", "MatMulNBits")
_NORM_OPS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "LayerNormalization",
             "SkipLayerNormalization", "RMSNormalization")
_PASS_THROUGH = ("Transpose", "Cast", "Identity")


def _source_kind(folder: str) -> str:
    if os.path.isfile(os.path.join(folder, layout.METADATA_FILE)):
        return "llmos"
    if os.path.isfile(os.path.join(folder, layout.GENAI_CONFIG)):
        return "genai"
    return "optimum"


class _Graph:
    """The weight-consuming uses of every initializer, through Transpose / Cast / Identity."""

    def __init__(self, proto, inits: dict[str, np.ndarray]):
        self.proto = proto
        self.inits = inits
        producers = {o: n for n in proto.graph.node for o in n.output}
        self.uses: list[tuple[object, int, str, bool]] = []  # (node, input index, initializer, transposed)
        for node in proto.graph.node:
            if node.op_type in _PASS_THROUGH:
                continue
            for i, name in enumerate(node.input):
                transposed, seen = False, name
                while seen not in inits and seen in producers and producers[seen].op_type in _PASS_THROUGH:
                    p = producers[seen]
                    if p.op_type == "Transpose":
                        transposed = not transposed
                    seen = p.input[0]
                if seen in inits and inits[seen].dtype.kind in "fu" and inits[seen].size > 1:
                    self.uses.append((node, i, seen, transposed))

    def attrs(self, node) -> dict:
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def nodes(self, op_type: str):
        return [n for n in self.proto.graph.node if n.op_type == op_type]


def _module(name: str) -> tuple[str, tuple] | None:
    s = name.replace("/", ".")
    for kind, pat in _PATTERNS:
        m = pat.search(s)
        if m:
            return kind, m.groups()
    return None


def _linear_weight(g: _Graph, node, init: str, transposed: bool) -> np.ndarray:
    """The weight of a linear node as [out, in] float32."""
    a = g.inits[init]
    if node.op_type == "MatMulNBits":
        at = g.attrs(node)
        bits = at.get("bits", 4)
        if bits not in (4, 8):
            raise UnsupportedModelError(f"node '{node.name}': MatMulNBits with bits={bits} (only 4 and 8 are mapped)",
                                        field=node.name)
        scales = g.inits.get(node.input[2])
        zp = g.inits.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if scales is None:
            raise UnsupportedModelError(f"node '{node.name}': scales are not an initializer", field=node.name)
        return (dequantize_int4 if bits == 4 else dequantize_int8)(a, scales, at["K"], at["block_size"], zp)
    w = a.astype(np.float32)
    if transposed:
        w = w.T
    if node.op_type == "Gemm":
        return w if g.attrs(node).get("transB", 0) else w.T
    return w.T  # MatMul: x @ W with W [in, out]


def _collect(g: _Graph, source: str, role_keys: set[str], post_attn_norm: bool):
    """{(role key, part): array} from the graph; part is q/k/v/gate/up or '' for a whole role."""
    found: dict[tuple[str, str], np.ndarray] = {}
    used: set[str] = set()
    folded: set[str] = set()
    raw_norms: set[str] = set()  # role keys whose array is a checkpoint parameter, not folded
    for node, i, init, transposed in g.uses:
        op = node.op_type
        base = re.sub(r"\.(q4|q8|scales|zero_points)$", "", init)
        half = re.match(r"^(.+\.up\.(?:weight|bias))\.(gate|up)$", base)  # int4 gate / up halves
        if source == "llmos" and half and half.group(1) in role_keys:
            if op in _LINEAR_OPS and i == 1:
                found[(half.group(1), half.group(2))] = _linear_weight(g, node, init, transposed)
            elif op == "Add":
                found[(half.group(1), half.group(2))] = g.inits[init].astype(np.float32)
            used.add(init)
            continue
        if source == "llmos" and base in role_keys | {"lm_head"}:
            # Our own export: initializers carry the role keys.
            if op in _LINEAR_OPS and i == 1:
                found[(base, "")] = _linear_weight(g, node, init, transposed)
            elif op == "MatMulNBits":
                pass  # the scales (and zero points) of a weight read above
            elif op == "Gather" and i == 0:
                found[(base, "")] = g.inits[init].astype(np.float32)
            elif op in _LINEAR_OPS:
                continue  # the tied head reads the embedding through a Transpose
            else:
                found[(base, "")] = g.inits[init].astype(np.float32)
            used.add(init)
            continue
        mod = _module(init)
        if mod is None:
            mod = _module(node.name)
            folded.add(init)  # a constant the exporter computed (Gemma's 1 + w), not a parameter
        if mod is None:
            continue
        kind, groups = mod
        if op == "MatMulNBits" and i != 1:
            used.add(init)
            continue
        is_weight = (op in _LINEAR_OPS and i == 1) or (op == "Gather" and i == 0)
        is_bias = (op == "Add" and g.inits[init].ndim == 1 and kind in ("attn", "mlp", "lm_head", "gpt2")) or \
            (op == "Gemm" and i == 2)
        is_norm = (op in _NORM_OPS and i in (1, 2)) or (op == "Mul" and g.inits[init].ndim == 1)
        if kind in ("gpt2", "gpt2_global"):
            # GPT-2 modules: Conv1D projections ([in, out], used as x @ W) and LayerNorms.
            gpt2_roles = {"attn.c_attn": "qkv", "attn.c_proj": "o", "mlp.c_fc": "up", "mlp.c_proj": "down",
                          "ln_1": "attn_norm", "ln_2": "ffn_norm", "ln_f": "final_norm", "wte": "embed",
                          "wpe": "pos_embed"}
            role = gpt2_roles[groups[-1]]
            layer = int(groups[0]) if kind == "gpt2" else -1
            if role in ("embed", "pos_embed") and op == "Gather" and i == 0:
                found[(role, "")] = g.inits[init].astype(np.float32)
            elif role in ("qkv", "o", "up", "down") and (is_weight or is_bias):
                key = role_key(f"{role}.{'weight' if is_weight else 'bias'}", layer)
                found[(key, "")] = _linear_weight(g, node, init, transposed) if is_weight else \
                    g.inits[init].astype(np.float32)
            elif role.endswith("norm") and op in _NORM_OPS and i in (1, 2):
                found[(role_key(f"{role}.{'bias' if i == 2 else 'weight'}", layer), "")] = \
                    g.inits[init].astype(np.float32)
            else:
                continue
        elif kind in ("embed", "lm_head") and op == "Gather" and i == 0:  # lm_head: a tied head
            w = g.inits[init].astype(np.float32)
            found[("embed", "")] = w.T if transposed else w
        elif kind == "lm_head" and is_weight:
            found[("lm_head", "")] = _linear_weight(g, node, init, transposed)
        elif kind == "attn" and (is_weight or is_bias):
            layer, which = int(groups[0]), groups[1]
            role = "o" if which == "o" else "qkv"
            key = role_key(f"{role}.{'weight' if is_weight else 'bias'}", layer)
            part = "" if which in ("o", "qkv") else which
            found[(key, part)] = _linear_weight(g, node, init, transposed) if is_weight else \
                g.inits[init].astype(np.float32)
        elif kind == "mlp" and (is_weight or is_bias):
            layer, which = int(groups[0]), groups[1]
            role = "down" if which == "down" else "up"
            key = role_key(f"{role}.{'weight' if is_weight else 'bias'}", layer)
            part = "" if which in ("down", "gate_up") else which
            found[(key, part)] = _linear_weight(g, node, init, transposed) if is_weight else \
                g.inits[init].astype(np.float32)
        elif kind == "qk_norm" and is_norm:
            found[(role_key(f"{groups[1]}_norm.weight", int(groups[0])), "")] = g.inits[init].astype(np.float32)
        elif kind in ("norm", "final_norm") and is_norm:
            bias = op in ("LayerNormalization", "SkipLayerNormalization") and i == (2 if op == "LayerNormalization"
                                                                                 else 3)
            suffix = "bias" if bias else "weight"
            if kind == "final_norm" or groups[1] == "final_norm_layernorm":
                key = f"final_norm.{suffix}"
            else:
                role = {"input_layernorm": "attn_norm",
                        "post_attention_layernorm": "attn_post_norm" if post_attn_norm else "ffn_norm",
                        "pre_feedforward_layernorm": "ffn_norm",
                        "post_feedforward_layernorm": "ffn_post_norm"}[groups[1]]
                key = role_key(f"{role}.{suffix}", int(groups[0]))
            found[(key, "")] = g.inits[init].astype(np.float32)
            if init not in folded:
                raw_norms.add(key)
        else:
            continue
        used.add(init)
    return found, used, raw_norms


def _assemble(found: dict, arch) -> dict[str, np.ndarray]:
    roles: dict[str, dict[str, np.ndarray]] = {}
    for (key, part), a in found.items():
        roles.setdefault(key, {})[part] = a
    out = {}
    for key, parts in roles.items():
        if "" in parts:
            out[key] = parts[""]
        elif set(parts) == {"q", "k", "v"}:
            out[key] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
        elif set(parts) == {"gate", "up"}:
            out[key] = np.concatenate([parts["gate"], parts["up"]], axis=0)
        else:
            raise UnsupportedModelError(f"{key}: found only the {'/'.join(sorted(parts))} part(s)", field=key)
    if "embed" not in out and "lm_head" in out and arch.tie_word_embeddings:
        out["embed"] = out["lm_head"]
    return out


def _genai_config(g: _Graph, genai: dict, file: str, found: dict) -> dict:
    """A Hugging Face config.json rebuilt from genai_config.json and the graph."""
    m = genai.get("model") or {}
    dec = m.get("decoder") or {}
    model_type = m.get("type")
    if not isinstance(model_type, str):
        raise UnsupportedModelError(f"{file}: genai_config.json has no model.type", file=file, field="model.type")
    cfg = {"model_type": model_type, "vocab_size": m.get("vocab_size"), "hidden_size": dec.get("hidden_size"),
           "num_hidden_layers": dec.get("num_hidden_layers"), "num_attention_heads": dec.get("num_attention_heads"),
           "num_key_value_heads": dec.get("num_key_value_heads"), "head_dim": dec.get("head_size"),
           "max_position_embeddings": m.get("context_length")}
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if m.get(k) is not None:
            cfg[k] = m[k]
    layers = cfg["num_hidden_layers"]
    downs = [a for (key, part), a in found.items() if key.endswith("down.weight")]
    if downs:
        cfg["intermediate_size"] = int(downs[0].shape[1])
    norms = g.nodes("SimplifiedLayerNormalization") + g.nodes("SkipSimplifiedLayerNormalization") + \
        g.nodes("LayerNormalization")
    if norms:
        cfg["rms_norm_eps"] = float(g.attrs(norms[0]).get("epsilon", 1e-5))
    cfg["tie_word_embeddings"] = ("embed", "") not in found or ("lm_head", "") not in found
    if any(key.endswith(".o.bias") for key, _ in found):
        cfg["attention_bias"] = True  # llama-style: both the qkv and the o biases
    gqa = g.nodes("GroupQueryAttention")
    if gqa:
        at = [g.attrs(n) for n in gqa]
        head_dim = cfg["head_dim"]
        scale = at[0].get("scale", 0.0)
        if scale and head_dim and abs(scale - head_dim ** -0.5) > 1e-6:
            cfg["query_pre_attn_scalar"] = round(scale ** -2, 3)
        if at[0].get("softcap", 0.0):
            cfg["attn_logit_softcapping"] = float(at[0]["softcap"])
        windows = [a.get("local_window_size", -1) for a in at]
        if any(w > 0 for w in windows):
            cfg["sliding_window"] = max(windows)
            cfg["layer_types"] = ["sliding_attention" if w > 0 else "full_attention" for w in windows]
        cos = g.inits.get(gqa[0].input[7]) if len(gqa[0].input) > 7 else None
        sin = g.inits.get(gqa[0].input[8]) if len(gqa[0].input) > 8 else None
        if cos is not None and sin is not None and cos.ndim == 2 and cos.shape[0] > 1:
            # Default rope: inv_freq[i] = theta^(-2i / rotary_dim); position 1 gives the angles.
            inv = np.arctan2(sin[1].astype(np.float64), cos[1].astype(np.float64))
            rot = 2 * cos.shape[1]
            if len(inv) > 1 and inv[1] > 0:
                theta = float(inv[1] ** (-rot / 2.0))
                cfg["rope_theta"] = float(f"{theta:.6g}")
            if head_dim and rot < head_dim:
                cfg["partial_rotary_factor"] = rot / head_dim
    for t in g.nodes("Tanh"):
        # Final soft-capping: logits = tanh(x / c) * c right after the LM head.
        if "lm_head" in t.name:
            div = [n for n in g.proto.graph.node if t.input[0] in n.output and n.op_type == "Div"]
            c = g.inits.get(div[0].input[1]) if div else None
            if c is not None:
                cfg["final_logit_softcapping"] = float(np.asarray(c).reshape(-1)[0])
    if layers is None:
        raise UnsupportedModelError(f"{file}: genai_config.json has no model.decoder.num_hidden_layers", file=file)
    return {k: v for k, v in cfg.items() if v is not None}


def _check_rope(g: _Graph, arch, file: str) -> None:
    gqa = g.nodes("GroupQueryAttention")
    if not gqa or len(gqa[0].input) <= 8 or arch.rope is None:
        return
    cos, sin = g.inits.get(gqa[0].input[7]), g.inits.get(gqa[0].input[8])
    if cos is None or sin is None:
        return
    c, s = rope_tables(arch)
    n = min(len(cos), len(c))
    if cos.shape[1] != c.shape[1] or np.abs(cos[:n] - c[:n]).max() > 1e-4 or np.abs(sin[:n] - s[:n]).max() > 1e-4:
        raise UnsupportedModelError(
            f"{file}: the rope caches (cos_cache / sin_cache) do not match a default rope with theta "
            f"{arch.rope.params.get('rope_theta')}: scaled rope in a genai export cannot be mapped",
            file=file, field="cos_cache")


def convert_onnx(path, out_dir, *, verify: bool = True) -> str:
    """Writes the weights of the ONNX decoder at `path` (a folder or .onnx file: ours,
    optimum's, the onnxruntime-genai builder's) as a safetensors checkpoint in `out_dir`
    (model.safetensors, config.json, tokenizer and generation files); returns out_dir.

    verify: load the result in the core and check its logits against onnxruntime's on a
    short probe (within 1e-3 for float graphs, 10% of the logit range for quantized ones).
    """
    path = os.fspath(path)
    file = layout.find_onnx_file(path)
    if file is None:
        raise ModelFileError(f"{path}: no ONNX decoder found (expected one of {', '.join(layout.ONNX_FILES)})",
                             file=path)
    folder = os.path.dirname(os.path.abspath(file))
    from llmos.backends.onnx.reader import decoder_layout, initializers, load_proto

    proto = load_proto(file, with_weights=True)
    decoder_layout(proto, file)
    g = _Graph(proto, initializers(proto))
    source = _source_kind(folder)

    raw = layout.read_metadata(folder, "config.json")
    genai = layout.read_metadata(folder, layout.GENAI_CONFIG)
    if raw is None and genai is None:
        raise UnsupportedModelError(f"{folder}: neither config.json nor genai_config.json: the architecture of "
                                    f"{os.path.basename(file)} is unknown", file=folder, field="config.json")
    if raw is None:
        found, _, _ = _collect(g, source, set(), post_attn_norm=(genai.get("model") or {}).get("type") == "gemma2")
        raw = _genai_config(g, genai, file, found)
    cfg_path = os.path.join(folder, "config.json")
    cfg = ConfigReader(raw, cfg_path)
    family = family_for(cfg)
    arch = family.architecture(cfg)
    keys = {role_key(role, layer) for role, layer, _ in family.tensors(arch)}
    found, used, raw_norms = _collect(g, source, keys, arch.post_attn_norm)
    weights = _assemble(found, arch)
    if source == "optimum" and arch.norm_weight_offset:
        # A norm parameter the torch exporter kept as is (w, applied as 1 + w) gets the offset;
        # one it folded into a constant already holds 1 + w.
        for k in raw_norms & set(weights):
            if split_key(k)[0] in NORM_ROLES:
                weights[k] = weights[k] + np.float32(arch.norm_weight_offset)
    if arch.tie_word_embeddings and "lm_head" in weights and "embed" in weights and \
            not np.array_equal(weights["lm_head"], weights["embed"]):
        # A tied head that the graph stores apart (quantized, in an int4 export) is what the
        # model computes with: the checkpoint gets it as an untied lm_head.
        raw = {**raw, "tie_word_embeddings": False}
        cfg = ConfigReader(raw, cfg_path)
        arch = family.architecture(cfg)
        keys = {role_key(role, layer) for role, layer, _ in family.tensors(arch)}
    _check_rope(g, arch, file)

    # Weights are what matrix products and embedding lookups read; other constants (masks,
    # rope frequencies, shape helpers) are the graph's business.
    weight_like = {init for node, i, init, _ in g.uses
                   if (node.op_type in _LINEAR_OPS and i == 1) or (node.op_type == "Gather" and i == 0)}
    unmapped = sorted(n for n in weight_like if n not in used and g.inits[n].ndim >= 2 and n not in _rope_caches(g))
    missing = sorted(k for k in keys if k not in weights)
    if missing or unmapped:
        what = []
        if missing:
            what.append(f"no weight found for {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unmapped:
            what.append(f"initializers not mapped to any {arch.family} weight: "
                        f"{', '.join(unmapped[:8])}{' ...' if len(unmapped) > 8 else ''}")
        raise UnsupportedModelError(f"{file}: cannot map the graph onto a {arch.family} checkpoint: "
                                    + "; ".join(what), file=file, field=(missing or unmapped)[0])
    tensors = checkpoint_tensors(arch, family, {k: weights[k] for k in keys})

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
              os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    config = dict(raw)
    config["torch_dtype"] = "float32"
    config.pop("dtype", None)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    from llmos.onnx.export import SIDE_FILES

    for name in SIDE_FILES:
        if name != "config.json" and os.path.isfile(os.path.join(folder, name)):
            shutil.copyfile(os.path.join(folder, name), os.path.join(out_dir, name))
    del proto, g
    if verify:
        _verify(path, out_dir, arch)
    return out_dir


def _rope_caches(g: _Graph) -> set[str]:
    """Initializers that are rope tables, not weights."""
    out = {"rope.cos", "rope.sin", "rope_local.cos", "rope_local.sin"}  # ours (rope_local: Gemma 3)
    for n in g.nodes("GroupQueryAttention"):
        out.update(n.input[7:9])
    for n in g.nodes("RotaryEmbedding"):
        out.update(n.input[2:4])
    return out


def _verify(onnx_path: str, out_dir: str, arch) -> None:
    onnx_model = load_onnx(onnx_path, dtype=None, threads=1, quant=None)
    core = load_checkpoint(out_dir, dtype=None, threads=1, quant=None)
    n = min(12, arch.max_position_embeddings)
    ids = [(7 * i + 3) % arch.vocab_size for i in range(n)]
    a, b = onnx_model.logits(ids), core.logits(ids)
    scale = max(1.0, float(np.abs(a).max()))
    quantized = onnx_model.dtype != "float32" or "MatMulNBits" in _ops(onnx_model.backend.file)
    tol = 0.1 * scale if quantized else 1e-3 * scale
    diff = float(np.abs(a - b).max())
    if not math.isfinite(diff) or diff > tol:
        raise ModelFormatError(f"{onnx_path}: the converted checkpoint in {out_dir} does not reproduce the ONNX "
                               f"model (max logits difference {diff:.3g} > {tol:.3g}): the graph computes "
                               "something the weight mapping missed", file=out_dir)


def _ops(file: str) -> set[str]:
    from llmos.backends.onnx.reader import load_proto

    return {n.op_type for n in load_proto(file).graph.node}
