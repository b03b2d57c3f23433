"""`llmos eval` on a file that already holds predictions scores it without a model, as
sacrebleu's command scores a hypothesis file; the numbers are sacrebleu's and rouge-score's own.
A corpus BLEU held at 0 by short texts comes with a warning; the ROUGE headline names its
variant (rougeL F1 x 100)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HYPS = ["the cat sat on the mat", "a quick brown fox jumped over the lazy dog", "hello world, how are you?",
        "it was raining in the city all day"]
REFS = ["the cat is sitting on the mat", "the quick brown fox jumps over the lazy dog", "hello world! how are you",
        "it rained in the town for the whole day"]


def _llmos(*args):
    out = subprocess.run([sys.executable, "-m", "llmos", *args], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    return out


def _write(path, hyps, refs):
    path.write_text("".join(json.dumps({"prediction": h, "reference": r}) + "\n" for h, r in zip(hyps, refs)),
                    encoding="utf-8")
    return str(path)


def test_predictions_are_scored_without_a_model(tmp_path):
    import sacrebleu

    data = _write(tmp_path / "preds.jsonl", HYPS, REFS)
    out = _llmos("eval", "--metric", "bleu", "--data", data, "--json")
    assert out.returncode == 0, out.stderr[-1000:]
    result = json.loads(out.stdout)
    assert result["n"] == 4 and result["model"] is None
    assert result["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, rel=1e-12, abs=1e-12)
    assert result["score"] > 10 and out.stderr == ""  # long enough texts: no warning
    out = _llmos("eval", "--metric", "chrf", "--data", data, "--json")
    assert json.loads(out.stdout)["score"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, rel=1e-12)

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi", "reference": "there"}) + "\n", encoding="utf-8")
    out = _llmos("eval", "--metric", "bleu", "--data", str(prompts))
    assert out.returncode == 2 and "expected a string 'prediction'" in out.stderr and f"{prompts}:1" in out.stderr
    out = _llmos("eval", "default", "--metric", "bleu", "--data", data)  # a model and predictions: which one?
    assert out.returncode == 2 and "already holds predictions" in out.stderr and out.stdout == ""
    out = _llmos("eval", "--metric", "perplexity", "--data", data)
    assert out.returncode == 2 and "perplexity needs a model" in out.stderr


def test_bleu_of_short_references_warns_why_it_is_zero(tmp_path):
    import sacrebleu

    hyps, refs = ["the cat", "a dog ran", "yes"], ["the cat", "a dog ran", "yes"]  # perfect, and under 4 tokens
    data = _write(tmp_path / "short.jsonl", hyps, refs)
    out = _llmos("eval", "--metric", "bleu", "--data", data)
    assert out.returncode == 0, out.stderr[-1000:]
    assert sacrebleu.corpus_bleu(hyps, [refs]).score == 0.0  # the standard score, which we keep
    assert out.stdout.startswith("bleu 0.00 over 3 examples")
    assert "llmos: warning: BLEU is 0" in out.stderr and "shorter than 4 tokens" in out.stderr
    assert "--metric chrf" in out.stderr
    # A prediction that is long enough but shares no 4-gram is held near 0 too, and said so.
    data = _write(tmp_path / "nomatch.jsonl", ["one two three four five"], ["one two three five four"])
    out = _llmos("eval", "--metric", "bleu", "--data", data, "--json")
    assert json.loads(out.stdout)["warnings"] and "no 4-gram of the predictions" in out.stderr


def test_rouge_headline_names_its_variant(tmp_path):
    from rouge_score import rouge_scorer

    data = _write(tmp_path / "preds.jsonl", HYPS, REFS)
    out = _llmos("eval", "--metric", "rouge", "--data", data)
    assert out.returncode == 0, out.stderr[-1000:]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    want = 100 * sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(HYPS, REFS)) / len(HYPS)
    headline = out.stdout.splitlines()[0]
    assert headline == f"rougeL F1 (x100) {want:.2f} over 4 examples", headline
    out = _llmos("eval", "--metric", "rouge", "--data", data, "--json")
    assert json.loads(out.stdout)["score"] == pytest.approx(want, rel=1e-12)
