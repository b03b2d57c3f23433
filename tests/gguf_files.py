"""Writes a Hugging Face checkpoint folder (tests/checkpoints.py) as a GGUF file the way llama.cpp's
convert_hf_to_gguf does: metadata keys, tensor names (gguf's own TensorNameMap, the converter's
mapping), the llama Q/K rope permutation, Gemma's norms stored as 1 + w, experts stacked into
[expert, rows, cols] tensors, the vocabulary (byte-level BPE with merges, or SentencePiece-style
tokens, scores and types) and the chat template. Matrices are stored as F32 or quantized with
gguf.quants (Q8_0, Q4_0, Q4_K...); norms, biases, 1-D tensors and routers stay F32 as llama.cpp
keeps them.

What a GGUF file cannot say is refused here (`Unwritable`), so a test never runs on a file that
quietly differs from its checkpoint: llama.cpp fixes some settings per architecture instead of
reading them (Gemma 2 / 3: which layers slide, the attention scale 1/sqrt(head_dim); the top-k
renormalisation of each MoE architecture), and a checkpoint that differs there has no faithful GGUF.
The conventions are those of llama.cpp's converter (conversion/*.py) and loader (src/models/*.cpp)
as of llama-cpp-python 0.3.36's vendored tree."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

# transformers model_type -> general.architecture (the converter's choice)
GGUF_ARCH = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
             "gemma2": "gemma2", "gemma3_text": "gemma3",
             "phi3": "phi3", "mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe"}
_EXPERT = re.compile(r"^(model\.layers\.\d+\.(?:mlp|block_sparse_moe)\.experts)\.(\d+)\.(\w+)\.weight$")
_ALWAYS_F32 = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")  # routers, as llama.cpp keeps them


# The families llama.cpp writes under other GGUF architectures: (checkpoint kind, overrides).
# Gemma 3 as llama.cpp lays it out (every 6th layer full, attention scaled by 1/sqrt(head_dim)):
# 6 layers, the last full with base 1e6 and linear scaling 2, the others sliding (window 16) on base 1e4.
GEMMA3_AS_LLAMA_CPP = dict(num_hidden_layers=6, query_pre_attn_scalar=32,
                           layer_types=["sliding_attention"] * 5 + ["full_attention"])
# The families llama.cpp writes under their own GGUF architectures: name -> (checkpoint kind of
# tests/checkpoints.py, overrides). Used by tests/test_gguf.py and tools/gguf_llama_cpp.py.
ARCH_CASES = {
    "gemma": ("gemma", {}),                                 # norms stored as 1 + w
    "gemma2": ("gemma2", dict(query_pre_attn_scalar=32)),   # soft-capping keys, even layers slide
    "gemma3": ("gemma3_text", GEMMA3_AS_LLAMA_CPP),
    "phi3": ("phi3", {}),                                   # fused qkv / gate_up
    "phi3_partial_rotary": ("phi3_partial_rotary", {}),     # rope.dimension_count < head size
    "phi3_longrope": ("phi3_longrope", {}),                 # rope_factors_{short,long} tensors
    # Llama 3.1 rope as llama.cpp stores it (rope_freqs); head size 64: three smoothed frequencies
    "llama3_rope": ("llama3_rope", dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1)),
    "mixtral": ("mixtral", {}),                             # llama + expert_count, stacked experts
    "qwen2_moe": ("qwen2_moe", dict(tie_word_embeddings=False)),  # shared expert and its gate
    "qwen3_moe": ("qwen3_moe", {}),
}


class Unwritable(ValueError):
    """The checkpoint has a setting its GGUF file cannot carry."""


def _name_map(arch: str, n_layers: int):
    import gguf

    kind = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    return gguf.get_tensor_name_map(kind, n_layers)


def gguf_name(hf: str, arch: str = "llama", n_layers: int = 64) -> str:
    name = _name_map(arch, n_layers).get_name(hf, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise Unwritable(f"{hf}: no GGUF name for it in a {arch} file")
    return name


def random_kquant(shape: tuple[int, int], qtype, std: float, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant blocks (gguf.quants cannot quantize to K-quants) whose dequantized values
    have standard deviation `std`: random codes and sub-block scales, the fp16 super-block scales
    (dequantization is linear in them) set to hit `std`."""
    import gguf
    from gguf.quants import dequantize

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    data = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    # where each block keeps its fp16 scale d (and dmin): Q4_K/Q5_K lead with d, dmin; Q6_K ends with d
    at = [size - 2] if qtype == gguf.GGMLQuantizationType.Q6_K else [0, 2]

    def with_scale(d: float) -> np.ndarray:
        out = data.copy()
        for a in at:
            out[..., a:a + 2] = np.frombuffer(np.float16(d).tobytes(), np.uint8)
        return out.reshape(rows, -1)

    unit = dequantize(with_scale(1.0), qtype).std()
    return with_scale(std / unit)


def _bpe_vocab(tok_json: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """A byte-level BPE vocabulary in id order and its token types (3 special, 4 added, 1 normal)."""
    vocab = dict(tok_json["model"]["vocab"])
    added = {t["content"]: t for t in tok_json.get("added_tokens", [])}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    tokens = [None] * vocab_size
    for t, i in vocab.items():
        tokens[i] = t
    return tokens, [(3 if added[t]["special"] else 4) if t in added else 1 for t in tokens]


def _rope(cfg: dict, layer_type: str | None = None) -> dict:
    """The rope parameters (transformers 5's rope_parameters, or the older top-level rope_theta and
    rope_scaling dict) of all layers or of one layer type."""
    params = cfg.get("rope_parameters") or {}
    if layer_type is not None and layer_type in params:
        params = params[layer_type]
    legacy = dict(cfg.get("rope_scaling") or {})
    if legacy:
        legacy["rope_type"] = legacy.get("rope_type", legacy.get("type"))
    return {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 10000.0), **legacy, **params}


def _metadata(w, cfg: dict, arch: str) -> None:
    """The hyperparameters as the converter writes them for `arch`."""
    n_head = cfg["num_attention_heads"]
    model_type = cfg["model_type"]
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(cfg.get("num_key_value_heads") or n_head)
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    if cfg.get("head_dim"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if model_type == "gemma3_text":
        _gemma3_metadata(w, cfg, head_dim)
        return
    if model_type == "gemma2":
        _gemma2_metadata(w, cfg, head_dim)
    types = cfg.get("layer_types") or []
    if model_type not in ("gemma2", "gemma3_text", "phi3") and ("sliding_attention" in types or cfg.get("sliding_window")):
        raise Unwritable(f"sliding_window {cfg.get('sliding_window')}: llama.cpp's {arch} has no sliding window")
    rope = _rope(cfg)
    w.add_rope_freq_base(float(rope["rope_theta"]))
    if model_type == "phi3":
        _phi3_metadata(w, cfg, head_dim, rope)
        return
    if rope["rope_type"] == "linear":
        import gguf

        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["rope_type"] == "llama3" and arch == "llama":
        w.add_tensor("rope_freqs.weight", _llama3_rope_freqs(rope, head_dim))
    elif rope["rope_type"] != "default":
        # dynamic, yarn: not read from llama-layout GGUF files
        raise Unwritable(f"rope_type {rope['rope_type']}: llmos reads plain, linear and llama3 rope from "
                         "llama-layout GGUF files only")
    w.add_rope_dimension_count(head_dim)
    if model_type in ("mixtral", "qwen2_moe", "qwen3_moe"):
        w.add_expert_count(cfg.get("num_local_experts") or cfg["num_experts"])
        w.add_expert_used_count(cfg["num_experts_per_tok"])
    if model_type in ("qwen2_moe", "qwen3_moe"):
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
        if cfg.get("norm_topk_prob") != (model_type == "qwen3_moe"):
            raise Unwritable(f"norm_topk_prob {cfg.get('norm_topk_prob')}: llama.cpp renormalises the top-k weights of "
                             f"{arch} {'always' if model_type == 'qwen3_moe' else 'never'}")
    if model_type == "qwen2_moe":
        if cfg.get("tie_word_embeddings"):
            raise Unwritable("tie_word_embeddings: llama.cpp's qwen2moe requires output.weight")
        w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])


def _llama3_rope_freqs(rope: dict, dim: int) -> np.ndarray:
    """The converter's rope_freqs for llama3 rope (LlamaModel.generate_extra_tensors): the divisor
    of each rope frequency, computed in float32 as it does."""
    import math

    freqs = 1.0 / (np.float32(rope["rope_theta"]) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    out = []
    for freq in freqs.astype(np.float32):
        wavelen = np.float32(2 * math.pi) / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, np.float32)


def _gemma3_metadata(w, cfg: dict, head_dim: int) -> None:
    n = cfg["num_hidden_layers"]
    every_sixth = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
    if cfg.get("layer_types") != every_sixth:
        raise Unwritable(f"layer_types {cfg.get('layer_types')}: llama.cpp lays Gemma 3 out as {every_sixth}")
    local, full = _rope(cfg, "sliding_attention"), _rope(cfg, "full_attention")
    if local["rope_type"] != "default":
        raise Unwritable(f"sliding layers' rope {local}: llama.cpp scales only the full layers")
    w.add_rope_freq_base_swa(float(local["rope_theta"]))
    if cfg.get("query_pre_attn_scalar", head_dim) != head_dim:
        raise Unwritable(f"query_pre_attn_scalar {cfg['query_pre_attn_scalar']}: llama.cpp scales by 1/sqrt(head_dim)")
    w.add_sliding_window(cfg["sliding_window"])
    w.add_rope_freq_base(float(full["rope_theta"]))
    w.add_rope_dimension_count(head_dim)
    if full["rope_type"] == "linear":
        import gguf

        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(full["factor"]))
    elif full["rope_type"] != "default":
        raise Unwritable(f"full layers' rope {full}: the Gemma 3 converter writes linear scaling only")
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if cfg.get(key) is not None:
            getattr(w, f"add_{key}")(float(cfg[key]))


def _gemma2_metadata(w, cfg: dict, head_dim: int) -> None:
    n = cfg["num_hidden_layers"]
    even_slide = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    if cfg.get("layer_types", even_slide) != even_slide:
        raise Unwritable(f"layer_types {cfg.get('layer_types')}: llama.cpp lays Gemma 2 out as {even_slide}")
    if cfg.get("query_pre_attn_scalar", head_dim) != head_dim:
        raise Unwritable(f"query_pre_attn_scalar {cfg['query_pre_attn_scalar']}: llama.cpp scales by 1/sqrt(head_dim)")
    w.add_sliding_window(cfg["sliding_window"])
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if cfg.get(key) is not None:
            getattr(w, f"add_{key}")(float(cfg[key]))


def _phi3_metadata(w, cfg: dict, head_dim: int, rope: dict) -> None:
    rope_dims = int(rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) * head_dim)
    w.add_rope_dimension_count(rope_dims)
    original = rope.get("original_max_position_embeddings") or cfg.get("original_max_position_embeddings")
    w.add_rope_scaling_orig_ctx_len(original or cfg["max_position_embeddings"])
    w.add_sliding_window(cfg.get("sliding_window") or 0)
    if rope["rope_type"] == "longrope":
        # the converter's LongRoPE: the type, the factors as tensors, the attention factor
        import gguf

        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        for which in ("long", "short"):
            factors = np.asarray(rope[f"{which}_factor"], np.float32)
            if factors.shape != (rope_dims // 2,):
                raise Unwritable(f"{which}_factor has {factors.size} entries, not rope dims / 2 = {rope_dims // 2}")
            w.add_tensor(f"rope_factors_{which}.weight", factors)
        scale = cfg["max_position_embeddings"] / original
        w.add_rope_scaling_attn_factors(1.0 if scale <= 1 else float(np.sqrt(1 + np.log(scale) / np.log(original))))
    elif rope["rope_type"] != "default":
        raise Unwritable(f"rope_type {rope['rope_type']}: the Phi-3 converter writes LongRoPE only")


def _stack_experts(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-expert tensors stacked into one [expert, rows, cols] tensor each, as the converter does."""
    out, stacks = {}, {}
    for name, t in weights.items():
        m = _EXPERT.match(name)
        if m is None:
            out[name] = t
        else:
            stacks.setdefault(f"{m[1]}.{m[3]}.weight", {})[int(m[2])] = t
    for name, by_expert in stacks.items():
        out[name] = np.stack([by_expert[e] for e in range(len(by_expert))])
    return out


def _unstack(name: str, held: np.ndarray) -> dict[str, np.ndarray]:
    """The transformers tensors a stacked (or plain) tensor `name` holds."""
    if held.ndim != 3:
        return {name: held}
    base, _, matrix = name[:-len(".weight")].rpartition(".")
    return {f"{base}.{e}.{matrix}.weight": held[e] for e in range(held.shape[0])}


def write_gguf(folder: str | Path, out: str | Path, qtype: str = "F32", *, pre: str = "gpt-2",
               seed: int = 0, tensor_types: dict[str, str] | None = None) -> tuple[Path, dict[str, np.ndarray]]:
    """`folder` (config.json, model.safetensors, tokenizer.json) as the GGUF file `out`; matrices
    (2-D, and the stacked experts) in `qtype` (the embedding too, as llama.cpp's --outtype does)
    except those named in `tensor_types` (GGUF name -> type, e.g. {"output.weight": "Q6_K"}, as
    llama.cpp's mixes keep some tensors at other types; "F16" stores float16). Returns the file
    and the weights it holds, dequantized, under the transformers names and layout: the reference."""
    import gguf
    from gguf.quants import dequantize, quantize
    from safetensors.numpy import load_file
    from sentencepiece_vocab import gguf_vocab

    from llmos.io.gguf import permute

    folder, out = Path(folder), Path(out)
    cfg = json.loads((folder / "config.json").read_text())
    tok_json = json.loads((folder / "tokenizer.json").read_text())
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    model_type = cfg["model_type"]
    if model_type not in GGUF_ARCH:
        raise Unwritable(f"model_type {model_type}: no GGUF architecture written here")
    arch = GGUF_ARCH[model_type]
    n_layers = cfg["num_hidden_layers"]
    w = gguf.GGUFWriter(str(out), arch)
    _metadata(w, cfg, arch)
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]

    if tok_json["model"].get("byte_fallback"):
        # a SentencePiece-style vocabulary (Llama 2, Mistral): tokens, scores and types, no merges
        tokens, scores, types = gguf_vocab(tok_json)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_unk_token_id(tokens.index(tok_json["model"]["unk_token"]))
        w.add_add_space_prefix(True)
    else:
        tokens, types = _bpe_vocab(tok_json, cfg["vocab_size"])
        merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
    vocab = {t: i for i, t in enumerate(tokens)}
    w.add_bos_token_id(vocab[tok_cfg["bos_token"]])
    w.add_eos_token_id(vocab[tok_cfg["eos_token"]])
    w.add_add_bos_token(False)
    if tok_cfg.get("chat_template"):
        w.add_chat_template(tok_cfg["chat_template"])

    rng = np.random.default_rng(seed)
    held = {}
    weights = {k: v.astype(np.float32) for k, v in load_file(str(folder / "model.safetensors")).items()}
    for name, t in _stack_experts(weights).items():
        gname = gguf_name(name, arch, n_layers)
        matrix = t.ndim >= 2 and not gname.endswith(_ALWAYS_F32)
        this = (tensor_types or {}).get(gname, qtype) if matrix else "F32"
        if matrix and this not in ("F32", "F16") and t.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[this]][0]:
            this = "F16"  # rows that are not whole blocks: the converter falls back to F16
        qt = gguf.GGMLQuantizationType[this]
        if this == "F16":
            t = t.astype(np.float16).astype(np.float32)
        if matrix and this not in ("F32", "F16"):
            if this.endswith("_K"):
                assert arch not in ("llama", "mistral"), "random K-quant blocks: a family without the rope permute"
                flat = t.reshape(-1, t.shape[-1])
                data = random_kquant(flat.shape, qt, float(t.std()), rng).reshape(*t.shape[:-1], -1)
            else:
                data = quantize(t, qt)
            value = dequantize(data, qt).astype(np.float32).reshape(t.shape)
        else:
            data, value = None, t
        held.update(_unstack(name, value))
        stored = value if data is None else data
        if arch.startswith("gemma") and gname.endswith("norm.weight"):
            stored = stored + np.float32(1.0)  # the converter's norm_shift: Gemma's norm computes (1 + w)
        if arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
            # whole rows move, so the quantized bytes permute like the floats
            stored = permute(stored, n_head if "attn_q" in gname else n_kv)
        if data is None:
            w.add_tensor(gname, stored.astype(np.float16) if this == "F16" else stored)
        else:
            w.add_tensor(gname, stored, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out, held
