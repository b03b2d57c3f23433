"""llmos.evaluate: perplexity from the core equals transformers' loss-based perplexity; BLEU and
chrF are sacrebleu's; ROUGE is rouge-score's on English and meaningful on Chinese and Japanese."""

from __future__ import annotations

import json
import math

import pytest

from checkpoints import CORPUS

HYPS = ["the cat sat on the mat", "a quick brown fox jumped over the lazy dog", "hello world, how are you?",
        "it was raining in the city all day"]
REFS = ["the cat is sitting on the mat", "the quick brown fox jumps over the lazy dog", "hello world! how are you",
        "it rained in the town for the whole day"]


def _hf_perplexity(model, tokenizer, texts, max_length, stride):
    """transformers' perplexity recipe: model(ids, labels=...).loss over strided windows, each
    token scored once, weighted by the number of tokens each loss averages."""
    import torch

    nll, count = 0.0, 0
    for text in texts:
        ids = torch.tensor(tokenizer(text)["input_ids"])
        prev_end = 0
        for begin in range(0, len(ids), stride):
            end = min(begin + max_length, len(ids))
            window = ids[begin:end]
            target = window.clone()
            target[:-(end - prev_end)] = -100
            n = int((target[1:] != -100).sum())
            if n:
                with torch.no_grad():
                    loss = model(window[None], labels=target[None]).loss
                nll += float(loss) * n
                count += n
            prev_end = end
            if end == len(ids):
                break
    return math.exp(nll / count), count


@pytest.mark.parametrize("max_length,stride", [(None, None), (64, 32), (48, 48)])
def test_perplexity_equals_transformers(checkpoint, load_llmos, reference_model, max_length, stride):
    from transformers import AutoTokenizer

    from llmos.evaluate import perplexity

    path = checkpoint("llama")
    m = load_llmos(path)
    texts = [CORPUS[:300], CORPUS, "Hello, world!"]  # CORPUS is longer than the 64-token windows
    assert len(m.tokenizer.encode(CORPUS)) > 3 * 64
    ours = perplexity(m, texts, max_length=max_length, stride=stride)
    ref, count = _hf_perplexity(reference_model(path), AutoTokenizer.from_pretrained(str(path)), texts,
                                max_length or m.config.max_position_embeddings,
                                stride or (max_length or m.config.max_position_embeddings) // 2)
    assert ours["tokens"] == count
    assert ours["perplexity"] == pytest.approx(ref, rel=1e-3)


def test_perplexity_of_gpt2_family(checkpoint, load_llmos, reference_model):
    from transformers import AutoTokenizer

    from llmos.evaluate import perplexity

    path = checkpoint("gpt2")
    ours = perplexity(load_llmos(path), [CORPUS], max_length=100, stride=40)
    ref, _ = _hf_perplexity(reference_model(path), AutoTokenizer.from_pretrained(str(path)), [CORPUS], 100, 40)
    assert ours["perplexity"] == pytest.approx(ref, rel=1e-3)


def test_bleu_and_chrf_are_sacrebleus():
    import sacrebleu

    from llmos.evaluate import bleu, chrf

    b = bleu(HYPS, REFS)
    assert b["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)
    assert b["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    c = chrf(HYPS, REFS)
    assert c["score"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-9)
    assert c["signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    # Several references per hypothesis (a different number each).
    multi = [[r, h] if i % 2 else [r] for i, (h, r) in enumerate(zip(HYPS, REFS))]
    expected = sacrebleu.corpus_bleu(HYPS, [REFS, [h if i % 2 else None for i, h in enumerate(HYPS)]]).score
    assert bleu(HYPS, multi)["score"] == pytest.approx(expected, abs=1e-9)


def test_bleu_tokenizes_chinese_and_japanese():
    from sacrebleu.metrics import BLEU

    from llmos.evaluate import bleu

    zh_h, zh_r = ["我喜欢吃苹果和香蕉"], ["我喜欢吃苹果"]
    r = bleu(zh_h, zh_r)
    assert "tok:zh" in r["signature"]
    assert r["score"] == pytest.approx(BLEU(tokenize="zh").corpus_score(zh_h, [zh_r]).score)
    ja = bleu(["猫が好きです。毎日遊びます"], ["猫が大好きです。毎日遊びます"])
    assert "tok:char" in ja["signature"] and 20 < ja["score"] < 100


def test_rouge_equals_rouge_score_on_english():
    from rouge_score import rouge_scorer

    from llmos.evaluate import rouge

    types = ("rouge1", "rouge2", "rougeL")
    r = rouge(HYPS, REFS, types=types)
    scorer = rouge_scorer.RougeScorer(list(types))  # its default tokenizer, no stemming
    for t in types:
        for field in ("precision", "recall", "fmeasure"):
            expected = sum(getattr(scorer.score(ref, h)[t], field) for h, ref in zip(HYPS, REFS)) / len(HYPS)
            assert r["details"][t][field] == pytest.approx(expected, abs=1e-12), (t, field)
    assert r["score"] == pytest.approx(100 * r["details"]["rougeL"]["fmeasure"])


def test_rouge_works_on_chinese_and_japanese():
    from rouge_score import rouge_scorer

    from llmos.evaluate import cjk_tokenize, rouge

    # rouge-score's own tokenizer deletes these characters: everything scores 0.
    assert rouge_scorer.RougeScorer(["rouge1"]).score("我喜欢吃苹果", "我喜欢吃苹果")["rouge1"].fmeasure == 0
    assert rouge(["我喜欢吃苹果"], ["我喜欢吃苹果"])["details"]["rouge1"]["fmeasure"] == 1.0
    zh = rouge(["我喜欢吃香蕉"], ["我喜欢吃苹果"])["details"]
    assert zh["rouge1"]["fmeasure"] == pytest.approx(4 / 6) and zh["rouge2"]["fmeasure"] == pytest.approx(3 / 5)
    ja = rouge(["犬が好きです"], ["猫が好きです"])["details"]
    assert ja["rouge1"]["fmeasure"] == pytest.approx(5 / 6)
    assert rouge(["全然違う文章"], ["猫が好きです"])["details"]["rouge1"]["fmeasure"] == 0
    assert cjk_tokenize("Hello 世界, café_au_lait 2024年") == ["hello", "世", "界", "café", "au", "lait", "2024", "年"]


def test_exact_match():
    from llmos.evaluate import exact

    r = exact(["Paris", " 4 ", "blue  sky", "no"], ["Paris", "4", ["red", "blue sky"], "yes"])
    assert r["score"] == 75.0 and r["matches"] == 3


def test_eval_files_and_cli(checkpoint, tmp_path, capsys):
    from llmos.evaluate import evaluate, perplexity
    from llmos.cli import main

    path = str(checkpoint("llama"))
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"text": t}) for t in ("Hello, world!", CORPUS[:200])) + "\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": p, "reference": r}) for p, r in
                               (("Once upon a time", "there was a robot"), ("Hello", "world"))) + "\n")
    r = evaluate(path, "perplexity", str(texts))
    import llmos

    assert r["score"] == pytest.approx(perplexity(llmos.load(path, threads=1), ["Hello, world!", CORPUS[:200]])[
        "perplexity"])
    assert main(["eval", path, "--metric", "perplexity", "--data", str(texts), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(r["score"])
    assert main(["eval", path, "--metric", "bleu", "--data", str(pairs), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "signature: nrefs:1|case:mixed|eff:no|tok:13a" in out
    for metric in ("chrf", "rouge", "exact"):
        assert main(["eval", path, "--metric", metric, "--data", str(pairs), "--max-new-tokens", "4", "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["metric"] == metric and res["n"] == 2 and 0 <= res["score"] <= 100


def test_bad_eval_data_names_file_and_line(checkpoint, tmp_path, capsys):
    from llmos.errors import DatasetError
    from llmos.evaluate import evaluate
    from llmos.cli import main

    path = str(checkpoint("llama"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "reference": "b"}\n{"prompt": "a", reference: "b"}\n')
    with pytest.raises(DatasetError) as e:
        evaluate(path, "bleu", str(bad))
    assert e.value.line == 2 and str(e.value).startswith(f"{bad}:2: not valid JSON")
    assert main(["eval", path, "--metric", "bleu", "--data", str(bad)]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    noref = tmp_path / "noref.jsonl"
    noref.write_text('{"prompt": "a"}\n')
    with pytest.raises(DatasetError, match=r"noref.jsonl:1: expected 'reference'"):
        evaluate(path, "exact", str(noref))
    with pytest.raises(DatasetError, match=r"noref.jsonl:1: perplexity data needs a string 'text'"):
        evaluate(path, "perplexity", str(noref))
