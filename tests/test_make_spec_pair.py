"""tools/make_spec_pair.py: the grown speculation target keeps the bundled model's function.

The claim the speculative-decoding numbers rest on (docs/performance.md): at noise 0 the wider,
deeper target computes what the draft computes (metric: the last position's logits agree to
bfloat16 rounding, and greedy tokens are identical), and noise moves it away. Grown small here
(hidden 512, intermediate 1024, 6 layers) to stay quick; the benchmark's shape only differs in size.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "python" / "llmos" / "runtime" / "default_model"
PROMPTS = ["It is a truth universally acknowledged", "Once upon a time"]


def _tool():
    spec = importlib.util.spec_from_file_location("make_spec_pair", ROOT / "tools" / "make_spec_pair.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _grow(tmp_path, noise, **size):
    tool = _tool()
    cfg = json.loads((BUNDLED / "config.json").read_text())
    weights, new_cfg = tool.grow(load_file(str(BUNDLED / "model.safetensors")), cfg, size.get("H", 512),
                                 size.get("I", 1024), size.get("L", 6), noise, seed=0)
    out = tmp_path / f"target_{noise}"
    shutil.copytree(BUNDLED, out, ignore=shutil.ignore_patterns("model.safetensors", "config.json", "__init__.py"))
    (out / "config.json").write_text(json.dumps(new_cfg))
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _last_logits(model, text):
    from llmos import _core

    ids = np.asarray(model.tokenizer.encode(text), np.int64)
    core = model.backend.core
    return np.asarray(_core.Session(core).forward(core, ids, False, None)[0], np.float64)


def test_grown_target_computes_the_draft_function(llmos, tmp_path):
    draft = llmos.load(str(BUNDLED), threads=1)
    target = llmos.load(str(_grow(tmp_path, 0.0)), threads=1)
    assert target.config.hidden_size == 512 and target.config.num_layers == 6
    for text in PROMPTS:
        a, b = _last_logits(draft, text), _last_logits(target, text)
        # The prompt runs on the many-token kernels, which round activations to bfloat16 for a
        # bfloat16 model (AMX): a sum taken in another order can land one bfloat16 step apart.
        assert np.max(np.abs(a - b)) < 5e-3 * np.max(np.abs(a)), text
        kw = dict(max_new_tokens=24, min_new_tokens=24, do_sample=False)
        assert target.generate(text, **kw).token_ids == draft.generate(text, **kw).token_ids, text


def test_noise_moves_the_target_away(llmos, tmp_path):
    draft = llmos.load(str(BUNDLED), threads=1)
    target = llmos.load(str(_grow(tmp_path, 0.2)), threads=1)
    a, b = _last_logits(draft, PROMPTS[0]), _last_logits(target, PROMPTS[0])
    assert np.max(np.abs(a - b)) > 0.05 * np.max(np.abs(a))


def test_refuses_a_target_smaller_than_the_draft():
    tool = _tool()
    cfg = json.loads((BUNDLED / "config.json").read_text())
    with pytest.raises(SystemExit, match="at least the draft's size"):
        tool.grow(load_file(str(BUNDLED / "model.safetensors")), cfg, 128, 1024, 6, 0.0, seed=0)
