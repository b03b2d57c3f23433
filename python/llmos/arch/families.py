"""Model families: how each Hugging Face `model_type` maps onto the one generic decoder.

A family is two things: a function that reads config.json into an `Architecture` (the
switches of cpp/model/arch.h), and the checkpoint tensor names of each weight role.
Adding a family means adding a mapping here, not C++.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Callable

import numpy as np

from llmos.io.config import ConfigReader
from llmos.errors import UnsupportedModelError
from llmos.arch.rope import Rope, build_rope

ACTIVATIONS = {
    "silu": "Silu", "swish": "Silu",
    "gelu": "GeluErf", "gelu_python": "GeluErf",
    "gelu_new": "GeluTanh", "gelu_pytorch_tanh": "GeluTanh", "gelu_fast": "GeluTanh", "gelu_tanh": "GeluTanh",
    "relu": "Relu",
}
NORMS = {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm"}  # config name -> core NormKind


@dataclass
class Architecture:
    """The parsed architecture of a checkpoint (what `Model.config` returns)."""

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    norm: str = "rmsnorm"            # a key of NORMS
    norm_eps: float = 1e-6
    norm_weight_offset: float = 0.0  # Gemma: weights are stored as w - 1
    norm_bias: bool = False
    learned_positions: bool = False
    rope: Rope | None = None
    rope_local: Rope | None = None   # Gemma 3: the sliding-window layers' rope
    rope_layers: list[int] = field(default_factory=list)  # SmolLM3: per layer 1 = RoPE, 0 = none; [] = all
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    qk_norm_across_heads: bool = False  # OLMo 2: one norm over all heads' q (k)
    pre_norm: bool = True               # OLMo 2: False (only the post norms)
    gated_mlp: bool = True
    num_experts: int = 0                # mixture of experts (cpp/model/arch.h): 0 = dense MLP
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    norm_topk_prob: bool = False
    shared_expert_size: int = 0
    shared_expert_gate: bool = False
    mlp_bias: bool = False
    router_bias: bool = False           # gpt-oss: router and expert biases, clamped SwiGLU experts
    expert_bias: bool = False
    swiglu_limit: float = 0.0           # > 0: the experts' clamped SwiGLU (cpp/model/arch.h)
    swiglu_alpha: float = 1.0
    attn_sinks: bool = False            # gpt-oss: a learned per-head logit in each softmax denominator
    activation: str = "silu"
    post_attn_norm: bool = False
    post_ffn_norm: bool = False
    tie_word_embeddings: bool = False
    embed_scale: float = 1.0
    attn_scale: float = 0.0
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    residual_scale: float = 1.0      # Granite: residual_multiplier
    logit_scale: float = 1.0         # Granite: 1 / logits_scaling
    sliding_window: list[int] = field(default_factory=list)  # per layer, 0 = full

    def to_core(self, core):
        """The core's Architecture (cpp/model/arch.h): every field copied by name."""
        return _to_core(core, self)


# Fields that only Python reads (where the rope came from, for messages and the ONNX export).
PYTHON_ONLY = {"Rope": {"rope_type", "params"}}


def _to_core(core, obj):
    """The core struct named as dataclass `obj`'s class, filled field by field under the same
    names; None leaves the core's default (no RoPE, no longrope table)."""
    out = getattr(core, type(obj).__name__)()
    skip = PYTHON_ONLY.get(type(obj).__name__, set())
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in skip or value is None:
            continue
        if is_dataclass(value):
            value = _to_core(core, value)
        elif f.name == "norm":
            value = getattr(core.NormKind, NORMS[value])
        elif f.name == "activation":
            value = getattr(core.Activation, ACTIVATIONS[value])
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        setattr(out, f.name, value)
    return out


# (role, layer, [(tensor name, transpose)]): the tensors each weight role is read from,
# stacked along output rows when there are several.
TensorMap = list[tuple[str, int, list[tuple[str, bool]]]]


@dataclass
class Family:
    name: str
    architecture: Callable[[ConfigReader], Architecture]
    tensors: Callable[[Architecture], TensorMap]


def _activation(cfg: ConfigReader, *keys: str, default: str) -> str:
    for key in keys:
        if cfg.has(key):
            name = cfg.str(key)
            if name not in ACTIVATIONS:
                raise cfg.error(key, f"activation '{name}' is not supported (supported: {', '.join(ACTIVATIONS)})")
            return name
    return default


def _layer_windows(cfg: ConfigReader, n_layers: int, uniform_window: int) -> list[int]:
    """Per-layer sliding window: `layer_types` when the config has it, else `uniform_window`."""
    types = cfg.raw("layer_types")
    if types is None:
        return [uniform_window] * n_layers
    if not isinstance(types, list) or len(types) != n_layers:
        got = f"{len(types)} entries" if isinstance(types, list) else repr(types)
        raise cfg.error("layer_types", f"expected a list of {n_layers} entries (one per layer: num_hidden_layers), "
                                       f"got {got}")
    window = cfg.int("sliding_window", 0, minimum=0)
    out = []
    for t in types:
        if t == "full_attention":
            out.append(0)
        elif t == "sliding_attention":
            if window <= 0:
                raise cfg.error("sliding_window", "layer_types has sliding_attention layers but no sliding_window")
            out.append(window)
        else:
            raise cfg.error("layer_types", f"unknown layer type {t!r} (expected full_attention or sliding_attention)")
    return out


DIM = "max_model_dim"  # the llmos.limits field that bounds each dimension of a config


def _decoder_dims(cfg: ConfigReader) -> dict:
    hidden = cfg.int("hidden_size", limit=DIM)
    heads = cfg.int("num_attention_heads", limit=DIM)
    kv = cfg.int("num_key_value_heads", heads, limit=DIM)
    head_dim = cfg.int("head_dim", 0, minimum=0, limit=DIM) or hidden // heads
    if cfg.raw("head_dim") is None and hidden % heads:
        raise cfg.error("hidden_size", f"{hidden} is not divisible by num_attention_heads {heads}")
    if heads % kv:
        raise cfg.error("num_key_value_heads", f"{kv} does not divide num_attention_heads {heads}")
    return dict(
        vocab_size=cfg.int("vocab_size", limit=DIM),
        hidden_size=hidden,
        num_layers=cfg.int("num_hidden_layers", limit="max_layers"),
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=cfg.int("intermediate_size", limit=DIM),
        max_position_embeddings=cfg.int("max_position_embeddings", 2048),
    )


def _llama_like(cfg: ConfigReader, family: str, *, qkv_bias: bool, window: int, tie_default: bool = False,
                **extra) -> Architecture:
    dims = _decoder_dims(cfg)
    arch = Architecture(
        family=family,
        **dims,
        norm_eps=cfg.float("rms_norm_eps", 1e-6, positive=True),
        qkv_bias=qkv_bias,
        o_bias=cfg.bool("attention_bias", False),
        mlp_bias=cfg.bool("mlp_bias", False),
        activation=_activation(cfg, "hidden_act", default="silu"),
        tie_word_embeddings=cfg.bool("tie_word_embeddings", tie_default),
        sliding_window=_layer_windows(cfg, dims["num_layers"], window),
    )
    for k, v in extra.items():
        setattr(arch, k, v)
    arch.rope = build_rope(cfg, arch.head_dim, arch.max_position_embeddings)
    return arch


def _llama(cfg: ConfigReader) -> Architecture:
    return _llama_like(cfg, "llama", qkv_bias=cfg.bool("attention_bias", False), window=0)


def _mistral(cfg: ConfigReader) -> Architecture:
    return _llama_like(cfg, "mistral", qkv_bias=cfg.bool("attention_bias", False),
                       window=cfg.int("sliding_window", 0, minimum=0))


def _qwen2(cfg: ConfigReader) -> Architecture:
    # Older configs lack layer_types: sliding layers are those from max_window_layers on.
    if not cfg.has("layer_types") and cfg.bool("use_sliding_window", False) and cfg.has("sliding_window"):
        n, first = cfg.int("num_hidden_layers", limit="max_layers"), cfg.int("max_window_layers", 0, minimum=0)
        cfg = ConfigReader({**cfg.data, "layer_types": [
            "sliding_attention" if i >= first else "full_attention" for i in range(n)]}, cfg.path)
    return _llama_like(cfg, "qwen2", qkv_bias=True, window=0)


def _qwen3(cfg: ConfigReader) -> Architecture:
    if not cfg.has("layer_types") and cfg.bool("use_sliding_window", False) and cfg.has("sliding_window"):
        n, first = cfg.int("num_hidden_layers", limit="max_layers"), cfg.int("max_window_layers", 0, minimum=0)
        cfg = ConfigReader({**cfg.data, "layer_types": [
            "sliding_attention" if i >= first else "full_attention" for i in range(n)]}, cfg.path)
    return _llama_like(cfg, "qwen3", qkv_bias=cfg.bool("attention_bias", False), window=0, qk_norm=True)


def _phi3(cfg: ConfigReader) -> Architecture:
    arch = _llama_like(cfg, "phi3", qkv_bias=False, window=cfg.int("sliding_window", 0, minimum=0))
    arch.o_bias = arch.mlp_bias = False
    return arch


def _gemma(cfg: ConfigReader) -> Architecture:
    act = _activation(cfg, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh")
    arch = _llama_like(cfg, "gemma", qkv_bias=cfg.bool("attention_bias", False), window=0, tie_default=True,
                       norm_weight_offset=1.0, activation=act)
    arch.embed_scale = float(math.sqrt(arch.hidden_size))
    return arch


def _gemma2(cfg: ConfigReader) -> Architecture:
    arch = _gemma(cfg)
    arch.family = "gemma2"
    arch.post_attn_norm = arch.post_ffn_norm = True
    arch.attn_scale = cfg.float("query_pre_attn_scalar", float(arch.head_dim), positive=True) ** -0.5
    arch.attn_softcap = cfg.float("attn_logit_softcapping", 0.0)
    arch.final_softcap = cfg.float("final_logit_softcapping", 0.0)
    if not cfg.has("layer_types"):  # older configs: every other layer slides, starting with layer 0
        window = cfg.int("sliding_window", 4096)
        arch.sliding_window = [window if i % 2 == 0 else 0 for i in range(arch.num_layers)]
    return arch


def _per_layer_type_rope(cfg: ConfigReader, layer_type: str) -> ConfigReader:
    """transformers 5 keys Gemma 3's rope_parameters by layer type; older configs give
    rope_theta / rope_scaling for the full layers and rope_local_base_freq for the sliding ones."""
    params = cfg.raw("rope_parameters")
    if isinstance(params, dict) and ("full_attention" in params or "sliding_attention" in params):
        if layer_type not in params:
            raise cfg.error("rope_parameters", f"has no entry for {layer_type} layers")
        return ConfigReader({**cfg.data, "rope_parameters": params[layer_type]}, cfg.path)
    if layer_type == "sliding_attention":
        base = cfg.float("rope_local_base_freq", 10000.0, positive=True)
        data = {k: v for k, v in cfg.data.items() if k not in ("rope_parameters", "rope_scaling")}
        return ConfigReader({**data, "rope_theta": base}, cfg.path)
    return cfg


def _gemma3_text(cfg: ConfigReader) -> Architecture:
    if not cfg.has("layer_types"):  # older configs: every sliding_window_pattern-th layer is full
        n = cfg.int("num_hidden_layers", limit="max_layers")
        every = cfg.int("sliding_window_pattern", 6, minimum=1)
        cfg = ConfigReader({**cfg.data, "layer_types": [
            "full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(n)]}, cfg.path)
    full = _per_layer_type_rope(cfg, "full_attention")
    arch = _gemma(full)
    arch.family = "gemma3_text"
    arch.qk_norm = True
    arch.post_attn_norm = arch.post_ffn_norm = True
    arch.attn_scale = cfg.float("query_pre_attn_scalar", float(arch.head_dim), positive=True) ** -0.5
    # Gemma 3 keeps attn_logit_softcapping in its config but never applies it (transformers'
    # Gemma3Attention passes no softcap); only the final soft-capping acts.
    arch.final_softcap = cfg.float("final_logit_softcapping", 0.0)
    if any(arch.sliding_window):
        arch.rope_local = build_rope(_per_layer_type_rope(cfg, "sliding_attention"), arch.head_dim,
                                     arch.max_position_embeddings)
        if arch.rope_local.rotary_dim != arch.rope.rotary_dim or arch.rope_local.inv_freq_long is not None \
                or arch.rope_local.dynamic:
            raise UnsupportedModelError(f"{cfg.path}: field 'rope_parameters': the sliding layers' rope must rotate "
                                        "as many dims as the full layers', without longrope or dynamic scaling",
                                        file=cfg.path, field="rope_parameters")
    return arch


def _smollm3(cfg: ConfigReader) -> Architecture:
    arch = _llama_like(cfg, "smollm3", qkv_bias=cfg.bool("attention_bias", False), window=0, tie_default=True)
    flags = cfg.raw("no_rope_layers")
    if flags is None:  # transformers' default: every no_rope_layer_interval-th layer has no RoPE
        every = cfg.int("no_rope_layer_interval", 4, minimum=1)
        flags = [int((i + 1) % every != 0) for i in range(arch.num_layers)]
    if not isinstance(flags, list) or len(flags) != arch.num_layers or any(f not in (0, 1) for f in flags):
        raise cfg.error("no_rope_layers", f"expected a list of {arch.num_layers} entries of 0 or 1 "
                                          "(1 = the layer uses RoPE)")
    arch.rope_layers = [int(f) for f in flags]
    return arch


def _olmo2(cfg: ConfigReader) -> Architecture:
    arch = _llama_like(cfg, "olmo2", qkv_bias=cfg.bool("attention_bias", False), window=0)
    arch.pre_norm = False
    arch.post_attn_norm = arch.post_ffn_norm = True
    arch.qk_norm = arch.qk_norm_across_heads = True
    return arch


def _granite(cfg: ConfigReader) -> Architecture:
    arch = _llama_like(cfg, "granite", qkv_bias=cfg.bool("attention_bias", False), window=0)
    arch.embed_scale = cfg.float("embedding_multiplier", 1.0)
    arch.attn_scale = cfg.float("attention_multiplier", 1.0, positive=True)
    arch.residual_scale = cfg.float("residual_multiplier", 1.0)
    arch.logit_scale = 1.0 / cfg.float("logits_scaling", 1.0, positive=True)
    return arch


def _experts(cfg: ConfigReader, arch: Architecture, *, count_key: str, size_key: str, renormalise: bool | None,
             shared: bool = False) -> Architecture:
    """The mixture-of-experts switches. Every layer must be sparse: checkpoints that mix dense
    and sparse layers (decoder_sparse_step > 1, mlp_only_layers) are refused by name."""
    if not cfg.has(count_key) and cfg.has("num_local_experts"):  # qwen3_moe saves this name
        count_key = "num_local_experts"
    arch.num_experts = cfg.int(count_key, minimum=1, limit=DIM)
    arch.experts_per_token = cfg.int("num_experts_per_tok", 2, minimum=1)
    if arch.experts_per_token > arch.num_experts:
        raise cfg.error("num_experts_per_tok", f"{arch.experts_per_token} is more than {count_key} {arch.num_experts}")
    arch.expert_intermediate_size = cfg.int(size_key, limit=DIM)
    arch.norm_topk_prob = cfg.bool("norm_topk_prob", False) if renormalise is None else renormalise
    if cfg.int("decoder_sparse_step", 1, minimum=1) != 1 or (cfg.raw("mlp_only_layers") or []):
        raise UnsupportedModelError(f"{cfg.path}: fields 'decoder_sparse_step' / 'mlp_only_layers': dense layers "
                                    f"between the expert layers are not supported (every layer must be sparse)",
                                    file=cfg.path, field="mlp_only_layers")
    if shared:
        arch.shared_expert_size = cfg.int("shared_expert_intermediate_size", 0, minimum=0, limit=DIM)
        arch.shared_expert_gate = arch.shared_expert_size > 0
    return arch


def _mixtral(cfg: ConfigReader) -> Architecture:
    arch = _llama_like(cfg, "mixtral", qkv_bias=False, window=cfg.int("sliding_window", 0, minimum=0))
    return _experts(cfg, arch, count_key="num_local_experts", size_key="intermediate_size", renormalise=True)


def _qwen2_moe(cfg: ConfigReader) -> Architecture:
    if not cfg.has("layer_types") and cfg.bool("use_sliding_window", False) and cfg.has("sliding_window"):
        raise UnsupportedModelError(f"{cfg.path}: field 'use_sliding_window': not supported for qwen2_moe",
                                    file=cfg.path, field="use_sliding_window")
    arch = _llama_like(cfg, "qwen2_moe", qkv_bias=cfg.bool("qkv_bias", True), window=0)
    return _experts(cfg, arch, count_key="num_experts", size_key="moe_intermediate_size", renormalise=None,
                    shared=True)


def _qwen3_moe(cfg: ConfigReader) -> Architecture:
    arch = _llama_like(cfg, "qwen3_moe", qkv_bias=cfg.bool("attention_bias", False), window=0, qk_norm=True)
    return _experts(cfg, arch, count_key="num_experts", size_key="moe_intermediate_size", renormalise=None)


def _olmoe(cfg: ConfigReader) -> Architecture:
    if cfg.raw("clip_qkv") is not None:
        raise UnsupportedModelError(f"{cfg.path}: field 'clip_qkv': clipping q, k and v is not supported",
                                    file=cfg.path, field="clip_qkv")
    arch = _llama_like(cfg, "olmoe", qkv_bias=cfg.bool("attention_bias", False), window=0)
    arch.qk_norm = arch.qk_norm_across_heads = True
    return _experts(cfg, arch, count_key="num_experts", size_key="intermediate_size", renormalise=None)


def _gpt_oss(cfg: ConfigReader) -> Architecture:
    # Attention biases on q/k/v/o, alternating sliding/full layers (layer_types), YaRN rope.
    arch = _llama_like(cfg, "gpt_oss", qkv_bias=cfg.bool("attention_bias", True), window=0)
    arch.o_bias = arch.qkv_bias
    arch.attn_sinks = True
    # The router's softmax over the top-k logits equals the full softmax renormalised over the top k.
    arch = _experts(cfg, arch, count_key="num_local_experts", size_key="intermediate_size", renormalise=True)
    arch.router_bias = arch.expert_bias = True
    arch.swiglu_limit = cfg.float("swiglu_limit", 7.0, positive=True)
    arch.swiglu_alpha = cfg.float("swiglu_alpha", 1.702)
    return arch


def _gpt2(cfg: ConfigReader) -> Architecture:
    hidden = cfg.int("n_embd", limit=DIM)
    heads = cfg.int("n_head", limit=DIM)
    if hidden % heads:
        raise cfg.error("n_embd", f"{hidden} is not divisible by n_head {heads}")
    if cfg.bool("scale_attn_by_inverse_layer_idx", False):
        raise UnsupportedModelError(f"{cfg.path}: field 'scale_attn_by_inverse_layer_idx': true is not supported",
                                    file=cfg.path, field="scale_attn_by_inverse_layer_idx")
    n_layers = cfg.int("n_layer", limit="max_layers")
    return Architecture(
        family="gpt2",
        vocab_size=cfg.int("vocab_size", limit=DIM),
        hidden_size=hidden,
        num_layers=n_layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=cfg.int("n_inner", 4 * hidden, limit=DIM),
        max_position_embeddings=cfg.int("n_positions", 1024),
        norm="layernorm",
        norm_eps=cfg.float("layer_norm_epsilon", 1e-5, positive=True),
        norm_bias=True,
        learned_positions=True,
        qkv_bias=True,
        o_bias=True,
        gated_mlp=False,
        mlp_bias=True,
        activation=_activation(cfg, "activation_function", default="gelu_new"),
        tie_word_embeddings=cfg.bool("tie_word_embeddings", True),
        attn_scale=1.0 if not cfg.bool("scale_attn_weights", True) else 0.0,
        sliding_window=[0] * n_layers,
    )


def _llama_tensors(arch: Architecture, *, fused: bool = False, sandwich: bool = False) -> TensorMap:
    m: TensorMap = [("embed", -1, [("model.embed_tokens.weight", False)]),
                    ("final_norm.weight", -1, [("model.norm.weight", False)])]
    if not arch.tie_word_embeddings:
        m.append(("lm_head", -1, [("lm_head.weight", False)]))
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        if arch.pre_norm:
            m.append(("attn_norm.weight", i, [(p + "input_layernorm.weight", False)]))
        if fused:
            m.append(("qkv.weight", i, [(p + "self_attn.qkv_proj.weight", False)]))
            m.append(("up.weight", i, [(p + "mlp.gate_up_proj.weight", False)]))
        else:
            m.append(("qkv.weight", i, [(p + f"self_attn.{x}_proj.weight", False) for x in "qkv"]))
            if not arch.num_experts:
                m.append(("up.weight", i, [(p + f"mlp.{x}_proj.weight", False) for x in ("gate", "up")]))
            if arch.qkv_bias:
                m.append(("qkv.bias", i, [(p + f"self_attn.{x}_proj.bias", False) for x in "qkv"]))
            if arch.mlp_bias:
                m.append(("up.bias", i, [(p + f"mlp.{x}_proj.bias", False) for x in ("gate", "up")]))
                m.append(("down.bias", i, [(p + "mlp.down_proj.bias", False)]))
        m.append(("o.weight", i, [(p + "self_attn.o_proj.weight", False)]))
        if arch.o_bias:
            m.append(("o.bias", i, [(p + "self_attn.o_proj.bias", False)]))
        if arch.qk_norm:
            m.append(("q_norm.weight", i, [(p + "self_attn.q_norm.weight", False)]))
            m.append(("k_norm.weight", i, [(p + "self_attn.k_norm.weight", False)]))
        if arch.attn_sinks:
            m.append(("sinks", i, [(p + "self_attn.sinks", False)]))
        if arch.num_experts:
            m += _expert_tensors(arch, p, i)
        else:
            m.append(("down.weight", i, [(p + "mlp.down_proj.weight", False)]))
        if not arch.pre_norm:  # OLMo 2: post norms only, under the pre-norm names' neighbours
            m.append(("attn_post_norm.weight", i, [(p + "post_attention_layernorm.weight", False)]))
            m.append(("ffn_post_norm.weight", i, [(p + "post_feedforward_layernorm.weight", False)]))
        elif sandwich:
            m.append(("attn_post_norm.weight", i, [(p + "post_attention_layernorm.weight", False)]))
            m.append(("ffn_norm.weight", i, [(p + "pre_feedforward_layernorm.weight", False)]))
            m.append(("ffn_post_norm.weight", i, [(p + "post_feedforward_layernorm.weight", False)]))
        else:
            m.append(("ffn_norm.weight", i, [(p + "post_attention_layernorm.weight", False)]))
    return m


def _expert_tensors(arch: Architecture, p: str, i: int) -> TensorMap:
    """Router, experts (gate|up stacked, down) and the shared expert of layer i: Mixtral's
    block_sparse_moe.{gate, experts.E.w1/w3/w2}, gpt-oss's fused mlp.experts.* (below), the
    others' mlp.{gate, experts.E.*_proj}."""
    m: TensorMap = []
    if arch.family == "gpt_oss":
        # One tensor per layer for all experts, [E, in, out] (x @ W), gate and up interleaved in
        # the last dim: "name[E]" selects an expert, "[0::2]" / "[1::2]" the gate / up columns
        # (io/checkpoint.py reads the selection).
        q = p + "mlp."
        x = q + "experts."
        m.append(("router.weight", i, [(q + "router.weight", False)]))
        m.append(("router.bias", i, [(q + "router.bias", False)]))
        for e in range(arch.num_experts):
            m.append((f"experts.{e}.up.weight", i, [(x + f"gate_up_proj[{e}][{c}::2]", True) for c in (0, 1)]))
            m.append((f"experts.{e}.up.bias", i, [(x + f"gate_up_proj_bias[{e}][{c}::2]", False) for c in (0, 1)]))
            m.append((f"experts.{e}.down.weight", i, [(x + f"down_proj[{e}]", True)]))
            m.append((f"experts.{e}.down.bias", i, [(x + f"down_proj_bias[{e}]", False)]))
        return m
    if arch.family == "mixtral":
        q = p + "block_sparse_moe."
        m.append(("router.weight", i, [(q + "gate.weight", False)]))
        for e in range(arch.num_experts):
            m.append((f"experts.{e}.up.weight", i, [(q + f"experts.{e}.{w}.weight", False) for w in ("w1", "w3")]))
            m.append((f"experts.{e}.down.weight", i, [(q + f"experts.{e}.w2.weight", False)]))
        return m
    q = p + "mlp."
    m.append(("router.weight", i, [(q + "gate.weight", False)]))
    for e in range(arch.num_experts):
        m.append((f"experts.{e}.up.weight", i, [(q + f"experts.{e}.{w}_proj.weight", False) for w in ("gate", "up")]))
        m.append((f"experts.{e}.down.weight", i, [(q + f"experts.{e}.down_proj.weight", False)]))
    if arch.shared_expert_size:
        m.append(("up.weight", i, [(q + f"shared_expert.{w}_proj.weight", False) for w in ("gate", "up")]))
        m.append(("down.weight", i, [(q + "shared_expert.down_proj.weight", False)]))
    if arch.shared_expert_gate:
        m.append(("shared_gate.weight", i, [(q + "shared_expert_gate.weight", False)]))
    return m


def _gpt2_tensors(arch: Architecture) -> TensorMap:
    m: TensorMap = [("embed", -1, [("transformer.wte.weight", False)]),
                    ("pos_embed", -1, [("transformer.wpe.weight", False)]),
                    ("final_norm.weight", -1, [("transformer.ln_f.weight", False)]),
                    ("final_norm.bias", -1, [("transformer.ln_f.bias", False)])]
    if not arch.tie_word_embeddings:
        m.append(("lm_head", -1, [("lm_head.weight", False)]))
    for i in range(arch.num_layers):
        p = f"transformer.h.{i}."
        # GPT-2 stores its projections as Conv1D weights [in, out]: transposed on load.
        m += [
            ("attn_norm.weight", i, [(p + "ln_1.weight", False)]),
            ("attn_norm.bias", i, [(p + "ln_1.bias", False)]),
            ("qkv.weight", i, [(p + "attn.c_attn.weight", True)]),
            ("qkv.bias", i, [(p + "attn.c_attn.bias", False)]),
            ("o.weight", i, [(p + "attn.c_proj.weight", True)]),
            ("o.bias", i, [(p + "attn.c_proj.bias", False)]),
            ("ffn_norm.weight", i, [(p + "ln_2.weight", False)]),
            ("ffn_norm.bias", i, [(p + "ln_2.bias", False)]),
            ("up.weight", i, [(p + "mlp.c_fc.weight", True)]),
            ("up.bias", i, [(p + "mlp.c_fc.bias", False)]),
            ("down.weight", i, [(p + "mlp.c_proj.weight", True)]),
            ("down.bias", i, [(p + "mlp.c_proj.bias", False)]),
        ]
    return m


FAMILIES: dict[str, Family] = {
    "gpt2": Family("gpt2", _gpt2, _gpt2_tensors),
    "llama": Family("llama", _llama, _llama_tensors),
    "mistral": Family("mistral", _mistral, _llama_tensors),
    "qwen2": Family("qwen2", _qwen2, _llama_tensors),
    "qwen3": Family("qwen3", _qwen3, _llama_tensors),
    "phi3": Family("phi3", _phi3, lambda a: _llama_tensors(a, fused=True)),
    "gemma": Family("gemma", _gemma, _llama_tensors),
    "gemma2": Family("gemma2", _gemma2, lambda a: _llama_tensors(a, sandwich=True)),
    "gemma3_text": Family("gemma3_text", _gemma3_text, lambda a: _llama_tensors(a, sandwich=True)),
    "smollm3": Family("smollm3", _smollm3, _llama_tensors),
    "olmo2": Family("olmo2", _olmo2, _llama_tensors),
    "granite": Family("granite", _granite, _llama_tensors),
    "mixtral": Family("mixtral", _mixtral, _llama_tensors),
    "qwen2_moe": Family("qwen2_moe", _qwen2_moe, _llama_tensors),
    "qwen3_moe": Family("qwen3_moe", _qwen3_moe, _llama_tensors),
    "olmoe": Family("olmoe", _olmoe, _llama_tensors),
    "gpt_oss": Family("gpt_oss", _gpt_oss, _llama_tensors),
}


def family_for(cfg: ConfigReader) -> Family:
    model_type = cfg.str("model_type")
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"{cfg.path}: model_type '{model_type}' is not supported; supported model types: "
            f"{', '.join(sorted(FAMILIES))}",
            file=cfg.path,
            field="model_type",
        )
    return FAMILIES[model_type]
