"""Generation options and results (the Python side of the decode loop in cpp/model/generate.cc)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InvalidInputError


@dataclass
class Generation:
    """One generated continuation.

    text: the new text (special tokens skipped, cut before a stop string);
    token_ids: the new token ids (an EOS token that ended generation is included);
    finish_reason: "length" (max_new_tokens reached), "eos" or "stop" (a stop string).
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_token_ids: list[int] = field(default_factory=list, repr=False)


@dataclass
class SamplingOptions:
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stop: list[str]
    eos_token_ids: list[int]


def _check_number(name, value, *, integer=False, low=None, high=None, low_open=False):
    if isinstance(value, bool) or not isinstance(value, (int,) if integer else (int, float)):
        raise InvalidInputError(f"{name}: expected {'an integer' if integer else 'a number'}, got {value!r}",
                                field=name)
    if value != value:  # NaN
        raise InvalidInputError(f"{name}: expected a number, got NaN", field=name)
    if low is not None and (value <= low if low_open else value < low):
        raise InvalidInputError(f"{name}: must be {'>' if low_open else '>='} {low}, got {value}", field=name)
    if high is not None and value > high:
        raise InvalidInputError(f"{name}: must be <= {high}, got {value}", field=name)
    return value


def normalize_options(defaults: dict, user: dict, vocab_size: int) -> SamplingOptions:
    """Merges the checkpoint's generation defaults with the caller's options and checks ranges."""
    known = {"max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "seed", "stop", "eos_token_id"}
    unknown = set(user) - known
    if unknown:
        raise InvalidInputError(f"unknown generation option(s): {', '.join(sorted(unknown))} "
                                f"(known: {', '.join(sorted(known))})", field=sorted(unknown)[0])
    merged = {**defaults, **{k: v for k, v in user.items() if v is not None}}
    do_sample = merged.get("do_sample", False)
    if not isinstance(do_sample, bool):
        raise InvalidInputError(f"do_sample: expected True or False, got {do_sample!r}", field="do_sample")
    temperature = float(_check_number("temperature", merged.get("temperature", 1.0), low=0.0, low_open=do_sample))
    top_k = _check_number("top_k", merged.get("top_k", 0), integer=True, low=0)
    top_p = float(_check_number("top_p", merged.get("top_p", 1.0), low=0.0, high=1.0, low_open=True))
    max_new = _check_number("max_new_tokens", merged.get("max_new_tokens", 128), integer=True, low=0)
    seed = merged.get("seed")
    if seed is None:
        import random
        seed = random.getrandbits(63)
    seed = _check_number("seed", seed, integer=True, low=0, high=2**64 - 1)

    stop = merged.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidInputError(f"stop: expected a non-empty string or a list of them, got {stop!r}", field="stop")

    eos = merged.get("eos_token_id")
    eos = [] if eos is None else [eos] if isinstance(eos, int) and not isinstance(eos, bool) else eos
    if not isinstance(eos, (list, tuple)) or not all(isinstance(e, int) and not isinstance(e, bool) for e in eos):
        raise InvalidInputError(f"eos_token_id: expected a token id or a list of them, got {eos!r}",
                                field="eos_token_id")
    for e in eos:
        if not 0 <= e < vocab_size:
            raise InvalidInputError(f"eos_token_id: {e} is outside the vocabulary [0, {vocab_size})",
                                    field="eos_token_id")
    if not do_sample:
        temperature, top_k, top_p = 1.0, 0, 1.0
    return SamplingOptions(max_new, do_sample, temperature, top_k, top_p, seed, list(stop), list(eos))
