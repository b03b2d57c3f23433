"""Tiny random-weight Hugging Face checkpoints for the llmos test suite and tools.

Every checkpoint is built with ``transformers`` itself (``AutoModelForCausalLM.from_config``
under a fixed ``torch.manual_seed``, then ``save_pretrained``), so the files on disk are exactly
what the library writes, and the transformers model loaded back from the folder is the
reference the runtime is compared against.

Public API
----------
``KINDS``                     name -> :class:`Kind` (family, config, notes) for every variant.
``build_checkpoint(kind, out_dir, dtype="float32", **overrides) -> Path``
                              builds one checkpoint folder (config.json, model.safetensors or
                              shards + index, tokenizer.json, tokenizer_config.json,
                              generation_config.json).
``build_sharded_checkpoint(kind, out_dir, n_shards=3, ...)``
                              the same weights split over several ``model-0000N-of-0000M``
                              files with ``model.safetensors.index.json``.
``build_tokenizer(out_dir, vocab_size, ...)``  the tokenizer files alone.
``SPECIAL_TOKENS``, ``EOS_ID``, ``BOS_ID``, ``PAD_ID``, ``IM_START_ID``, ``IM_END_ID``
``CHATML_TEMPLATE``

Overrides accepted by ``build_checkpoint`` (everything else goes into the config):

``seed``            torch seed for the weights (default 0).
``max_shard_size``  passed to ``save_pretrained`` -> sharded checkpoint.
``legacy_config``   rewrite config.json in the transformers-4 layout that most checkpoints on the
                    Hub use: top-level ``rope_theta`` (+ ``partial_rotary_factor``) and a
                    ``rope_scaling`` dict (or ``null``) instead of transformers-5's
                    ``rope_parameters``.
``damp_eos``        (default True) shrink the EOS row of the output projection so that EOS is
                    (practically) never the argmax: greedy generation then runs the full
                    ``max_new_tokens`` on both sides.  With tied embeddings this also shrinks the
                    EOS input embedding, which is harmless.
``chat_template_file``  (default False) write the chat template to ``chat_template.jinja``
                    (the transformers-5 default) instead of ``tokenizer_config.json``.
``weight_scale``    multiplies the default init std of every kind (see ``_INIT_STD``).

Weights: transformers' own init uses ``initializer_range`` 0.02, which gives near-uniform logits
(ties everywhere in greedy decoding).  We raise ``initializer_range`` per kind and also perturb
every 1-D parameter (biases, norm weights - which the library initialises to exactly 0 or 1) so
that qkv biases, Gemma's ``1 + w`` norms, Qwen3's q/k norms etc. are really exercised.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "KINDS",
    "Kind",
    "SWA_KINDS",
    "build_checkpoint",
    "build_sharded_checkpoint",
    "build_tokenizer",
    "SPECIAL_TOKENS",
    "EOS_ID",
    "BOS_ID",
    "PAD_ID",
    "IM_START_ID",
    "IM_END_ID",
    "CHATML_TEMPLATE",
    "CORPUS",
]

# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ["<|endoftext|>", "<|bos|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
EOS_ID, BOS_ID, IM_START_ID, IM_END_ID, PAD_ID = 0, 1, 2, 3, 4

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = """\
The quick brown fox jumps over the lazy dog. A small language model reads a prompt and writes
the next token, then the next one, until it reaches the end of the text or the limit it was given.
Once upon a time there was a little robot who lived in a quiet town by the sea. Every morning the
robot walked to the harbour, counted the boats, and wrote their names in a notebook. The fishermen
laughed at first, but after a while they started to ask the robot where their friends had gone.
In the beginning the model knows nothing; its weights are random numbers and its answers are noise.
Training changes that: the weights move a little after every example, and slowly the noise becomes
words, the words become sentences, and the sentences start to make sense.
Hello, world! How are you today? I am fine, thank you. What time is it? It is half past nine.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 3.14159 2.71828 42.
Code: def main(): print("hello") return 0; for (int i = 0; i < n; ++i) { sum += x[i]; }
Weather report: cloudy in the morning, sunny in the afternoon, with a light wind from the west.
The library loads the configuration, the tokenizer and the tensors, checks that every shape is
right, and then runs the network layer by layer: attention, feed forward, normalisation, repeat.
"""


@functools.lru_cache(maxsize=None)
def _tokenizer_json(vocab_size: int) -> str:
    """Train a byte-level BPE on CORPUS with exactly ``vocab_size`` tokens; return tokenizer.json text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    n = tok.get_vocab_size(with_added_tokens=True)
    if n > vocab_size:  # pragma: no cover - the trainer honours vocab_size
        raise RuntimeError(f"tokenizer has {n} tokens > {vocab_size}")
    extra = [AddedToken(f"<|reserved_{i}|>", special=True) for i in range(vocab_size - n)]
    if extra:
        tok.add_special_tokens(extra)
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS))), ids
    return tok.to_str()


def build_tokenizer(
    out_dir: str | os.PathLike,
    vocab_size: int,
    *,
    bos_token: str = "<|bos|>",
    eos_token: str = "<|endoftext|>",
    chat_template: str | None = CHATML_TEMPLATE,
    chat_template_file: bool = False,
) -> Path:
    """Write tokenizer.json + tokenizer_config.json (+ chat_template.jinja) into ``out_dir``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token="<|pad|>",
        model_max_length=1 << 30,
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(str(out), save_jinja_files=chat_template_file)
    return out


# ---------------------------------------------------------------------------------------------
# Kinds
# ---------------------------------------------------------------------------------------------

VOCAB = 384
MAX_POS = 256
WINDOW = 16  # sliding window of the SWA kinds: a 64-token prompt spans 4 windows


@dataclass(frozen=True)
class Kind:
    name: str
    model_type: str
    config: dict[str, Any]
    init_std: float = 0.2  # initializer_range (std of every Linear / Embedding weight)
    embed_std: float | None = None  # std of the (input) embedding, if different
    post_norm_gain: float = 1.0  # Gemma 2: multiply the effective gain of the post-attn/ffw norms
    final_norm_gain: float = 1.0  # multiply the effective gain of the final norm
    legacy_config: bool = False
    sliding_window: int | None = None  # set for kinds with sliding-window layers
    notes: str = ""
    # Highest position a single forward can use where the reference's semantics do not depend on
    # the total length (longrope switches factor sets at original_max_position_embeddings).
    length_switch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _llama(**kw):
    base = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POS,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    base.update(kw)
    return base


def _longrope_factors(n: int, lo: float, hi: float) -> list[float]:
    return [round(lo + (hi - lo) * i / max(n - 1, 1), 4) for i in range(n)]


KINDS: dict[str, Kind] = {}


def _add(kind: Kind) -> None:
    KINDS[kind.name] = kind


_add(Kind("gpt2", "gpt2", dict(
    vocab_size=VOCAB, n_embd=64, n_head=4, n_layer=2, n_inner=128, n_positions=MAX_POS,
    activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    layer_norm_epsilon=1e-5, bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
    tie_word_embeddings=True,
), notes="learned positions, LayerNorm with bias, Conv1D (transposed) weights, tied lm_head"))
_add(Kind("llama", "llama", _llama(), notes="Llama 1/2 style: MHA, untied lm_head, rope_theta 1e4"))
_add(Kind("llama_tied", "llama", _llama(tie_word_embeddings=True), notes="tied lm_head"))
_add(Kind("llama_gqa", "llama", _llama(num_key_value_heads=2), notes="GQA 4 q heads / 2 kv heads"))
_add(Kind("llama_mqa", "llama", _llama(num_key_value_heads=1), notes="MQA (1 kv head)"))
_add(Kind("llama3_rope", "llama", _llama(
    num_key_value_heads=2, tie_word_embeddings=True,
    rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=64),
), notes="Llama 3.x: GQA, tied, llama3 rope (head_dim 16: one band smoothed, 6 scaled)"))
_add(Kind("llama_linear_rope", "llama", _llama(
    rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0)), notes="linear rope, factor 4"))
_add(Kind("llama_dynamic_rope", "llama", _llama(
    rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0)),
    notes="dynamic NTK rope: in transformers it only changes anything once the sequence is longer "
          "than max_position_embeddings, i.e. never inside the context; == default rope here"))
_add(Kind("llama_legacy_config", "llama", _llama(), legacy_config=True,
          notes="Llama-2 config.json in the transformers-4 layout: rope_theta top-level, rope_scaling null"))
_add(Kind("llama3_rope_legacy_config", "llama", KINDS["llama3_rope"].config, legacy_config=True,
          notes="Llama 3.1 style config.json: rope_theta top-level, rope_scaling {rope_type: llama3, ...}"))
_add(Kind("mistral_swa", "mistral", _llama(num_key_value_heads=2, sliding_window=WINDOW),
          sliding_window=WINDOW, notes=f"sliding window {WINDOW} on every layer"))
_add(Kind("qwen2", "qwen2", _llama(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1000000.0),
          notes="qkv bias, GQA, tied"))
_add(Kind("qwen2_swa", "qwen2", _llama(
    num_key_value_heads=2, num_hidden_layers=3, rope_theta=1000000.0, use_sliding_window=True,
    sliding_window=WINDOW, max_window_layers=1),
    sliding_window=WINDOW, notes=f"use_sliding_window: layer 0 full, layers 1-2 window {WINDOW} (layer_types)"))
_add(Kind("qwen3", "qwen3", _llama(num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                                   rope_theta=1000000.0),
          notes="q/k RMSNorm, explicit head_dim 32 != 64/4"))
_add(Kind("phi3", "phi3", _llama(), notes="fused qkv_proj / gate_up_proj, MHA"))
_add(Kind("phi3_partial_rotary", "phi3", _llama(num_key_value_heads=2, partial_rotary_factor=0.5),
          notes="partial_rotary_factor 0.5 (8 of 16 dims rotated), GQA in the fused qkv"))
_add(Kind("phi3_longrope", "phi3", _llama(
    max_position_embeddings=MAX_POS, original_max_position_embeddings=32,
    rope_scaling=dict(type="longrope", short_factor=_longrope_factors(8, 1.0, 1.5),
                      long_factor=_longrope_factors(8, 1.0, 6.0))),
    length_switch=32,
    notes="longrope: short factors while the sequence is <= 32 tokens, long beyond; attention "
          "factor sqrt(1 + ln(256/32)/ln 32) on cos/sin in both cases"))
_add(Kind("phi3_longrope_legacy_config", "phi3", KINDS["phi3_longrope"].config, legacy_config=True,
          length_switch=32, notes="Phi-3-128k style config.json (rope_scaling {type: longrope})"))
_add(Kind("gemma", "gemma", _llama(num_key_value_heads=1, head_dim=32, tie_word_embeddings=True,
                                   hidden_act="gelu_pytorch_tanh"),
          init_std=0.35, embed_std=0.2,
          notes="MQA, head_dim 32 != 64/4, embeddings * sqrt(hidden), RMSNorm (1 + w), GeGLU"))
_add(Kind("gemma2", "gemma2", _llama(
    num_key_value_heads=2, head_dim=32, num_hidden_layers=3, tie_word_embeddings=True,
    hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=48, sliding_window=WINDOW,
    final_logit_softcapping=10.0, attn_logit_softcapping=20.0),
    sliding_window=WINDOW, init_std=0.35, embed_std=0.1, post_norm_gain=3.0, final_norm_gain=2.0,
    notes=f"soft-capping (final 10, attn 20 - small so it matters), layers 0,2 sliding window {WINDOW}, "
          "query_pre_attn_scalar 48, pre+post norms"))
_add(Kind("gemma3_text", "gemma3_text", _llama(
    num_key_value_heads=2, head_dim=32, num_hidden_layers=3, tie_word_embeddings=True,
    hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=48, sliding_window=WINDOW,
    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                     "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 2.0}}),
    sliding_window=WINDOW, init_std=0.35, embed_std=0.1, post_norm_gain=3.0, final_norm_gain=2.0,
    notes=f"q/k norm (1 + w), layers 0,2 sliding window {WINDOW} with rope base 1e4, layer 1 full with "
          "base 1e6 and linear scaling 2, query_pre_attn_scalar 48, pre+post norms"))
_add(Kind("smollm3", "smollm3", _llama(num_key_value_heads=2, num_hidden_layers=3, tie_word_embeddings=True,
                                       rope_theta=2000000.0, no_rope_layers=[1, 0, 1]),
          notes="layer 1 without RoPE (no_rope_layers), GQA, tied"))
_add(Kind("olmo2", "olmo2", _llama(num_key_value_heads=2),
          notes="no pre-norms: norms on the attention and MLP outputs; q/k RMSNorm over all heads at once"))
_add(Kind("granite", "granite", _llama(num_key_value_heads=2, embedding_multiplier=3.0, attention_multiplier=0.2,
                                       residual_multiplier=0.5, logits_scaling=2.5),
          notes="embedding x3, attention scale 0.2 (not 1/sqrt(16)), residual x0.5, logits / 2.5"))
_add(Kind("mixtral", "mixtral", _llama(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                                       router_jitter_noise=0.0),
          notes="4 experts, top-2 renormalised, router in float"))
_add(Kind("qwen2_moe", "qwen2_moe", _llama(num_key_value_heads=2, tie_word_embeddings=True, num_experts=4,
                                           num_experts_per_tok=2, moe_intermediate_size=48,
                                           shared_expert_intermediate_size=96, norm_topk_prob=False,
                                           decoder_sparse_step=1, mlp_only_layers=[]),
          notes="4 experts of 48, top-2 not renormalised, a shared expert of 96 behind a sigmoid gate, qkv bias"))
_add(Kind("qwen3_moe", "qwen3_moe", _llama(num_key_value_heads=2, head_dim=32, num_experts=4, num_experts_per_tok=2,
                                           moe_intermediate_size=48, norm_topk_prob=True, decoder_sparse_step=1,
                                           mlp_only_layers=[]),
          notes="4 experts of 48, top-2 renormalised, q/k norm per head"))
_add(Kind("olmoe", "olmoe", _llama(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False),
          notes="4 experts, top-2 not renormalised, q/k norm over all heads"))

_add(Kind("gpt_oss", "gpt_oss", _llama(
    num_key_value_heads=2, num_hidden_layers=3, num_local_experts=4, num_experts_per_tok=2, attention_bias=True,
    sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    swiglu_limit=1.0, swiglu_alpha=1.702, router_aux_loss_coef=0.0,
    rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 8.0, "beta_fast": 32.0,
                     "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 32}),
    sliding_window=WINDOW,
    notes=f"attention sinks, q/k/v/o biases, layers 0,2 sliding window {WINDOW}, YaRN (factor 8, no truncation), "
          "4 experts top-2 with router and expert biases, clamped SwiGLU (limit 1 so the clamps act)"))

SWA_KINDS = [k for k, v in KINDS.items() if v.sliding_window]

# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------

_DTYPES = {"float32": "float32", "fp32": "float32", "f32": "float32",
           "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "f16": "float16"}


def _torch_dtype(name: str):
    import torch

    try:
        return getattr(torch, _DTYPES[name])
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}") from None


def make_config(kind: str, **overrides):
    """The transformers config object for ``kind`` (overrides go into the config)."""
    from transformers import AutoConfig

    k = KINDS[kind]
    cfg = copy.deepcopy(k.config)
    cfg.update(overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = AutoConfig.for_model(k.model_type, **cfg)
    config.initializer_range = k.init_std
    return config


def _perturb_(model, seed: int) -> None:
    """Give every 1-D parameter (bias / norm weight) a random offset; damp nothing else."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or name.endswith("_bias"):  # gpt-oss stacks its expert biases [E, n]
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _shape_weights_(model, k: Kind) -> None:
    """Per-kind rescaling so that greedy decoding does not collapse into repeating one token.

    Gemma multiplies the input embedding by sqrt(hidden) and ties it to the output, so with a
    plain init the last token's own embedding dominates the residual stream and the logits.
    """
    import torch

    gemma_norm = k.model_type in ("gemma", "gemma2", "gemma3_text")  # RMSNorm multiplies by (1 + w)

    def gain_(p, g):
        if gemma_norm:
            p.copy_((1 + p) * g - 1)
        else:
            p.mul_(g)

    with torch.no_grad():
        if k.embed_std is not None:
            model.get_input_embeddings().weight.mul_(k.embed_std / k.init_std)
        for name, p in model.named_parameters():
            if k.post_norm_gain != 1.0 and ("post_attention_layernorm" in name or "post_feedforward_layernorm" in name) \
                    and k.model_type in ("gemma2", "gemma3_text"):
                gain_(p, k.post_norm_gain)
            if k.final_norm_gain != 1.0 and name in ("model.norm.weight", "transformer.ln_f.weight"):
                gain_(p, k.final_norm_gain)


def _damp_eos_(model, eos_id: int) -> None:
    import torch

    with torch.no_grad():
        w = model.get_output_embeddings().weight
        w[eos_id].mul_(0.01)
        b = getattr(model.get_output_embeddings(), "bias", None)
        if b is not None:
            b[eos_id] = -10.0


def _rewrite_legacy_config(path: Path) -> None:
    """transformers-5 ``rope_parameters`` -> transformers-4 ``rope_theta`` + ``rope_scaling``."""
    cfg = json.loads(path.read_text())
    rp = cfg.pop("rope_parameters", None)
    if rp is not None:
        rp = dict(rp)
        cfg["rope_theta"] = rp.pop("rope_theta", 10000.0)
        prf = rp.pop("partial_rotary_factor", None)
        if prf is not None and prf != 1.0:
            cfg["partial_rotary_factor"] = prf
        rtype = rp.pop("rope_type", "default")
        rp.pop("type", None)
        if rtype == "default":
            cfg["rope_scaling"] = None
        elif rtype == "llama3":  # Llama 3.1 writes rope_type
            cfg["rope_scaling"] = {"rope_type": rtype, **rp}
        else:  # older checkpoints (linear/dynamic/longrope) write "type"
            if rtype == "longrope" and "original_max_position_embeddings" in cfg:
                rp.pop("original_max_position_embeddings", None)
            cfg["rope_scaling"] = {"type": rtype, **rp}
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def build_checkpoint(
    kind: str,
    out_dir: str | os.PathLike,
    dtype: str = "float32",
    *,
    seed: int = 0,
    max_shard_size: int | str | None = None,
    legacy_config: bool | None = None,
    damp_eos: bool = True,
    chat_template_file: bool = False,
    weight_scale: float = 1.0,
    **overrides: Any,
) -> Path:
    """Build the ``kind`` checkpoint into ``out_dir`` (created; must be empty or absent)."""
    import torch
    from transformers import AutoModelForCausalLM

    if kind not in KINDS:
        raise KeyError(f"unknown checkpoint kind {kind!r}; known: {', '.join(KINDS)}")
    k = KINDS[kind]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = make_config(kind, **overrides)
    config.initializer_range = k.init_std * weight_scale
    if weight_scale != 1.0:
        k = Kind(**{**k.__dict__, "init_std": k.init_std * weight_scale,
                    "embed_std": None if k.embed_std is None else k.embed_std * weight_scale})
    tdtype = _torch_dtype(dtype)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
        _perturb_(model, seed)
        _shape_weights_(model, k)
        if damp_eos:
            eos = config.eos_token_id
            for e in eos if isinstance(eos, list) else [eos]:
                if e is not None:
                    _damp_eos_(model, e)
        model = model.to(tdtype).eval()
        kwargs = {}
        if max_shard_size is not None:
            kwargs["max_shard_size"] = max_shard_size
        model.save_pretrained(str(out), **kwargs)

    bos = "<|endoftext|>" if k.model_type == "gpt2" else "<|bos|>"
    build_tokenizer(out, config.vocab_size, bos_token=bos, chat_template_file=chat_template_file)
    if legacy_config if legacy_config is not None else k.legacy_config:
        _rewrite_legacy_config(out / "config.json")
    return out


def checkpoint_nbytes(path: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))


def build_sharded_checkpoint(
    kind: str, out_dir: str | os.PathLike, dtype: str = "float32", n_shards: int = 3, **kw: Any
) -> Path:
    """Same weights as ``build_checkpoint(kind, ...)`` split over about ``n_shards`` files."""
    with tempfile.TemporaryDirectory() as tmp:
        single = build_checkpoint(kind, Path(tmp) / "single", dtype, **kw)
        total = checkpoint_nbytes(single)
    shard = max(1, math.ceil(total / n_shards))
    out = build_checkpoint(kind, out_dir, dtype, max_shard_size=shard, **kw)
    if not (out / "model.safetensors.index.json").exists():  # pragma: no cover
        raise RuntimeError(f"save_pretrained did not shard {kind} at max_shard_size={shard}")
    return out


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a checkpoint folder (for tests that then damage the copy)."""
    shutil.copytree(src, dst)
    return Path(dst)
