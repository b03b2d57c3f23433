"""tools/train_spec_target.py: the trained speculation target shares the draft's token ids.

Speculative decoding verifies the draft's token ids with the target, so the target the tool
trains must carry the bundled model's tokenizer unchanged; its random start is checked here
(small, 1 layer) with what the benchmark then does with it: greedy speculative decoding with
the bundled model as draft gives the target's own greedy tokens.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import llmos  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "python" / "llmos" / "runtime" / "default_model"


def _tool():
    spec = importlib.util.spec_from_file_location("train_spec_target", ROOT / "tools" / "train_spec_target.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_random_target_shares_the_drafts_tokens(tmp_path):
    out = _tool().init_target(tmp_path / "target", hidden=128, layers=1, intermediate=256, heads=2, seed=0)
    assert (out / "tokenizer.json").read_bytes() == (BUNDLED / "tokenizer.json").read_bytes()
    assert not (out / "MODEL_CARD.md").exists()
    target, draft = llmos.load(out, threads=1), llmos.load(BUNDLED, threads=1)
    assert target.config.hidden_size == 128 and target.config.num_layers == 1
    text = "It is a truth universally acknowledged"
    assert target.tokenizer.encode(text) == draft.tokenizer.encode(text)
    plain = target.generate(text, max_new_tokens=12, do_sample=False, repetition_penalty=1.0)
    spec = target.generate(text, max_new_tokens=12, do_sample=False, repetition_penalty=1.0, draft_model=draft)
    assert spec.token_ids == plain.token_ids and len(plain.token_ids) > 0
