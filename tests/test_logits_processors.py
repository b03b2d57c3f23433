"""transformers' remaining logits processors and warpers against transformers itself:
sequence_bias, suppress_tokens, begin_suppress_tokens, forced_bos_token_id,
forced_eos_token_id, epsilon_cutoff, eta_cutoff, top_h, encoder_repetition_penalty,
encoder_no_repeat_ngram_size, exponential_decay_length_penalty, remove_invalid_values and
renormalize_logits.

Rows: one row of logits at one point of a sequence goes through llmos' chain (the options
built by llmos.runtime.generation.to_core_options, applied by _core.process_logits) and through the
LogitsProcessorList that transformers' own `_get_logits_processor` builds for the same
options, so the order is checked too. Metric: the same entries are -inf / +inf / nan, the
others agree within 1e-6 (absolute + relative).

Generation: greedy (and beam) tokens identical to transformers.generate on random
checkpoints, and different from llmos' tokens without the option, so an option that were
ignored would fail. Sampling warpers: every token llmos samples is one transformers' chain
keeps at that step, and without the option some sampled token is not.
"""

import numpy as np
import pytest
import torch
from transformers import GenerationConfig as HFGenerationConfig

from llmos import _core
from llmos.errors import InvalidInputError
from llmos.runtime.generation import GenerationConfig, to_core_options

NEW = 24
TOL = 1e-6


def _prompt(m, n=10, seed=0):
    return np.random.default_rng(seed).integers(5, m.config.vocab_size, n).tolist()


# ---- one row through both chains ------------------------------------------------------------

def _hf_chain(ref, prompt, max_length, eos, opts):
    """The LogitsProcessorList transformers.generate builds for `opts`; generate passes a
    decoder-only model's prompt as its "encoder" input."""
    gc = HFGenerationConfig(max_length=max_length, **opts)
    gc._eos_token_tensor = torch.tensor(eos) if eos else None
    return ref._get_logits_processor(generation_config=gc, input_ids_seq_length=len(prompt),
                                     encoder_input_ids=torch.tensor([prompt]), device="cpu", model_kwargs={})


def _theirs(ref, seq, prompt_len, logits, max_length, eos, opts):
    procs = _hf_chain(ref, seq[:prompt_len], max_length, eos, opts)
    with torch.no_grad():
        return procs(torch.tensor([seq]), torch.tensor(logits)[None].clone())[0].numpy()


def _ours(seq, prompt_len, logits, max_length, eos, opts):
    # top_k: llmos' default is transformers' generate default (50), not its GenerationConfig's (None).
    cfg = GenerationConfig.from_dict({**opts, "max_length": max_length, "eos_token_id": eos,
                                      "top_k": opts.get("top_k", 0)})
    o, _ = to_core_options(_core, cfg, prompt_len, len(logits), 10_000, explicit_limit=True)
    return _core.process_logits(o, seq, prompt_len, logits)


def _assert_rows_agree(ours, theirs):
    for special in (np.isnan, np.isposinf, np.isneginf):
        assert np.array_equal(special(ours), special(theirs)), (special.__name__,
                                                                np.flatnonzero(special(ours) != special(theirs)))
    ok = np.isfinite(theirs)
    np.testing.assert_allclose(ours[ok], theirs[ok], rtol=TOL, atol=TOL)


V = 384
PROMPT = [17, 42, 99, 42, 7, 250, 13, 99, 42, 61]
# Generated so far: ends with "42 7", which also occurs in the prompt.
SEQ = PROMPT + [5, 300, 42, 7]


def _logits(seed=0, scale=2.0):
    return (np.random.default_rng(seed).standard_normal(V) * scale).astype(np.float32)


# (name, sequence, prompt length, max_length, eos, options)
ROW_CASES = [
    ("sequence_bias", SEQ, 10, 40, [0], dict(sequence_bias=[
        [[7], 1.5], [[7, 9], -2.0], [[42, 7, 11], 3.0], [[1, 2], 5.0], [[300, 42, 7, 9], 0.25], [[12], -1e4]])),
    ("sequence_bias_one_token_sequence", PROMPT[:1], 1, 40, [0], dict(sequence_bias=[[[17, 9], 2.0], [[33, 9], 7.0]])),
    ("suppress_tokens", SEQ, 10, 40, [0], dict(suppress_tokens=[3, 9, 200, 0])),
    ("begin_suppress_tokens_first_step", PROMPT, 10, 40, [0], dict(begin_suppress_tokens=[3, 9, 0])),
    ("begin_suppress_tokens_later", SEQ, 10, 40, [0], dict(begin_suppress_tokens=[3, 9, 0])),
    ("forced_bos_one_token_prompt", PROMPT[:1], 1, 40, [0], dict(forced_bos_token_id=5)),
    ("forced_bos_later", PROMPT[:3], 3, 40, [0], dict(forced_bos_token_id=5)),
    ("forced_bos_moves_begin_suppress", [17, 5], 1, 40, [0], dict(forced_bos_token_id=5, begin_suppress_tokens=[3, 9])),
    ("forced_bos_moves_begin_suppress_not_first", [17], 1, 40, [0],
     dict(forced_bos_token_id=5, begin_suppress_tokens=[5])),
    ("forced_eos_last_step", SEQ, 10, len(SEQ) + 1, [0], dict(forced_eos_token_id=[0, 7])),
    ("forced_eos_not_yet", SEQ, 10, len(SEQ) + 2, [0], dict(forced_eos_token_id=7)),
    ("forced_eos_beats_min_length", SEQ, 10, len(SEQ) + 1, [0], dict(forced_eos_token_id=0, min_length=40)),
    ("forced_eos_then_suppressed", SEQ, 10, len(SEQ) + 1, [0], dict(forced_eos_token_id=[0, 7], suppress_tokens=[7])),
    ("encoder_repetition_penalty_up", SEQ, 10, 40, [0], dict(encoder_repetition_penalty=1.7)),
    ("encoder_repetition_penalty_down", SEQ, 10, 40, [0], dict(encoder_repetition_penalty=0.6, repetition_penalty=1.3)),
    ("encoder_no_repeat_ngram_1", SEQ, 10, 40, [0], dict(encoder_no_repeat_ngram_size=1)),
    ("encoder_no_repeat_ngram_2", SEQ, 10, 40, [0], dict(encoder_no_repeat_ngram_size=2)),
    ("encoder_no_repeat_ngram_3", SEQ, 10, 40, [0], dict(encoder_no_repeat_ngram_size=3, no_repeat_ngram_size=2)),
    ("exponential_decay_before_start", SEQ, 10, 40, [0, 5], dict(exponential_decay_length_penalty=(4, 1.3))),
    ("exponential_decay_past_start", SEQ, 10, 40, [0, 5], dict(exponential_decay_length_penalty=(1, 1.3))),
    ("exponential_decay_shrinks", SEQ, 10, 40, [0, 5, 0], dict(exponential_decay_length_penalty=(0, 0.7))),
    ("exponential_decay_banned_eos", SEQ, 10, 40, [0, 5], dict(exponential_decay_length_penalty=(1, 1.3),
                                                              min_length=30)),
]


@pytest.mark.parametrize("case", ROW_CASES, ids=[c[0] for c in ROW_CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_processor_row_matches_transformers(case, seed, checkpoint, reference_model):
    _, seq, p_len, max_length, eos, opts = case
    ref = reference_model(checkpoint("llama"))
    logits = _logits(seed)
    logits[0], logits[5] = -abs(logits[0]) - 1, abs(logits[5]) + 1  # an EOS below zero, one above
    theirs = _theirs(ref, seq, p_len, logits, max_length, eos, opts)
    ours = _ours(seq, p_len, logits, max_length, eos, opts)
    _assert_rows_agree(ours, theirs)
    assert not np.array_equal(theirs, logits) or case[0].endswith(("later", "not_yet", "before_start",
                                                                   "not_first")), "the case tests nothing"


def test_remove_invalid_values_row_matches_transformers(checkpoint, reference_model):
    ref = reference_model(checkpoint("llama"))
    logits = _logits(3)
    logits[[4, 8]] = np.nan
    logits[[10, 11]] = np.inf
    logits[[12, 13]] = -np.inf
    opts = dict(remove_invalid_values=True, bad_words_ids=[[20], [42, 7, 21]])  # bans: -inf -> lowest float
    theirs = _theirs(ref, SEQ, 10, logits, 40, [0], opts)
    ours = _ours(SEQ, 10, logits, 40, [0], opts)
    _assert_rows_agree(ours, theirs)
    assert np.isfinite(ours).all() and ours[21] == np.finfo(np.float32).min


WARPER_CASES = [
    dict(epsilon_cutoff=0.001), dict(epsilon_cutoff=0.01), dict(epsilon_cutoff=0.2),
    dict(eta_cutoff=0.005), dict(eta_cutoff=0.02), dict(eta_cutoff=0.5),
    dict(top_h=0.2), dict(top_h=0.6), dict(top_h=0.9),
    dict(temperature=0.7, top_k=60, epsilon_cutoff=0.003),
    dict(temperature=1.4, top_p=0.95, eta_cutoff=0.002),
    dict(top_h=0.7, top_k=20, min_p=0.05),
    dict(temperature=0.8, top_h=0.8, top_k=80, top_p=0.97, min_p=0.01, typical_p=0.95, epsilon_cutoff=0.001,
         eta_cutoff=0.001),
]


@pytest.mark.parametrize("opts", WARPER_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_warper_row_matches_transformers(opts, scale, checkpoint, reference_model):
    ref = reference_model(checkpoint("llama"))
    logits = _logits(int(scale * 10), scale)
    opts = dict(do_sample=True, **opts)
    theirs = _theirs(ref, SEQ, 10, logits, 40, [0], opts)
    ours = _ours(SEQ, 10, logits, 40, [0], opts)
    _assert_rows_agree(ours, theirs)
    assert 0 < np.isfinite(theirs).sum() < V, "the case tests nothing"


WARPERS = ("temperature", "top_h", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")


def test_whole_chain_matches_transformers(checkpoint, reference_model):
    """Every processor at once, where the order decides the result (a bias before a ban, a
    penalty before the warpers), at three points of a sequence."""
    ref = reference_model(checkpoint("llama"))
    seq = PROMPT + [5, 250, 300, 5, 250]
    rng = np.random.default_rng(5)
    logits = rng.standard_normal(V).astype(np.float32)
    hot = [0, 3, 5, 7, 9, 10, 11, 12, 13, 17, 42, 61, 99, 250, 300]  # every token an option touches
    logits[hot] = 3.0 + 0.3 * rng.standard_normal(len(hot)).astype(np.float32)
    opts = dict(do_sample=True, sequence_bias=[[[7], 2.0], [[5, 250, 3], -1.0]], encoder_repetition_penalty=1.4,
                repetition_penalty=1.2, no_repeat_ngram_size=3, encoder_no_repeat_ngram_size=2,
                bad_words_ids=[[9], [250, 10]], min_new_tokens=2, exponential_decay_length_penalty=(2, 1.1),
                suppress_tokens=[11, 12], begin_suppress_tokens=[13], temperature=0.9, top_h=0.95, top_k=120,
                top_p=0.99, min_p=0.02, typical_p=0.995, epsilon_cutoff=0.0008, eta_cutoff=0.0008)
    points = ((seq, 10), (seq, len(seq)), (seq[:1], 1))
    eos = [0, 5]
    theirs = [_theirs(ref, q, p_len, logits, 40, eos, opts) for q, p_len in points]
    for (q, p_len), t in zip(points, theirs):
        _assert_rows_agree(_ours(q, p_len, logits, 40, eos, opts), t)

    def matters(dropped):
        rest = {k: v for k, v in opts.items() if k not in dropped}
        return any(not np.array_equal(_theirs(ref, q, p_len, logits, 40, eos, rest), t, equal_nan=True)
                   for (q, p_len), t in zip(points, theirs))

    for k in opts:
        if k not in WARPERS and k != "do_sample":
            assert matters({k}), f"{k} changes nothing here: the case would pass with it ignored"
    assert matters(set(WARPERS))


# ---- generation against transformers.generate -----------------------------------------------

def _reference(ref, ids, **kw):
    with torch.no_grad():
        return ref.generate(torch.tensor([ids]), output_scores=True, return_dict_in_generate=True, pad_token_id=4,
                            **kw)


def _assert_tokens_match(ours, theirs, scores):
    """Token-identical, except after a step where the reference's top two processed scores
    are within 1e-4 (a tie that float rounding may break either way)."""
    for step, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            top2 = torch.topk(scores[step][0].float(), 2).values
            assert float(top2[0] - top2[1]) < 1e-4, f"step {step}: {a} != {b} with no near-tie"
            return
    assert len(ours) == len(theirs)


# Each builds the options from the greedy tokens `b` without them and the prompt `p`.
GREEDY_CASES = {
    "sequence_bias": lambda b, p: dict(sequence_bias=[[[b[3], b[4]], -30.0], [[b[9]], -4.0]]),
    "suppress_tokens": lambda b, p: dict(suppress_tokens=[b[2], b[6]]),
    "begin_suppress_tokens": lambda b, p: dict(begin_suppress_tokens=[b[0]]),
    "forced_eos_token_id": lambda b, p: dict(forced_eos_token_id=[7]),
    "forced_eos_is_eos_beats_min_new_tokens": lambda b, p: dict(forced_eos_token_id=0, eos_token_id=0,
                                                              min_new_tokens=NEW + 5),
    "encoder_repetition_penalty": lambda b, p: dict(encoder_repetition_penalty=3.0),
    "encoder_no_repeat_ngram_size": lambda b, p: dict(encoder_no_repeat_ngram_size=1),
    "exponential_decay_length_penalty": lambda b, p: dict(exponential_decay_length_penalty=(3, 3.0), eos_token_id=0),
}


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("name", list(GREEDY_CASES))
def test_greedy_option_matches_transformers(name, kind, checkpoint, reference_model, load_llmos):
    path = checkpoint(kind)
    m, ref = load_llmos(path), reference_model(path)
    ids = _prompt(m, n=150 if name.startswith("encoder") else 10)  # a prompt that covers much of the vocabulary
    without = m.generate(ids, max_new_tokens=NEW).token_ids
    opts = GREEDY_CASES[name](without, ids)
    out = _reference(ref, ids, max_new_tokens=NEW, do_sample=False, **opts)
    theirs = out.sequences[0, len(ids):].tolist()
    g = m.generate(ids, max_new_tokens=NEW, **opts)
    _assert_tokens_match(g.token_ids, theirs, out.scores)
    assert g.token_ids != without, "the option changed nothing: the test would pass with it ignored"


def test_forced_bos_after_a_one_token_prompt_matches_transformers(checkpoint, reference_model, load_llmos):
    path = checkpoint("llama")
    m, ref = load_llmos(path), reference_model(path)
    ids = _prompt(m, n=1)
    without = m.generate(ids, max_new_tokens=NEW).token_ids
    bos = next(t for t in range(5, 100) if t != without[0])
    opts = dict(forced_bos_token_id=bos, begin_suppress_tokens=[without[1]])
    out = _reference(ref, ids, max_new_tokens=NEW, do_sample=False, **opts)
    g = m.generate(ids, max_new_tokens=NEW, **opts)
    _assert_tokens_match(g.token_ids, out.sequences[0, 1:].tolist(), out.scores)
    assert g.token_ids[0] == bos and g.token_ids[1] != without[1]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_renormalize_logits_in_beam_search_matches_transformers(kind, checkpoint, reference_model, load_llmos):
    """log_softmax after the processors changes what beam search adds up, and so its scores."""
    path = checkpoint(kind)
    m, ref = load_llmos(path), reference_model(path)
    ids = _prompt(m, seed=2)
    opts = dict(num_beams=3, repetition_penalty=1.6, no_repeat_ngram_size=2, length_penalty=0.5, eos_token_id=[])
    out = _reference(ref, ids, max_new_tokens=NEW, renormalize_logits=True, **opts)
    g = m.generate(ids, max_new_tokens=NEW, renormalize_logits=True, **opts)
    plain = m.generate(ids, max_new_tokens=NEW, **opts)
    assert g.token_ids == out.sequences[0, len(ids):].tolist()
    assert abs(g.score - float(out.sequences_scores[0])) <= 1e-4 * max(1.0, abs(g.score))
    assert abs(g.score - plain.score) > 1e-2, "renormalize_logits changed nothing"


def _kept_by_transformers(ref, prompt, tokens, opts):
    """For each sampled token, whether transformers' chain (for `opts`) keeps it at its step."""
    seq = prompt + tokens
    with torch.no_grad():
        logits = ref(torch.tensor([seq])).logits[0]
    procs = _hf_chain(ref, prompt, len(prompt) + NEW, [], dict(do_sample=True, **opts))
    kept = []
    for t, tok in enumerate(tokens):
        row = procs(torch.tensor([seq[:len(prompt) + t]]), logits[len(prompt) + t - 1][None].clone())[0]
        kept.append(bool(torch.isfinite(row[tok])))
    return kept


@pytest.mark.parametrize("opts", [dict(epsilon_cutoff=0.01), dict(eta_cutoff=0.05), dict(top_h=0.5),
                                  dict(temperature=0.8, top_h=0.8, eta_cutoff=0.01)],
                         ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_sampled_tokens_are_ones_transformers_keeps(opts, checkpoint, reference_model, load_llmos):
    path = checkpoint("llama")
    m, ref = load_llmos(path), reference_model(path)
    ids = _prompt(m, seed=5)
    base = dict(do_sample=True, top_k=0, max_new_tokens=NEW, eos_token_id=[])
    outside_without = 0
    for seed in range(3):
        g = m.generate(ids, seed=seed, **base, **opts)
        assert all(_kept_by_transformers(ref, ids, g.token_ids, opts)), seed
        plain = m.generate(ids, seed=seed, **base, temperature=opts.get("temperature", 1.0))
        outside_without += sum(not k for k in _kept_by_transformers(ref, ids, plain.token_ids, opts))
    assert outside_without > 0, "without the option every token was one it keeps: the test would pass with it ignored"


# ---- the ONNX backend runs the same chain ---------------------------------------------------

@pytest.fixture(scope="module")
def onnx_llama(checkpoint, tmp_path_factory, llmos):
    out = tmp_path_factory.mktemp("onnx_processors") / "llama"
    llmos.export_onnx(str(checkpoint("llama")), str(out))
    return llmos.load(str(out), threads=1)


@pytest.mark.parametrize("opts", [
    dict(sequence_bias=[[[9], 3.0]], suppress_tokens=[11, 12], begin_suppress_tokens=[13], forced_eos_token_id=7),
    dict(encoder_repetition_penalty=2.0, encoder_no_repeat_ngram_size=2, exponential_decay_length_penalty=(2, 1.5)),
    dict(do_sample=True, seed=3, top_k=0, top_h=0.8, epsilon_cutoff=0.002, eta_cutoff=0.002),
], ids=["processors", "prompt-penalties", "warpers"])
def test_onnx_backend_applies_the_new_options(opts, onnx_llama, checkpoint, load_llmos):
    core = load_llmos(checkpoint("llama"))
    ids = _prompt(core, n=20, seed=6)
    a = core.generate(ids, max_new_tokens=NEW, eos_token_id=[0], **opts)
    b = onnx_llama.generate(ids, max_new_tokens=NEW, eos_token_id=[0], **opts)
    assert b.token_ids == a.token_ids
    plain = {k: v for k, v in opts.items() if k in ("do_sample", "seed", "top_k")}
    assert a.token_ids != core.generate(ids, max_new_tokens=NEW, eos_token_id=[0], **plain).token_ids


# ---- validation and refusals ----------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    dict(epsilon_cutoff=1.0), dict(epsilon_cutoff=-0.1), dict(eta_cutoff=1.5), dict(top_h=0.0), dict(top_h=1.5),
    dict(sequence_bias=[]), dict(sequence_bias=[[[10**9], 1.0]]), dict(sequence_bias=[[[], 1.0]]),
    dict(sequence_bias=[[[5], float("nan")]]), dict(sequence_bias={(5,): "x"}), dict(suppress_tokens=[-1]),
    dict(begin_suppress_tokens=["a"]), dict(forced_bos_token_id=10**6), dict(forced_bos_token_id=[5]),
    dict(forced_eos_token_id=[10**6]), dict(encoder_repetition_penalty=0.0), dict(encoder_no_repeat_ngram_size=-1),
    dict(exponential_decay_length_penalty=(1,)), dict(exponential_decay_length_penalty=(1.5, 2.0)),
    dict(exponential_decay_length_penalty=(1, float("inf"))), dict(remove_invalid_values="yes"),
    dict(renormalize_logits=1),
], ids=lambda o: repr(o)[:60])
def test_bad_new_options_are_clear_errors(bad, checkpoint, load_llmos):
    m = load_llmos(checkpoint("llama"))
    with pytest.raises(InvalidInputError) as e:
        m.generate(_prompt(m), max_new_tokens=4, **bad)
    assert e.value.field == next(iter(bad))


@pytest.mark.parametrize("opts", [dict(num_beams=4, num_beam_groups=2), dict(num_beams=4, diversity_penalty=0.5),
                                  dict(guidance_scale=1.5), dict(constraints=[]), dict(penalty_alpha=0.6),
                                  dict(watermarking_config={})])
def test_options_that_left_transformers_core_are_refused(opts, checkpoint, load_llmos):
    m = load_llmos(checkpoint("llama"))
    with pytest.raises(InvalidInputError, match="not supported|does not support") as e:
        m.generate(_prompt(m), max_new_tokens=4, **opts)
    assert e.value.field == list(opts)[-1]


def test_inert_group_beam_values_are_accepted(checkpoint, load_llmos):
    """Old generation_config.json files carry num_beam_groups=1, diversity_penalty=0.0."""
    m = load_llmos(checkpoint("llama"))
    a = m.generate(_prompt(m), max_new_tokens=6, num_beams=2, num_beam_groups=1, diversity_penalty=0.0)
    assert a.token_ids == m.generate(_prompt(m), max_new_tokens=6, num_beams=2).token_ids
