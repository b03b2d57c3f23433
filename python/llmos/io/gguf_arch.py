"""The GGUF architectures llmos reads, as llama.cpp's converter (convert_hf_to_gguf.py) writes them
and its loader (llama-model.cpp) reads them: for each, the transformers model_type, the config
fields that come from the metadata, and the GGUF tensor names under their transformers names.

Per architecture, what differs from the llama layout:

* llama: Q/K rows permuted into llama.cpp's rope layout (undone on load); Llama 3.1's rope
  scaling as `rope_freqs` divisors (turned back into llama3 parameters). With
  `llama.expert_count` it is Mixtral: `ffn_gate_inp` the router, `ffn_{gate,up,down}_exps` the
  experts stacked [expert, rows, cols] (older files: one `ffn_gate.E` tensor per expert).
* qwen2, qwen3, mistral: the llama layout without the permutation (qwen3: q/k norms).
* gemma, gemma2, gemma3: RMSNorm weights stored as 1 + w (the converter adds the 1 Gemma's norm
  applies; it is taken off again here). gemma2 / gemma3: pre- and post-norms around attention and
  MLP; which layers slide is `attention.sliding_window_pattern` (a bool per layer, or every n-th
  layer full) or else llama.cpp's fixed pattern: Gemma 2's even layers, all but every 6th of
  Gemma 3's. Gemma 3's sliding layers use `rope.freq_base_swa` (default 10000), its full ones
  `rope.freq_base` with the file's linear scaling. Attention is scaled by 1/sqrt(head_dim) (the
  27B, 46 / 62 layers, by 1/sqrt(hidden / heads)): llama.cpp's rule, as the file carries no
  query_pre_attn_scalar. Soft-capping from `final_logit_softcapping` / `attn_logit_softcapping`
  (Gemma 2: llama.cpp's 30 / 50 when absent; Gemma 3: final only).
* phi3: q|k|v fused in `attn_qkv` and gate|up in `ffn_up`, as the transformers checkpoint fuses
  them (kept fused); `rope.dimension_count` gives the partial rotary factor; LongRoPE factors
  come as the `rope_factors_short` / `rope_factors_long` tensors.
* qwen2moe / qwen3moe: router `ffn_gate_inp`, experts `ffn_*_exps`; qwen2moe's shared expert
  `ffn_*_shexp` behind the sigmoid gate `ffn_gate_inp_shexp`. The top-k weights are renormalised
  as llama.cpp does for the architecture (qwen2moe no, qwen3moe yes) unless the file says
  `expert_weights_norm`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmos.errors import ModelFormatError

# GGUF layer tensor -> transformers name under model.layers.N. (the llama layout)
LLAMA_LAYER = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_QWEN_EXPERTS = {"ffn_gate_exps": "mlp.experts.{e}.gate_proj", "ffn_up_exps": "mlp.experts.{e}.up_proj",
                 "ffn_down_exps": "mlp.experts.{e}.down_proj"}
# Per-frequency rope divisors: Llama 3.1's rope scaling as llama.cpp's converter stores it.
ROPE_FREQS = "rope_freqs.weight"
# Tensors llama.cpp writes that are not weights of the transformers model (read into the config).
NOT_WEIGHTS = ("rope_factors_short.weight", "rope_factors_long.weight", ROPE_FREQS)


@dataclass(frozen=True)
class GgufArch:
    model_type: str
    hf_class: str
    layer: dict[str, str] = field(default_factory=lambda: dict(LLAMA_LAYER))
    experts: dict[str, str] = field(default_factory=dict)  # stacked expert tensor -> name with {e}
    rope_permuted: bool = False   # llama.cpp's Q/K row permutation
    norm_shift: float = 0.0       # GGUF norm weights = transformers' + norm_shift


def _with(**changes) -> dict[str, str]:
    return {**LLAMA_LAYER, **changes}


_MIXTRAL = GgufArch("mixtral", "MixtralForCausalLM", _with(ffn_gate_inp="block_sparse_moe.gate"), {
    "ffn_gate_exps": "block_sparse_moe.experts.{e}.w1", "ffn_up_exps": "block_sparse_moe.experts.{e}.w3",
    "ffn_down_exps": "block_sparse_moe.experts.{e}.w2"}, rope_permuted=True)

# general.architecture -> how it reads
ARCHITECTURES: dict[str, GgufArch] = {
    "llama": GgufArch("llama", "LlamaForCausalLM", rope_permuted=True),
    "mistral": GgufArch("mistral", "MistralForCausalLM"),
    "qwen2": GgufArch("qwen2", "Qwen2ForCausalLM"),
    "qwen3": GgufArch("qwen3", "Qwen3ForCausalLM"),
    "gemma": GgufArch("gemma", "GemmaForCausalLM", norm_shift=1.0),
    "gemma2": GgufArch("gemma2", "Gemma2ForCausalLM", _with(
        ffn_norm="pre_feedforward_layernorm", post_attention_norm="post_attention_layernorm",
        post_ffw_norm="post_feedforward_layernorm"), norm_shift=1.0),
    "gemma3": GgufArch("gemma3_text", "Gemma3ForCausalLM", _with(
        ffn_norm="pre_feedforward_layernorm", post_attention_norm="post_attention_layernorm",
        post_ffw_norm="post_feedforward_layernorm"), norm_shift=1.0),
    "phi3": GgufArch("phi3", "Phi3ForCausalLM", _with(attn_qkv="self_attn.qkv_proj", ffn_up="mlp.gate_up_proj")),
    "qwen2moe": GgufArch("qwen2_moe", "Qwen2MoeForCausalLM", _with(
        ffn_gate_inp="mlp.gate", ffn_gate_shexp="mlp.shared_expert.gate_proj",
        ffn_up_shexp="mlp.shared_expert.up_proj", ffn_down_shexp="mlp.shared_expert.down_proj",
        ffn_gate_inp_shexp="mlp.shared_expert_gate"), _QWEN_EXPERTS),
    "qwen3moe": GgufArch("qwen3_moe", "Qwen3MoeForCausalLM", _with(ffn_gate_inp="mlp.gate"), _QWEN_EXPERTS),
}
# how a file says "mixture of experts" where the architecture name does not (llama -> Mixtral)
_MOE_OF = {"llama": _MIXTRAL}


def arch_for(g) -> GgufArch:
    """The GgufArch of GgufFile `g` (its general.architecture already checked)."""
    if g.arch in _MOE_OF and (g.number("expert_count", 0) or 0) > 0:
        return _MOE_OF[g.arch]
    return ARCHITECTURES[g.arch]


def hf_names(g, spec: GgufArch, name: str) -> list[tuple[str, int | None]]:
    """The transformers tensors GGUF tensor `name` holds: [(name, expert or None)] (a stacked
    expert tensor holds one per expert)."""
    stem, _, suffix = name.rpartition(".")
    parts = stem.split(".")
    if len(parts) in (3, 4) and parts[0] == "blk" and parts[1].isdigit():
        n_layers = g.number("block_count", required=True)
        if int(parts[1]) >= n_layers:
            raise ModelFormatError(f"{g.path}: tensor {name}: layer {int(parts[1])} is not below {g.arch}.block_count="
                                   f"{n_layers}", file=g.path, field=name)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        layer, kind = int(parts[1]), parts[2]
        p = f"model.layers.{layer}."
        if kind in spec.layer:
            return [(f"{p}{spec.layer[kind]}.{suffix}", None)]
        if kind in spec.experts:
            n = _expert_count(g, name)
            return [(f"{p}{spec.experts[kind].format(e=e)}.{suffix}", e) for e in range(n)]
    # older Mixtral files: blk.N.ffn_gate.E.weight, one tensor per expert
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[3].isdigit():
        stacked = f"{parts[2]}_exps"
        if stacked in spec.experts:
            e = int(parts[3])
            if e >= (g.number("expert_count", 0) or 0):
                raise ModelFormatError(f"{g.path}: tensor {name}: expert {e} is not below {g.arch}.expert_count",
                                       file=g.path, field=name)
            return [(f"model.layers.{int(parts[1])}.{spec.experts[stacked].format(e=e)}.{suffix}", -1)]
    if stem in GLOBAL:
        return [(f"{GLOBAL[stem]}.{suffix}", None)]
    raise ModelFormatError(f"{g.path}: tensor {name} has no place in a {g.arch} model", file=g.path, field=name)


def _expert_count(g, name: str) -> int:
    """The expert dimension of stacked tensor `name`, which must be the file's expert_count."""
    t = g.tensors[name]
    shape = [int(d) for d in t.shape]  # GGUF order: [cols, rows, experts]
    want = g.number("expert_count", 0) or 0
    if len(shape) != 3 or shape[2] != want:
        raise ModelFormatError(f"{g.path}: tensor {name} has shape {list(reversed(shape))}; expected "
                               f"[{g.arch}.expert_count={want}, rows, cols]", file=g.path, field=f"{name}.shape")
    return want


# ---- config ---------------------------------------------------------------------------------------

def llama3_rope_from_freqs(g, cfg: dict) -> dict:
    """transformers' llama3 rope_scaling that reproduces the file's rope_freqs (llama.cpp divides
    each rope frequency by it). The converter computes them from factor, low / high_freq_factor and
    original_max_position_embeddings: 1 for short wavelengths, `factor` for long ones, and between
    them 1 / rf = 1/factor + s (1 - 1/factor) with s linear in the frequency, s = (old_ctx f / 2pi - low)
    / (high - low). Only the line s(f) and `factor` matter, so with low = 1 (Llama 3.1's) the line
    through the smoothed frequencies gives high and old_ctx (with fewer than two of them, any line
    that keeps the other frequencies on their sides). The result is checked by recomputing
    rope_freqs from it; a file it cannot reproduce is refused."""
    dims = g.number("rope.dimension_count", cfg["head_dim"])
    if not 0 < dims <= cfg["head_dim"] or dims % 2:
        raise ModelFormatError(f"{g.path}: {g.arch}.rope.dimension_count={dims}: expected an even count up to the "
                               f"head size {cfg['head_dim']}", file=g.path, field=f"{g.arch}.rope.dimension_count")
    rf = np.asarray(g.vector(ROPE_FREQS, dims // 2), np.float64)
    base = float(cfg["rope_theta"])
    freq = 1.0 / base ** (np.arange(0, dims, 2, dtype=np.float64) / dims)
    factor = float(rf.max())
    medium = (rf > 1 + 1e-6) & (rf < factor * (1 - 1e-6))

    def refuse(why: str):
        return ModelFormatError(f"{g.path}: tensor {ROPE_FREQS}: {why}; llmos reads Llama 3.1 style rope "
                                "scaling only", file=g.path, field=ROPE_FREQS)

    if not np.isfinite(rf).all() or rf.min() < 1 - 1e-6 or factor <= 1:
        raise refuse("expected values from 1 up to a factor above 1")
    s = (1 / rf[medium] - 1 / factor) / (1 - 1 / factor)
    if medium.sum() >= 2:
        slope, intercept = np.polyfit(freq[medium], s, 1)  # s = slope f + intercept = (c f - 1) / (high - 1)
        if not (intercept < 0 and slope > 0):
            raise refuse("the smoothed frequencies do not fall on llama3's line")
        high = 1 - 1 / intercept
        c = slope * (high - 1)
    else:
        # One smoothed frequency or none (small heads): any line through it that keeps the
        # unsmoothed frequencies on their sides (c f < 1 for the scaled ones, c f > high for the
        # others) gives the same frequencies; take one well inside those bounds.
        f_scaled, f_kept = freq[rf >= factor * (1 - 1e-6)], freq[rf <= 1 + 1e-6]
        if medium.any():
            f_m, s_m = float(freq[medium][0]), float(s[0])
            upper = 1 / f_scaled.max() if f_scaled.size else 4 / f_m
            c = np.sqrt(upper / f_m)  # between 1 / f_m (s = 0 there) and the scaled frequencies' bound
            high = 1 + (c * f_m - 1) / s_m
        else:
            lo = f_scaled.max() if f_scaled.size else f_kept.min() / 4
            hi = f_kept.min() if f_kept.size else lo * 4
            c = 1 / np.sqrt(lo * hi)
            high = np.sqrt(c * hi)
        if f_kept.size and not c * f_kept.min() > high:
            raise refuse("no llama3 smoothing band fits between its frequencies")
    old_ctx = 2 * np.pi * c
    params = {"rope_type": "llama3", "factor": _tidy(factor), "low_freq_factor": 1.0, "high_freq_factor": _tidy(high),
              "original_max_position_embeddings": _tidy(old_ctx)}
    want = _llama3_freqs(freq, params)
    if not np.allclose(want, rf, rtol=1e-4, atol=0):
        raise refuse(f"llama3 parameters {params} do not reproduce it")
    return params


def _tidy(x: float) -> float | int:
    """x rounded where it is that close to a short decimal (8192.0003 -> 8192), which the check
    after it confirms."""
    r = round(x, 3)
    if abs(x - r) > 1e-5 * max(1.0, abs(x)):
        return float(x)
    return int(r) if r == int(r) else float(r)


def _llama3_freqs(freq: np.ndarray, p: dict) -> np.ndarray:
    """llama.cpp's converter's rope_freqs for llama3 parameters `p`."""
    low, high, old, factor = p["low_freq_factor"], p["high_freq_factor"], p["original_max_position_embeddings"], p["factor"]
    wavelen = 2 * np.pi / freq
    smooth = (old / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, mid))


def config(g, spec: GgufArch, cfg: dict) -> dict:
    """`cfg` (the llama-layout fields read by GgufFile.config) completed for the architecture."""
    if ROPE_FREQS in g.tensors:
        if not spec.rope_permuted:  # the llama layout (llama, Mixtral) is where the converter writes it
            raise ModelFormatError(f"{g.path}: tensor {ROPE_FREQS} is not supported in a {g.arch} file",
                                   file=g.path, field=ROPE_FREQS)
        if "rope_scaling" in cfg:
            raise ModelFormatError(f"{g.path}: tensor {ROPE_FREQS} and {g.arch}.rope.scaling.type both scale the "
                                   "rope", file=g.path, field=ROPE_FREQS)
        cfg["rope_scaling"] = llama3_rope_from_freqs(g, cfg)
    cfg["model_type"], cfg["architectures"] = spec.model_type, [spec.hf_class]
    extra = _CONFIG.get(spec.model_type)
    if extra is not None:
        extra(g, cfg)
    return cfg


GATING_SOFTMAX = 1  # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX, these families' router


def _experts(g, cfg: dict, *, count_key: str, size_key: str | None, renormalise: bool) -> None:
    gating = g.value(f"{g.arch}.expert_gating_func", GATING_SOFTMAX)
    if gating != GATING_SOFTMAX:
        raise ModelFormatError(f"{g.path}: {g.arch}.expert_gating_func={gating!r} is not supported ({g.arch} "
                               f"routes by softmax: {GATING_SOFTMAX})", file=g.path, field=f"{g.arch}.expert_gating_func")
    cfg[count_key] = g.number("expert_count", required=True)
    cfg["num_experts_per_tok"] = g.number("expert_used_count", required=True)
    if size_key is not None:
        cfg[size_key] = g.number("expert_feed_forward_length", required=True)
    cfg["norm_topk_prob"] = bool(g.value(f"{g.arch}.expert_weights_norm", renormalise))
    cfg["decoder_sparse_step"], cfg["mlp_only_layers"] = 1, []


def _mixtral(g, cfg: dict) -> None:
    _experts(g, cfg, count_key="num_local_experts", size_key=None, renormalise=True)
    cfg["router_jitter_noise"] = 0.0


def _qwen2_moe(g, cfg: dict) -> None:
    _experts(g, cfg, count_key="num_experts", size_key="moe_intermediate_size", renormalise=False)
    cfg["shared_expert_intermediate_size"] = g.number("expert_shared_feed_forward_length", 0)
    cfg["qkv_bias"] = "blk.0.attn_q.bias" in g.tensors
    cfg["intermediate_size"] = g.number("feed_forward_length", cfg["moe_intermediate_size"])


def _qwen3_moe(g, cfg: dict) -> None:
    _experts(g, cfg, count_key="num_experts", size_key="moe_intermediate_size", renormalise=True)
    cfg["intermediate_size"] = g.number("feed_forward_length", cfg["moe_intermediate_size"])


GEMMA2_FULL_EVERY = 2        # llama.cpp: every 2nd Gemma 2 layer is full attention (layer 0 slides)
GEMMA3_FULL_EVERY = 6        # llama.cpp: every 6th Gemma 3 layer is full attention
GEMMA3_LOCAL_BASE = 10000.0  # llama.cpp: the sliding layers' rope base unless rope.freq_base_swa
GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}  # llama.cpp scales the 27B's attention by hidden / heads
# llama.cpp's Gemma 2 defaults where the file is silent: window, attention and final soft-capping
GEMMA2_DEFAULTS = {"attention.sliding_window": 4096, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}


def _gemma(g, cfg: dict) -> None:
    cfg["hidden_activation"] = "gelu_pytorch_tanh"
    cfg.pop("hidden_act", None)


def _sliding_layers(g, n: int, full_every: int) -> list[bool]:
    """Which layers slide: `attention.sliding_window_pattern` (a bool per layer, or every n-th
    layer full), else llama.cpp's fixed pattern for the architecture."""
    key = f"{g.arch}.attention.sliding_window_pattern"
    pattern = g.value(key, full_every)
    if isinstance(pattern, int) and not isinstance(pattern, bool) and pattern >= 0:
        # llama.cpp's set_swa_pattern: 0 = every layer slides
        return [pattern == 0 or i % pattern < pattern - 1 for i in range(n)]
    if isinstance(pattern, list) and len(pattern) == n:
        return [bool(p) for p in pattern]
    raise ModelFormatError(f"{g.path}: {key}: expected {n} entries (one per layer: block_count) or a layer count",
                           file=g.path, field=key)


def _gemma_windows(g, cfg: dict, full_every: int, defaults: dict) -> None:
    """layer_types, sliding_window, query_pre_attn_scalar and the soft-capping of Gemma 2 / 3 as
    llama.cpp reads them (`defaults`: its values where the file says nothing)."""
    _gemma(g, cfg)
    n = cfg["num_hidden_layers"]
    window = g.number("attention.sliding_window", defaults.get("attention.sliding_window", 0))
    sliding = _sliding_layers(g, n, full_every) if window > 0 else [False] * n
    cfg["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]
    cfg["sliding_window"] = window if window > 0 else None
    big = n == GEMMA_27B_LAYERS[g.arch]
    cfg["query_pre_attn_scalar"] = cfg["hidden_size"] // cfg["num_attention_heads"] if big else cfg["head_dim"]
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        cfg[key] = g.number(key, defaults.get(key))


def _gemma2(g, cfg: dict) -> None:
    _gemma_windows(g, cfg, GEMMA2_FULL_EVERY, GEMMA2_DEFAULTS)
    local = g.number("rope.freq_base_swa", cfg["rope_theta"])
    if local != cfg["rope_theta"]:
        raise ModelFormatError(f"{g.path}: {g.arch}.rope.freq_base_swa={local} differs from rope.freq_base="
                               f"{cfg['rope_theta']}: Gemma 2 has one rope base", file=g.path,
                               field=f"{g.arch}.rope.freq_base_swa")


def _gemma3(g, cfg: dict) -> None:
    _gemma_windows(g, cfg, GEMMA3_FULL_EVERY, {})
    cfg["attn_logit_softcapping"] = None  # Gemma 3 has none: llama.cpp does not apply the key
    full = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta")}
    scaling = cfg.pop("rope_scaling", None)  # linear, read by GgufFile.config: the full layers'
    if scaling is not None:
        full.update(rope_type="linear", factor=scaling["factor"])
    local = g.number("rope.freq_base_swa", GEMMA3_LOCAL_BASE)
    cfg["rope_parameters"] = {"full_attention": full, "sliding_attention": {"rope_type": "default", "rope_theta": local}}


def _phi3(g, cfg: dict) -> None:
    dims = g.number("rope.dimension_count", cfg["head_dim"])
    if not 0 < dims <= cfg["head_dim"] or dims % 2:
        raise ModelFormatError(f"{g.path}: {g.arch}.rope.dimension_count={dims}: expected an even count up to the "
                               f"head size {cfg['head_dim']}", file=g.path, field=f"{g.arch}.rope.dimension_count")
    cfg["partial_rotary_factor"] = dims / cfg["head_dim"]
    window = g.number("attention.sliding_window", 0)
    cfg["sliding_window"] = window if window > 0 else None
    original = g.number("rope.scaling.original_context_length")
    if original is not None:
        cfg["original_max_position_embeddings"] = original
    short, long = "rope_factors_short.weight", "rope_factors_long.weight"
    if short in g.tensors or long in g.tensors:
        if not (short in g.tensors and long in g.tensors) or original is None:
            raise ModelFormatError(f"{g.path}: LongRoPE needs both {short} and {long} and "
                                   f"{g.arch}.rope.scaling.original_context_length", file=g.path, field=long)
        cfg["rope_scaling"] = {"type": "longrope", "short_factor": g.vector(short, dims // 2),
                               "long_factor": g.vector(long, dims // 2)}
    cfg.pop("head_dim", None)  # transformers' Phi-3 has none: hidden_size / heads


_CONFIG = {"mixtral": _mixtral, "qwen2_moe": _qwen2_moe, "qwen3_moe": _qwen3_moe, "gemma": _gemma,
           "gemma2": _gemma2, "gemma3_text": _gemma3,
           "phi3": _phi3}
