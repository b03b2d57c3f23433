"""Decoding options against transformers.

Greedy processors and beam search run through llmos and transformers on the same
random-weight checkpoints; warpers are compared on the same logits; sampling is checked
with a chi-square test against the filtered distribution.
"""

import math

import numpy as np
import pytest
import torch

from llmos import _core
from llmos.errors import ContextLengthError, InvalidInputError

FAMILIES = ["gpt2", "llama", "qwen2"]
NEW = 24


def _prompt(m, n=10, seed=0):
    return np.random.default_rng(seed).integers(3, m.config.vocab_size, n).tolist()


def _reference(ref, ids, **kw):
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), do_sample=False, output_scores=True, return_dict_in_generate=True,
                           pad_token_id=0, **kw)
    return out


def _assert_tokens_match(ours, theirs, scores):
    """Token-identical, except after a step where the reference's top two processed
    scores are within 1e-4 (a tie that float rounding may break either way)."""
    for step, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            top2 = torch.topk(scores[step][0].float(), 2).values
            assert float(top2[0] - top2[1]) < 1e-4, f"step {step}: {a} != {b} with no near-tie"
            return
    assert len(ours) == len(theirs)


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("opts", [
    dict(repetition_penalty=1.3),
    dict(repetition_penalty=0.8),
    dict(no_repeat_ngram_size=2),
    dict(no_repeat_ngram_size=3, repetition_penalty=1.1),
    dict(min_new_tokens=12),
    dict(bad_words_ids=[[5], [7, 8], [11, 12, 13]]),
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_greedy_processors_match_transformers(kind, opts, checkpoint, reference_model, load_llmos):
    path = checkpoint(kind)
    m, ref = load_llmos(path), reference_model(path)
    ids = _prompt(m)
    out = _reference(ref, ids, max_new_tokens=NEW, **opts)
    theirs = out.sequences[0, len(ids):].tolist()
    g = m.generate(ids, max_new_tokens=NEW, **opts)
    _assert_tokens_match(g.token_ids, theirs, out.scores)


def _score_close(a, b):
    # Sums of ~NEW log-probs: the float32 forward passes differ by ~1e-5 per logit, which a
    # negative length penalty multiplies by the length; compare relative to the magnitude.
    return abs(a - b) <= 1e-4 * max(1.0, abs(b))


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("opts", [
    dict(num_beams=2),
    dict(num_beams=3, length_penalty=0.0),
    dict(num_beams=4, length_penalty=-1.0, early_stopping=True),
    dict(num_beams=5, length_penalty=1.5, num_return_sequences=3),
    dict(num_beams=3, early_stopping="never", length_penalty=2.0, num_return_sequences=2),
    dict(num_beams=4, no_repeat_ngram_size=2, early_stopping=False),
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_beam_search_matches_transformers(kind, opts, checkpoint, reference_model, load_llmos):
    path = checkpoint(kind)
    m, ref = load_llmos(path), reference_model(path)
    ids = _prompt(m, seed=1)
    out = _reference(ref, ids, max_new_tokens=NEW, **opts)
    n_ret = opts.get("num_return_sequences", 1)
    gens = m.generate(ids, max_new_tokens=NEW, **opts)
    gens = gens if isinstance(gens, list) else [gens]
    assert len(gens) == n_ret
    fill = 0
    for r, g in enumerate(gens):
        theirs = out.sequences[r, len(ids):].tolist()
        # transformers pads shorter finished sequences; the padding is not part of ours.
        assert g.token_ids == theirs[:len(g.token_ids)]
        assert all(t == theirs[len(g.token_ids)] for t in theirs[len(g.token_ids):]) or len(g.token_ids) == len(theirs)
        assert _score_close(g.score, float(out.sequences_scores[r])), (g.score, float(out.sequences_scores[r]))
    del fill


def test_seed_document_example(checkpoint, reference_model, load_llmos):
    """generate(input_ids, max_length=50, num_beams=5, no_repeat_ngram_size=2) on GPT-2."""
    path = checkpoint("gpt2")
    m, ref = load_llmos(path), reference_model(path)
    ids = _prompt(m, n=8, seed=3)
    with torch.no_grad():
        theirs = ref.generate(torch.tensor([ids]), max_length=50, num_beams=5, no_repeat_ngram_size=2,
                              pad_token_id=0)[0, len(ids):].tolist()
    g = m.generate(ids, max_length=50, num_beams=5, no_repeat_ngram_size=2)
    assert g.token_ids == theirs[:len(g.token_ids)]
    assert len(ids) + len(g.token_ids) <= 50


# ---- warpers on the same logits ---------------------------------------------------------

def _warper_kept(logits, **kw):
    from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper, TypicalLogitsWarper)
    chain = []
    if kw.get("temperature", 1.0) != 1.0:
        chain.append(TemperatureLogitsWarper(kw["temperature"]))
    if kw.get("top_k"):
        chain.append(TopKLogitsWarper(kw["top_k"]))
    if kw.get("top_p", 1.0) < 1.0:
        chain.append(TopPLogitsWarper(kw["top_p"]))
    if kw.get("min_p"):
        chain.append(MinPLogitsWarper(kw["min_p"]))
    if kw.get("typical_p", 1.0) < 1.0:
        chain.append(TypicalLogitsWarper(kw["typical_p"]))
    s = torch.tensor(logits)[None]
    for w in chain:
        s = w(None, s)
    return s[0].numpy()


def _core_processed(logits, **kw):
    o = _core.DecodeOptions()
    o.do_sample = True
    for k, v in kw.items():
        setattr(o, k, v)
    return _core.process_logits(o, [1], 1, logits)


WARPER_CASES = [
    dict(top_k=1), dict(top_k=10), dict(top_k=200), dict(top_p=0.5), dict(top_p=0.9), dict(top_p=0.999),
    dict(min_p=0.05), dict(min_p=0.3), dict(typical_p=0.5), dict(typical_p=0.95),
    dict(temperature=0.7, top_k=50, top_p=0.9), dict(top_k=40, min_p=0.1), dict(top_p=0.8, typical_p=0.9),
    dict(temperature=1.3, top_k=30, top_p=0.95, min_p=0.02, typical_p=0.9),
]


@pytest.mark.parametrize("case", WARPER_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warpers_keep_the_same_tokens_as_transformers(case, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(1000) * (1 + seed)).astype(np.float32)
    if set(case) <= {"top_k", "min_p", "temperature"}:
        # Ties at the top: top-k keeps every token tied with the k-th, min-p compares
        # values, so the kept set is defined. (For top-p and typical, which of several
        # exactly tied tokens a cut keeps depends on torch's unstable sort.)
        logits[rng.integers(0, 1000, 20)] = logits.max()
    theirs = _warper_kept(logits, **case)
    ours = _core_processed(logits, **case)
    assert set(np.flatnonzero(np.isfinite(ours))) == set(np.flatnonzero(np.isfinite(theirs)))
    kept = np.isfinite(theirs)
    np.testing.assert_allclose(ours[kept], theirs[kept], rtol=1e-5, atol=1e-5)


def test_sampling_follows_the_filtered_distribution():
    """Chi-square goodness of fit of 20000 seeded draws against softmax(filtered logits)."""
    rng = np.random.default_rng(7)
    logits = rng.standard_normal(64).astype(np.float32) * 2
    case = dict(temperature=0.8, top_k=20, top_p=0.95)
    filtered = _warper_kept(logits, **case)
    p = np.exp(filtered - filtered[np.isfinite(filtered)].max())
    p[~np.isfinite(filtered)] = 0
    p /= p.sum()
    o = _core.DecodeOptions()
    o.do_sample = True
    for k, v in case.items():
        setattr(o, k, v)
    counts = np.zeros(64)
    n = 20000
    for seed in range(n // 100):
        o.seed = seed
        s = _core.Sampler(o, [1], 64)
        for _ in range(100):
            counts[s.next(logits)[0]] += 1
    assert counts[p == 0].sum() == 0, "drew a token the filters removed"
    support = p > 0
    expected = p[support] * n
    chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
    df = int(support.sum()) - 1
    # The chi-square 0.9999 quantile is below df + 4.5 * sqrt(2 df) + 12 for these df.
    assert chi2 < df + 4.5 * math.sqrt(2 * df) + 12, (chi2, df)


def test_sampling_is_reproducible_with_a_seed(checkpoint, load_llmos):
    m = load_llmos(checkpoint("llama"))
    ids = _prompt(m)
    a = m.generate(ids, do_sample=True, seed=123, max_new_tokens=16, top_k=0, temperature=1.5)
    b = m.generate(ids, do_sample=True, seed=123, max_new_tokens=16, top_k=0, temperature=1.5)
    c = m.generate(ids, do_sample=True, seed=124, max_new_tokens=16, top_k=0, temperature=1.5)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


# ---- logprobs -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_logprobs_match_output_scores(kind, checkpoint, reference_model, load_llmos):
    path = checkpoint(kind)
    m, ref = load_llmos(path), reference_model(path)
    ids = _prompt(m, seed=4)
    opts = dict(repetition_penalty=1.2, no_repeat_ngram_size=3)
    out = _reference(ref, ids, max_new_tokens=12, **opts)
    g = m.generate(ids, max_new_tokens=12, logprobs=True, top_logprobs=5, **opts)
    theirs = out.sequences[0, len(ids):].tolist()
    assert g.token_ids == theirs
    for step, tok in enumerate(theirs):
        lsm = torch.log_softmax(out.scores[step][0].float(), -1)
        assert abs(g.logprobs[step] - float(lsm[tok])) < 1e-4
        best = torch.topk(lsm, 5)
        assert [t for t, _ in g.top_logprobs[step]] == best.indices.tolist()
        np.testing.assert_allclose([v for _, v in g.top_logprobs[step]], best.values.numpy(), atol=1e-4)


# ---- OpenAI options -------------------------------------------------------------------------

def test_presence_frequency_and_logit_bias_change_the_scores():
    logits = np.zeros(10, np.float32)
    o = _core.DecodeOptions()
    o.presence_penalty, o.frequency_penalty = 0.5, 0.25
    o.logit_bias = [(3, 2.0), (4, -1.0)]
    out = _core.process_logits(o, [1, 2, 2, 2, 5], 1, logits)  # generated: 2, 2, 2, 5
    expected = np.zeros(10, np.float32)
    expected[2] = -(0.5 + 0.75)
    expected[5] = -(0.5 + 0.25)
    expected[3], expected[4] = 2.0, -1.0
    np.testing.assert_allclose(out, expected)


def test_logit_bias_steers_generation(checkpoint, load_llmos):
    m = load_llmos(checkpoint("llama"))
    g = m.generate(_prompt(m), max_new_tokens=5, logit_bias={7: 100.0})
    assert g.token_ids == [7] * 5


# ---- stop strings ---------------------------------------------------------------------------

def test_stop_string_spanning_tokens_is_cut_and_never_streamed(checkpoint, load_llmos):
    m = load_llmos(checkpoint("llama"))
    prompt = "Once upon a time"
    full = m.generate(prompt, max_new_tokens=40, eos_token_id=[])
    pieces = [m.tokenizer.decode([t]) for t in full.token_ids]
    # a stop string made of the end of one token's text and the start of a later one
    k = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 1 and len(pieces[i + 1]) >= 1)
    stop = pieces[k][-1:] + pieces[k + 1][:1]
    start = full.text.find(stop)
    assert start >= 0
    g = m.generate(prompt, max_new_tokens=40, eos_token_id=[], stop=[stop, "\x00never"])
    assert g.finish_reason == "stop"
    assert g.text == full.text[:start]
    streamed = list(m.stream(prompt, max_new_tokens=40, eos_token_id=[], stop=[stop]))
    assert "".join(streamed) == g.text
    assert all(stop not in p for p in streamed)


# ---- batches --------------------------------------------------------------------------------

@pytest.mark.parametrize("opts", [dict(), dict(do_sample=True, seed=5, top_k=20), dict(repetition_penalty=1.2)])
def test_batch_equals_each_prompt_alone(opts, checkpoint, load_llmos):
    m = load_llmos(checkpoint("qwen2"))
    prompts = [_prompt(m, n=n, seed=n) for n in (3, 17, 9, 30)]
    eos = [_prompt(m, n=1, seed=99)[0]]
    alone = [m.generate(p, max_new_tokens=20, eos_token_id=eos, **opts) for p in prompts]
    together = m.generate(prompts, max_new_tokens=20, eos_token_id=eos, **opts)
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert [g.finish_reason for g in together] == [g.finish_reason for g in alone]


def test_num_return_sequences_when_sampling(checkpoint, load_llmos):
    m = load_llmos(checkpoint("llama"))
    gens = m.generate(_prompt(m), do_sample=True, seed=1, num_return_sequences=3, max_new_tokens=8, top_k=0)
    assert len(gens) == 3 and len({tuple(g.token_ids) for g in gens}) > 1


# ---- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    dict(top_p=1.5), dict(top_p=0.0), dict(temperature=0.0, do_sample=True), dict(top_k=-1),
    dict(repetition_penalty=0.0), dict(min_p=2.0), dict(typical_p=0.0), dict(num_beams=0),
    dict(num_beams=2, num_return_sequences=3), dict(num_return_sequences=2), dict(no_repeat_ngram_size=-1),
    dict(bad_words_ids=[[]]), dict(bad_words_ids=[[10**9]]), dict(logit_bias={10**9: 1.0}),
    dict(early_stopping="sometimes"), dict(top_logprobs=50), dict(max_new_tokens=-1),
    dict(temperature=float("nan")), dict(stop=[""]), dict(unknown_option=1), dict(eos_token_id=-5),
    dict(presence_penalty=3.0),
])
def test_bad_options_are_clear_errors(bad, checkpoint, load_llmos):
    m = load_llmos(checkpoint("llama"))
    with pytest.raises(InvalidInputError) as e:
        m.generate(_prompt(m), **{"max_new_tokens": 4, **bad})
    assert e.value.field is not None


def test_max_new_tokens_beyond_context_is_refused(checkpoint, load_llmos):
    m = load_llmos(checkpoint("llama"))
    with pytest.raises(ContextLengthError):
        m.generate(_prompt(m), max_new_tokens=m.config.max_position_embeddings)


def test_process_logits_runs_the_whole_chain_renormalize_included():
    logits = np.random.default_rng(3).normal(size=64).astype(np.float32) * 4
    plain = _core_processed(logits, top_k=10)
    renormalized = _core_processed(logits, top_k=10, renormalize_logits=True)
    kept = np.isfinite(plain)
    assert np.array_equal(kept, np.isfinite(renormalized))
    lse = float(np.log(np.exp(renormalized[kept].astype(np.float64)).sum()))
    assert abs(lse) < 1e-5 and abs(float(np.log(np.exp(plain[kept].astype(np.float64)).sum()))) > 0.1
