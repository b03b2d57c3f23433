"""Generation options and results.

`GenerationConfig` holds every decoding option under transformers' names (plus the OpenAI
API's), checks them, and turns them into the core's DecodeOptions. Defaults come from
transformers' defaults, then the checkpoint's generation_config.json, then the caller.
The decode loop itself runs in C++ (cpp/model/generate.cc, cpp/sampling/).
"""

from __future__ import annotations

import dataclasses
import math
import random
import struct
from dataclasses import dataclass, field
from typing import Any

from llmos import limits
from llmos.errors import ContextLengthError, InvalidInputError

# When neither max_new_tokens nor max_length is set (transformers would stop at 20 tokens
# in all, prompt included, which is rarely what a caller wants).
DEFAULT_MAX_NEW_TOKENS = 128


@dataclass
class Generation:
    """One generated continuation.

    text: the new text (special tokens skipped, cut before a stop string);
    token_ids: the new token ids (an EOS token that ended generation is included);
    finish_reason: "length" (token limit), "eos" or "stop" (a stop string);
    logprobs: per new token, log_softmax of the processed scores (when logprobs=True);
    top_logprobs: per new token, [(token id, logprob)] of the best alternatives;
    score: beam search's length-penalized sequence score (None otherwise);
    speculation: with speculative decoding, tokens drafted and accepted and target forwards.
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    score: float | None = None
    prompt_token_ids: list[int] = field(default_factory=list, repr=False)
    # speculative decoding: {"drafted", "accepted", "forwards"} (target forwards); None otherwise.
    speculation: dict | None = field(default=None, repr=False)


@dataclass
class GenerationConfig:
    """Every decoding option. Unset (None) fields take the defaults described in the
    module docstring. Names and meanings follow transformers.GenerationConfig; the OpenAI
    options (presence_penalty, frequency_penalty, logit_bias, stop, logprobs, top_logprobs)
    follow the OpenAI API. The transformers options llmos does not implement are in
    UNSUPPORTED, each with the reason; asking for one is an InvalidInputError."""

    max_new_tokens: int | None = None
    max_length: int | None = None
    min_new_tokens: int | None = None
    min_length: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    num_beams: int | None = None
    length_penalty: float | None = None
    early_stopping: bool | str | None = None
    num_return_sequences: int | None = None
    bad_words_ids: list[list[int]] | None = None
    eos_token_id: int | list[int] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    top_h: float | None = None
    epsilon_cutoff: float | None = None
    eta_cutoff: float | None = None
    sequence_bias: list | dict | None = None
    encoder_repetition_penalty: float | None = None
    encoder_no_repeat_ngram_size: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list[int] | None = None
    remove_invalid_values: bool | None = None
    exponential_decay_length_penalty: tuple[int, float] | None = None
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    renormalize_logits: bool | None = None
    # Group (diverse) beam search left transformers' core for the Hub; refused unless inert.
    num_beam_groups: int | None = None
    diversity_penalty: float | None = None
    # Structured output (llmos.text.structured; at most one): OpenAI's response_format dict
    # ({"type": "json_object"} or {"type": "json_schema", "json_schema": {"name", "schema",
    # "strict"}}), a JSON schema (dict or JSON text), a regex the whole reply must match, or a
    # grammar in llguidance's Lark syntax. Needs num_beams=1.
    response_format: dict | None = None
    guided_json: dict | str | None = None
    guided_regex: str | None = None
    guided_grammar: str | None = None
    # Speculative decoding (runtime/speculative.py): n-gram prompt lookup drafts this many tokens
    # per round from earlier occurrences of the last max_matching_ngram_size tokens; with
    # generate(draft_model=...), the draft model proposes num_assistant_tokens per round.
    # Output follows the target: greedy is token-identical, sampling keeps its distribution.
    prompt_lookup_num_tokens: int | None = None
    max_matching_ngram_size: int | None = None
    num_assistant_tokens: int | None = None

    DEFAULTS = {  # transformers' defaults where it has the option
        "min_new_tokens": 0, "min_length": 0, "do_sample": False, "temperature": 1.0, "top_k": 50,
        "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
        "num_beams": 1, "length_penalty": 1.0, "early_stopping": False, "num_return_sequences": 1,
        "presence_penalty": 0.0, "frequency_penalty": 0.0, "logprobs": False, "top_logprobs": 0,
        "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "encoder_repetition_penalty": 1.0,
        "encoder_no_repeat_ngram_size": 0, "remove_invalid_values": False, "renormalize_logits": False,
        "num_beam_groups": 1, "diversity_penalty": 0.0,
    }

    # transformers.generate options llmos does not implement, with the reason; asking for one
    # is an error that says so (a generation_config.json that carries one is left alone).
    UNSUPPORTED = {
        "guidance_scale": "classifier-free guidance needs a second, unconditional forward pass per step",
        "watermarking_config": "watermarking is not implemented",
        "assistant_model": "pass the draft model as generate(..., draft_model=model)",
        "assistant_early_exit": "self-speculative decoding is not implemented",
        "use_mtp": "multi-token-prediction decoding is not implemented",
        "constraints": "constrained beam search left transformers' core (now a Hub custom_generate)",
        "force_words_ids": "constrained beam search left transformers' core (now a Hub custom_generate)",
        "penalty_alpha": "contrastive search left transformers' core (now a Hub custom_generate)",
        "dola_layers": "DoLa decoding left transformers' core (now a Hub custom_generate)",
        "prefix_allowed_tokens_fn": "Python callbacks are not called from the C++ decode loop",
        "logits_processor": "Python callbacks are not called from the C++ decode loop",
        "stopping_criteria": "Python callbacks are not called from the C++ decode loop (use stop=)",
        "stop_strings": "use stop= (the text is cut before the stop string)",
        "max_time": "a time limit is not implemented",
        "token_healing": "token healing is not implemented",
    }

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict, *, strict: bool = True, source: str = "options") -> "GenerationConfig":
        """Builds a config from a dict; unknown keys are an error when strict (a caller's
        typo), ignored otherwise (a generation_config.json holds many unrelated keys)."""
        names = set(cls.field_names())
        unknown = sorted(set(d) - names)
        unsupported = [k for k in unknown if k in cls.UNSUPPORTED]
        if unsupported and strict:
            k = unsupported[0]
            raise InvalidInputError(f"{source}: {k} is a transformers option llmos does not support: "
                                    f"{cls.UNSUPPORTED[k]}", field=k)
        if unknown and strict:
            raise InvalidInputError(f"{source}: unknown generation option(s) {', '.join(unknown)}; "
                                    f"known options: {', '.join(sorted(names))}", field=unknown[0])
        return cls(**{k: v for k, v in d.items() if k in names})

    def merged(self, other: "GenerationConfig") -> "GenerationConfig":
        """A copy with every field that `other` sets taking precedence."""
        out = dataclasses.replace(self)
        for f in dataclasses.fields(other):
            v = getattr(other, f.name)
            if v is not None:
                setattr(out, f.name, v)
        return out

    def get(self, name: str) -> Any:
        v = getattr(self, name)
        return self.DEFAULTS.get(name) if v is None else v


# The core holds integer options as 64-bit integers and numbers as float32: beyond these, a
# value would not convert (a pybind TypeError) or would become infinity or 0 there.
_INT64_MAX = 2**63 - 1
_FLOAT32_MAX = 3.4028234663852886e38


def _num(name, value, *, integer=False, low=None, high=None, low_open=False, high_open=False):
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise InvalidInputError(f"{name}: expected {kind}, got {value!r}", field=name)
    if integer and (value < -_INT64_MAX - 1 or (high is None and value > _INT64_MAX)):
        raise InvalidInputError(f"{name}: {value} does not fit a 64-bit integer", field=name)
    if not integer:
        try:
            finite = math.isfinite(value) and abs(value) <= _FLOAT32_MAX
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite:
            raise InvalidInputError(f"{name}: expected a finite number (within float32), got {value!r}", field=name)
    # The lower bound holds for what the core will see: a positive number too small for float32 is 0 there.
    seen = struct.unpack("f", struct.pack("f", value))[0] if not integer and value else value
    if low is not None and (seen <= low if low_open else seen < low):
        raise InvalidInputError(f"{name}: must be {'>' if low_open else '>='} {low}, got {value}", field=name)
    if high is not None and (value >= high if high_open else value > high):
        raise InvalidInputError(f"{name}: must be {'<' if high_open else '<='} {high}, got {value}", field=name)
    return value


def _short(value, n: int = 80) -> str:
    """repr() of a caller's value, cut so that an error message stays readable."""
    r = repr(value)
    return r if len(r) <= n else f"{r[:n]}... ({len(r)} characters)"


def _token_list(name, value, vocab_size) -> list[int]:
    ids = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InvalidInputError(f"{name}: expected a token id or a list of token ids, got {value!r}", field=name)
    for i in ids:
        if not 0 <= i < vocab_size:
            raise InvalidInputError(f"{name}: token id {i} is outside the vocabulary [0, {vocab_size})", field=name)
    return list(ids)


def _flag(name, value) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name}: expected True or False, got {value!r}", field=name)
    return value


def _sequence_bias(value, vocab_size) -> list[tuple[list[int], float]]:
    """transformers' two spellings: [[token ids, bias], ...] or {(token ids): bias}; a later
    entry for the same ids replaces an earlier one, as in transformers."""
    name = "sequence_bias"
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(e, (list, tuple)) and len(e) == 2 for e in value):
        pairs = [tuple(e) for e in value]
    else:
        pairs = None
    if not pairs:
        raise InvalidInputError(f"{name}: expected a non-empty list of [token ids, bias] pairs or a dict of "
                                f"(token ids) -> bias, got {value!r}", field=name)
    out: dict[tuple[int, ...], float] = {}
    for ids, bias in pairs:
        ids = _token_list(name, list(ids) if isinstance(ids, (list, tuple)) else ids, vocab_size)
        if not ids:
            raise InvalidInputError(f"{name}: a biased sequence is empty", field=name)
        out[tuple(ids)] = float(_num(name, bias))
    return [(list(k), v) for k, v in out.items()]


def _transformers_extras(o, cfg: GenerationConfig, vocab_size: int) -> None:
    """transformers' remaining processors and warpers: sequence bias, the prompt ("encoder")
    penalties, forced and suppressed tokens, the EOS length decay, top-h, epsilon, eta and
    renormalization."""
    g = cfg.get
    if cfg.sequence_bias is not None:
        o.sequence_bias = _sequence_bias(cfg.sequence_bias, vocab_size)
    o.encoder_repetition_penalty = float(_num("encoder_repetition_penalty", g("encoder_repetition_penalty"),
                                              low=0.0, low_open=True))
    o.encoder_no_repeat_ngram_size = _num("encoder_no_repeat_ngram_size", g("encoder_no_repeat_ngram_size"),
                                          integer=True, low=0)
    if cfg.forced_bos_token_id is not None:
        bos = cfg.forced_bos_token_id
        if isinstance(bos, bool) or not isinstance(bos, int):
            raise InvalidInputError(f"forced_bos_token_id: expected a token id, got {bos!r}",
                                    field="forced_bos_token_id")
        o.forced_bos_token_id = _token_list("forced_bos_token_id", bos, vocab_size)[0]
    if cfg.forced_eos_token_id is not None:
        o.forced_eos_token_ids = _token_list("forced_eos_token_id", cfg.forced_eos_token_id, vocab_size)
    o.remove_invalid_values = _flag("remove_invalid_values", g("remove_invalid_values"))
    decay = cfg.exponential_decay_length_penalty
    if decay is not None:
        if not isinstance(decay, (list, tuple)) or len(decay) != 2:
            raise InvalidInputError(f"exponential_decay_length_penalty: expected (start_index, decay_factor), "
                                    f"got {decay!r}", field="exponential_decay_length_penalty")
        o.exponential_decay_length_penalty = (
            _num("exponential_decay_length_penalty", decay[0], integer=True),
            float(_num("exponential_decay_length_penalty", decay[1])))
    if cfg.suppress_tokens is not None:
        o.suppress_tokens = _token_list("suppress_tokens", cfg.suppress_tokens, vocab_size)
    if cfg.begin_suppress_tokens is not None:
        o.begin_suppress_tokens = _token_list("begin_suppress_tokens", cfg.begin_suppress_tokens, vocab_size)

    if cfg.top_h is not None:
        o.top_h = float(_num("top_h", cfg.top_h, low=0.0, high=1.0, low_open=True))
    o.epsilon_cutoff = float(_num("epsilon_cutoff", g("epsilon_cutoff"), low=0.0, high=1.0, high_open=True))
    o.eta_cutoff = float(_num("eta_cutoff", g("eta_cutoff"), low=0.0, high=1.0, high_open=True))
    o.renormalize_logits = _flag("renormalize_logits", g("renormalize_logits"))


def to_core_options(core, cfg: GenerationConfig, prompt_len: int, vocab_size: int, context: int,
                    *, explicit_limit: bool):
    """Checks every option and builds the core's DecodeOptions; returns (options, stop strings).

    A limit the caller set that does not fit the context is an error; a default limit
    shrinks to what fits.
    """
    g = cfg.get
    o = core.DecodeOptions()
    do_sample = g("do_sample")
    if not isinstance(do_sample, bool):
        raise InvalidInputError(f"do_sample: expected True or False, got {do_sample!r}", field="do_sample")
    o.do_sample = do_sample

    if cfg.max_new_tokens is not None:
        max_new = _num("max_new_tokens", cfg.max_new_tokens, integer=True, low=0)
    elif cfg.max_length is not None:
        max_new = _num("max_length", cfg.max_length, integer=True, low=1) - prompt_len
        if max_new < 0:
            raise InvalidInputError(f"max_length: {cfg.max_length} is shorter than the prompt ({prompt_len} tokens)",
                                    field="max_length")
    else:
        max_new = DEFAULT_MAX_NEW_TOKENS
    room = context - prompt_len
    if max_new > room:
        if explicit_limit:
            raise ContextLengthError(
                f"max_new_tokens: prompt of {prompt_len} tokens plus {max_new} new tokens exceeds the model's "
                f"context of {context} tokens", field="max_new_tokens")
        max_new = room
    o.max_new_tokens = max_new
    o.min_new_tokens = _num("min_new_tokens", g("min_new_tokens"), integer=True, low=0)
    o.min_length = _num("min_length", g("min_length"), integer=True, low=0)

    eos = cfg.eos_token_id
    o.eos_token_ids = [] if eos is None else _token_list("eos_token_id", eos, vocab_size)

    o.temperature = float(_num("temperature", g("temperature"), low=0.0, low_open=do_sample))
    o.top_k = _num("top_k", g("top_k"), integer=True, low=0)
    o.top_p = float(_num("top_p", g("top_p"), low=0.0, high=1.0, low_open=True))
    o.min_p = float(_num("min_p", g("min_p"), low=0.0, high=1.0))
    o.typical_p = float(_num("typical_p", g("typical_p"), low=0.0, high=1.0, low_open=True))
    o.repetition_penalty = float(_num("repetition_penalty", g("repetition_penalty"), low=0.0, low_open=True))
    o.presence_penalty = float(_num("presence_penalty", g("presence_penalty"), low=-2.0, high=2.0))
    o.frequency_penalty = float(_num("frequency_penalty", g("frequency_penalty"), low=-2.0, high=2.0))
    o.no_repeat_ngram_size = _num("no_repeat_ngram_size", g("no_repeat_ngram_size"), integer=True, low=0)

    bad = cfg.bad_words_ids
    if bad is not None:
        if not isinstance(bad, (list, tuple)) or not bad or not all(isinstance(w, (list, tuple)) and w for w in bad):
            raise InvalidInputError(f"bad_words_ids: expected a non-empty list of non-empty token-id lists, got {bad!r}",
                                    field="bad_words_ids")
        o.bad_words_ids = [_token_list("bad_words_ids", list(w), vocab_size) for w in bad]

    bias = cfg.logit_bias
    if bias is not None:
        if not isinstance(bias, dict):
            raise InvalidInputError(f"logit_bias: expected a dict of token id -> bias, got {bias!r}", field="logit_bias")
        pairs = []
        for k, v in bias.items():
            tok = int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k
            _token_list("logit_bias", tok, vocab_size)
            pairs.append((tok, float(_num("logit_bias", v, low=-100.0, high=100.0))))
        o.logit_bias = pairs

    _transformers_extras(o, cfg, vocab_size)

    o.num_beams = _num("num_beams", g("num_beams"), integer=True, low=1)
    limits.check("max_beams", o.num_beams, what="num_beams")
    groups = _num("num_beam_groups", g("num_beam_groups"), integer=True, low=1)
    diversity = _num("diversity_penalty", g("diversity_penalty"))
    if groups > 1 or diversity != 0.0:
        name = "num_beam_groups" if groups > 1 else "diversity_penalty"
        raise InvalidInputError(f"{name}: group (diverse) beam search is not supported: it left transformers' core "
                                "for a Hub custom_generate; use num_beams alone", field=name)
    o.length_penalty = float(_num("length_penalty", g("length_penalty")))
    es = g("early_stopping")
    if es not in (True, False, "never"):
        raise InvalidInputError(f"early_stopping: expected True, False or 'never', got {es!r}", field="early_stopping")
    o.early_stopping = 2 if es == "never" else int(es)
    o.num_return_sequences = _num("num_return_sequences", g("num_return_sequences"), integer=True, low=1)
    limits.check("max_return_sequences", o.num_return_sequences, what="num_return_sequences")
    if o.num_beams > 1 and o.num_return_sequences > o.num_beams:
        raise InvalidInputError(f"num_return_sequences: {o.num_return_sequences} is more than num_beams "
                                f"({o.num_beams})", field="num_return_sequences")
    if o.num_beams == 1 and not do_sample and o.num_return_sequences > 1:
        raise InvalidInputError("num_return_sequences: greedy decoding gives one sequence; use do_sample=True "
                                "or num_beams > 1", field="num_return_sequences")

    lp = g("logprobs")
    if not isinstance(lp, bool):
        raise InvalidInputError(f"logprobs: expected True or False, got {lp!r}", field="logprobs")
    o.top_logprobs = _num("top_logprobs", g("top_logprobs"), integer=True, low=0, high=20)
    o.logprobs = lp or o.top_logprobs > 0

    seed = cfg.seed
    o.seed = random.getrandbits(63) if seed is None else _num("seed", seed, integer=True, low=0, high=2**64 - 1)

    stop = cfg.stop or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidInputError(f"stop: expected a non-empty string or a list of them, got {_short(cfg.stop)}",
                                field="stop")
    limits.check("max_stop_strings", len(stop), what="len(stop)")
    limits.check("max_stop_chars", sum(len(s) for s in stop), what="stop characters")
    if stop and o.num_beams > 1:
        raise InvalidInputError("stop: stop strings are not supported with beam search", field="stop")
    o.validate(vocab_size)
    return o, list(stop)
