"""Non-finite weights are reported, not turned into an empty answer.

A checkpoint whose weights hold NaN or infinity used to generate '' with finish reason 'eos'
(argmax over NaN logits picks token 0). Now generation raises NumericalError naming the step,
on every decode path (greedy, sampling, beam search), and ``llmos verify`` names the tensors.
Metric: the exception class, its field and the step in its message; verify's exit status and
the tensor names it prints.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from child_env import child_env

BAD = "model.layers.1.mlp.down_proj.weight"


def damage(path: Path, name: str, value: float, rows=slice(0, 1)) -> None:
    t = load_file(str(path / "model.safetensors"))
    t[name] = t[name].copy()
    t[name][rows] = value
    save_file(t, str(path / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("opts", [dict(), dict(do_sample=True, seed=1), dict(num_beams=2)],
                         ids=["greedy", "sampling", "beam_search"])
def test_nan_weights_raise_numerical_error_naming_the_step(llmos, tmp_checkpoint, opts):
    path = tmp_checkpoint("llama")
    damage(path, BAD, np.nan)
    model = llmos.load(str(path), threads=1)
    with pytest.raises(llmos.errors.NumericalError, match=r"generation step 0\b") as e:
        model.generate("hello world", max_new_tokens=4, **opts)
    assert e.value.field == "logits" and "NaN" in str(e.value)


def test_infinite_logit_raises_numerical_error(llmos, tmp_checkpoint):
    path = tmp_checkpoint("llama")
    damage(path, "lm_head.weight", np.inf, rows=slice(7, 8))  # token 7's logit: +inf or NaN
    model = llmos.load(str(path), threads=1)
    with pytest.raises(llmos.errors.NumericalError, match="generation step 0"):
        model.generate("hello world", max_new_tokens=4)


def test_remove_invalid_values_still_repairs_the_row(llmos, tmp_checkpoint):
    """remove_invalid_values=True asks for transformers' repair (NaN -> 0) instead of the error;
    the healthy model is unaffected by the check."""
    path = tmp_checkpoint("llama")
    g = llmos.load(str(path), threads=1).generate("hello world", max_new_tokens=4)
    assert len(g.token_ids) == 4 and g.finish_reason == "length"
    damage(path, BAD, np.nan)
    g = llmos.load(str(path), threads=1).generate("hello world", max_new_tokens=4, remove_invalid_values=True)
    assert g.token_ids  # every logit repaired to 0: argmax takes token 0, as transformers does


def verify(path: Path, *args: str) -> subprocess.CompletedProcess:
    env = child_env()
    return subprocess.run([sys.executable, "-m", "llmos", "verify", str(path), *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_verify_names_nonfinite_tensors(tmp_checkpoint):
    path = tmp_checkpoint("llama")
    ok = verify(path)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    damage(path, BAD, np.nan, rows=slice(0, 3))
    damage(path, "model.embed_tokens.weight", -np.inf)
    out = verify(path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"'{BAD}' holds {3 * 128} NaN or infinite values" in out.stdout, out.stdout
    assert f"'model.embed_tokens.weight' holds 64 NaN or infinite values" in out.stdout, out.stdout
    assert "lm_head.weight" not in out.stdout


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_verify_reads_half_precision_bits(tmp_checkpoint, dtype):
    import torch
    from safetensors.torch import load_file as load_torch, save_file as save_torch

    path = tmp_checkpoint("llama", dtype)
    t = load_torch(str(path / "model.safetensors"))
    t[BAD] = t[BAD].clone()
    t[BAD][0, :5] = float("nan")
    t[BAD][1, :2] = float("inf")
    # The largest finite values must not count: only an all-ones exponent is non-finite.
    t[BAD][2, :] = torch.finfo(t[BAD].dtype).max
    save_torch(t, str(path / "model.safetensors"), metadata={"format": "pt"})
    out = verify(path, "--json")
    assert out.returncode == 1
    assert f"'{BAD}' holds 7 NaN or infinite values" in out.stdout, out.stdout
