"""Prefill and decode speed of a loaded model, measured the way llama-bench does: prefill is one
forward over a prompt of random token ids (pp512), decode is greedy tokens from a one-token
prompt (tg128). `llmos bench` and tools/bench.py both time models with these functions.

Random ids, greedy decoding, no repetition penalty and no end-of-sequence stop, so that what is
timed is the model's forward passes, not what the text happens to say.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from llmos import limits
from llmos.errors import InvalidInputError

PROMPT, GEN = 512, 128  # llama-bench's pp512 / tg128

# The options every timed call uses (see the module docstring).
_TIMED = dict(do_sample=False, repetition_penalty=1.0, eos_token_id=[])


def plan_sizes(context: int, prompt: int | None = None, gen: int | None = None) -> tuple[int, int, str | None]:
    """(prompt tokens, generated tokens, note): the sizes asked for, checked against the model's
    context, with each one left out defaulting to 512 + 128, halved together until they fit in
    the context. The note says when the defaults were scaled down (None otherwise)."""
    p, g = PROMPT, GEN
    while p + g > context and g > 1:
        p, g = max(1, p // 2), max(1, g // 2)
    note = None
    if (p, g) != (PROMPT, GEN) and (prompt is None or gen is None):
        note = f"the model's context is {context} tokens: measuring {p} + {g} tokens instead of {PROMPT} + {GEN}"
    p = p if prompt is None else prompt
    g = g if gen is None else gen
    for name, value in (("prompt", p), ("gen", g)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name}: expected a positive number of tokens, got {value!r}", field=name)
    # Prefill also samples one token; decode starts from a one-token prompt and times gen + 1
    # tokens less the first one (see time_model).
    if p + 1 > context:
        raise InvalidInputError(f"prompt: {p} tokens plus the one token generated after them exceed the model's "
                                f"context of {context} tokens (at most {context - 1})", field="prompt")
    if g + 2 > context:
        raise InvalidInputError(f"gen: {g} tokens after a one-token prompt, plus the untimed first one, exceed "
                                f"the model's context of {context} tokens (at most {context - 2})", field="gen")
    return p, g, note


def random_prompt(vocab_size: int, n: int, seed: int = 0) -> list[int]:
    """n token ids drawn uniformly, away from the low ids where special tokens usually sit."""
    lo = min(10, max(0, vocab_size - 1))
    hi = max(lo + 1, vocab_size - 10)
    return np.random.default_rng(seed).integers(lo, hi, n).tolist()


def time_prefill(model, prompt: list[int]) -> float:
    """Seconds of one forward over `prompt` that yields one token."""
    t = time.perf_counter()
    model.generate(prompt, max_new_tokens=1, **_TIMED)
    return time.perf_counter() - t


def time_decode(model, first: int, gen: int) -> float:
    """Seconds of `gen` greedy tokens after the first, from the one-token prompt [first]. The
    cost of producing that first token (a one-token forward plus the call's setup) is timed
    alone and taken off, so decode counts only the steps that each read the KV cache."""
    t = time.perf_counter()
    model.generate([first], max_new_tokens=1, **_TIMED)
    one = time.perf_counter() - t
    t = time.perf_counter()
    model.generate([first], max_new_tokens=gen + 1, **_TIMED)
    return max(time.perf_counter() - t - one, 1e-9)


def time_model(model, prompt: list[int], gen: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one measurement (time_prefill, time_decode)."""
    return time_prefill(model, prompt), time_decode(model, prompt[0], gen)


def warm_up(model, prompt: list[int]) -> None:
    """One short generation first, so that one-time costs (thread pool, engine start, buffers)
    are not timed."""
    model.generate(prompt[:1], max_new_tokens=4, **_TIMED)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB. From /proc (VmHWM), not getrusage's
    ru_maxrss, which survives fork + exec and would report a parent's peak in a child."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


@dataclass
class BenchResult:
    prompt_tokens: int
    gen_tokens: int
    reps: int
    prefill_tps: float      # mean over the reps, tokens/s
    prefill_tps_sd: float   # standard deviation over the reps (0 for one rep)
    decode_tps: float
    decode_tps_sd: float
    peak_rss_mb: float      # the whole process's, model load included
    prefill_s: list[float] = field(default_factory=list)  # each rep's time
    decode_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def bench(model, prompt: int | None = None, gen: int | None = None, *, reps: int = 3, seed: int = 0,
          progress: Callable[[int, int], None] | None = None) -> BenchResult:
    """Measures `model` `reps` times after a warm-up; sizes as plan_sizes() checks them.
    progress(done, total) is called after each timed phase, counting tokens processed."""
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise InvalidInputError(f"reps: expected a positive number of repetitions, got {reps!r}", field="reps")
    limits.check("max_bench_reps", reps, what="reps")
    prompt, gen, _ = plan_sizes(model.config.max_position_embeddings, prompt, gen)
    # A new prompt each rep: the engine's prefix cache would otherwise serve a repeated one.
    prompts = [random_prompt(model.config.vocab_size, prompt, seed + i) for i in range(reps)]
    total = reps * (prompt + gen)
    warm_up(model, prompts[0])
    report = progress or (lambda done, total: None)
    report(0, total)
    pre, dec = [], []
    for i, ids in enumerate(prompts):
        pre.append(time_prefill(model, ids))
        report(i * (prompt + gen) + prompt, total)
        dec.append(time_decode(model, ids[0], gen))
        report((i + 1) * (prompt + gen), total)
    pt, pt_sd = _mean_sd([prompt / s for s in pre])
    dt, dt_sd = _mean_sd([gen / s for s in dec])
    return BenchResult(prompt, gen, reps, pt, pt_sd, dt, dt_sd, peak_rss_mb(), pre, dec)
