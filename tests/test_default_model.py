"""The bundled default model: it ships in the package, loads with no download, and writes English.

Quality bar: on 20 prompts, at least 90% of the generated words are in a standard
English word list - /usr/share/dict/words (Debian's wamerican) where it is installed, else the
copy of that list in tests/data/ (SCOWL licence: tests/data/wamerican-words.COPYRIGHT).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
SYSTEM_WORDS = Path("/usr/share/dict/american-english")
BUNDLED_WORDS = DATA / "wamerican-words.txt.gz"

PROMPTS = [
    "Once upon a time",
    "It was a cold morning in",
    "She looked at him and said",
    "The house stood at the end of",
    "My dear sister,",
    "He had never been so happy as",
    "In the evening they walked",
    "The letter arrived on",
    "When the rain began,",
    "There was nothing in the world",
    "Her mother had always believed that",
    "The young man was",
    "After dinner the ladies",
    "I cannot think why",
    "The carriage stopped at the door, and",
    "They talked of the weather and",
    "It is a truth universally acknowledged",
    "Nobody could have guessed that",
    "The garden was",
    "At last he said",
]
MAX_NEW_TOKENS = 60
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    if SYSTEM_WORDS.is_file():
        text = SYSTEM_WORDS.read_text(encoding="utf-8", errors="replace")
    else:
        text = gzip.decompress(BUNDLED_WORDS.read_bytes()).decode("utf-8")
    return frozenset(w.strip().lower() for w in text.splitlines() if w.strip())


def in_word_list(word: str, words: frozenset[str]) -> bool:
    w = word.lower()
    return w in words or (w.endswith("'s") and w[:-2] in words)


def word_list_score(model_dir: str | None = None) -> dict:
    """Generates from the 20 prompts with the model's default decoding (seeded) and counts the
    words found in the word list. Also used by tools/train_default_model.py for the card."""
    import llmos
    from llmos.runtime.default_model import default_model_path

    m = llmos.load(model_dir or default_model_path(), threads=1)
    words = english_words()
    total = hits = 0
    samples, missing = [], []
    for i, prompt in enumerate(PROMPTS):
        text = m.generate(prompt, max_new_tokens=MAX_NEW_TOKENS, seed=i).text
        samples.append(prompt + text)
        for w in _WORD.findall(text):
            total += 1
            if in_word_list(w, words):
                hits += 1
            else:
                missing.append(w)
    return {"fraction": hits / max(1, total), "words": total, "hits": hits, "missing": missing, "samples": samples,
            "prompts": len(PROMPTS), "max_new_tokens": MAX_NEW_TOKENS}


def test_bundled_model_files_are_in_the_package():
    from llmos.runtime.default_model import default_model_path

    path = Path(default_model_path())
    assert path.parent.name == "runtime" and path.parent.parent.name == "llmos"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "MODEL_CARD.md"):
        assert (path / name).is_file(), name
    size = sum(p.stat().st_size for p in path.iterdir())
    assert 1e6 < size < 40e6
    card = (path / "MODEL_CARD.md").read_text(encoding="utf-8")
    for needed in ("public domain", "perplexity", "Parameters", "training time"):
        assert needed.lower() in card.lower(), needed


def test_loads_and_generates(llmos):
    from llmos.runtime.default_model import load_default

    m = load_default(threads=1)
    assert m.config.family == "llama"
    g = m.generate("Once upon a time", max_new_tokens=20, seed=0)
    assert len(g.token_ids) > 0 and g.text.strip()
    pieces = list(m.stream("Once upon a time", max_new_tokens=20, seed=0))
    assert "".join(pieces) == g.text


def test_generated_words_are_english():
    r = word_list_score()
    assert r["words"] >= 20 * 20, r["samples"]
    assert r["fraction"] >= 0.90, (r["fraction"], r["missing"][:50], r["samples"][:3])


def test_llmos_run_streams_from_the_bundled_model(tmp_path):
    env = {**os.environ, "LLMOS_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "llmos", "run", "Once upon a time", "--max-new-tokens", "15",
                          "--seed", "1", "--threads", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    # (An editable install may print its rebuild first.)
    text = out.stdout[out.stdout.index("Once upon a time"):]
    assert len(text.split()) > 5
    assert not (tmp_path / "home").exists()  # nothing was downloaded or cached


def test_word_list_copy_matches_its_source():
    # The committed copy is the Debian list; where the system has it, they agree.
    words = gzip.decompress(BUNDLED_WORDS.read_bytes()).decode("utf-8").split()
    assert len(words) > 90000 and "house" in words
    if SYSTEM_WORDS.is_file():
        assert set(words) == {w.strip() for w in SYSTEM_WORDS.read_text(encoding="utf-8").splitlines() if w.strip()}


if __name__ == "__main__":  # python tests/test_default_model.py [DIR]: print the score
    r = word_list_score(sys.argv[1] if len(sys.argv) > 1 else None)
    print(json.dumps({k: v for k, v in r.items() if k != "missing"}, indent=2))
    print("not in the list:", sorted(set(r["missing"])))


def test_int8_greedy_tokens_agree_with_float32():
    """Issue 4's accuracy bar: greedy int8 output agrees with float32 on >= 95% of the tokens of
    the bundled (trained) model. Each float32 greedy continuation (64 tokens, no repetition
    penalty) is scored teacher-forced by both models, so one early flip does not make every
    later token disagree; measured 99.2-99.4% (free-running: 87%)."""
    import numpy as np

    import llmos
    from llmos.runtime.default_model import default_model_path

    path = default_model_path()
    f32 = llmos.load(path, threads=1, dtype="float32")
    i8 = llmos.load(path, threads=1, quant="int8")
    agree = total = 0
    for prompt in PROMPTS[:10]:
        g = f32.generate(prompt, max_new_tokens=64, eos_token_id=[], do_sample=False, repetition_penalty=1.0)
        seq = list(g.prompt_token_ids) + list(g.token_ids)
        n0 = len(g.prompt_token_ids)
        ref = f32.logits(seq)[n0 - 1:-1].argmax(-1)
        assert (ref == np.asarray(g.token_ids)).all()  # the scoring reproduces greedy decoding
        agree += int((i8.logits(seq)[n0 - 1:-1].argmax(-1) == ref).sum())
        total += len(ref)
    assert agree / total >= 0.95, f"{agree}/{total}"
