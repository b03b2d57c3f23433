"""The fuzz targets of tests/fuzz_inputs.py, run briefly: fixed examples, derandomized.

Property: every hostile config.json (per family) and every hostile set of generate() options
ends in success or an ``llmos.errors`` exception - never TypeError, ZeroDivisionError,
MemoryError, a hang or a crash. Each target runs in a child process under an address-space
limit and a timeout. ``python tools/fuzz_inputs.py --minutes 10`` searches longer.
"""

from __future__ import annotations

import fuzz_inputs
import pytest

# One checkpoint per family, plus the rope types with the most parameters.
KINDS = ["gpt2", "llama", "mistral_swa", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "llama3_rope",
         "phi3_longrope"]
TIMEOUT = 300


def _check(r, at_least: int) -> None:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-8000:]}"
    examples = int(r.stdout.strip().splitlines()[-1].split(": ")[1])
    assert examples >= at_least, r.stdout


def test_config_fuzz(checkpoint):
    folders = [str(checkpoint(k)) for k in KINDS]
    _check(fuzz_inputs.run_guarded("config", dict(folders=folders, examples=80), timeout=TIMEOUT), 80)


def test_generation_options_fuzz(checkpoint):
    _check(fuzz_inputs.run_guarded("generation", dict(folder=str(checkpoint("llama")), examples=300, wild_sizes=True),
                                   timeout=TIMEOUT), 300)


# What the searches found, kept as fixed cases (each raised TypeError or OverflowError before).
FOUND_OPTIONS = [
    dict(top_k=2**63), dict(min_length=2**64), dict(min_new_tokens=2**63),
    dict(exponential_decay_length_penalty=(-(2**63) - 1, 0.5)), dict(no_repeat_ngram_size=2**70),
    dict(repetition_penalty=10**400),
]



@pytest.mark.parametrize("opts", FOUND_OPTIONS, ids=lambda o: ",".join(o))
def test_found_generation_options_are_refused(load_llmos, checkpoint, llmos, opts):
    model = load_llmos(checkpoint("llama"))
    with pytest.raises(llmos.errors.InvalidInputError) as e:
        model.generate("hello", max_new_tokens=2, **opts)
    assert e.value.field in opts
