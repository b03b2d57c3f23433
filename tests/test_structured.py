"""Structured output (llmos.text.structured over llguidance): response_format, guided_json,
guided_regex and guided_grammar through generate / stream / chat, on random-weight checkpoints
and the bundled model. Reference: jsonschema validates every JSON reply, Python's `re`
fullmatches every regex reply."""

from __future__ import annotations

import json
import random
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager

import jsonschema
import numpy as np
import pytest

from llmos import _core
from llmos.errors import InvalidInputError, NotAvailableError

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "admin": {"type": "boolean"},
        "role": {"enum": ["owner", "editor", "viewer"]},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 8},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                "geo": {"type": "array", "items": {"type": "integer", "minimum": -90, "maximum": 90},
                        "minItems": 2, "maxItems": 2},
            },
            "required": ["city", "zip", "geo"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
    },
    "required": ["name", "age", "admin", "role", "address", "tags"],
    "additionalProperties": False,
}
REGEX = r"[a-z]{2,6}-[0-9]{2,4}(\.[A-Z]{1,3})?"
SEEDS = range(12)
TIMEOUT_S = 120  # a deadlock between the mask thread and the caller fails instead of hanging


@contextmanager
def deadline(seconds: int = TIMEOUT_S):
    def fire(signum, frame):
        raise TimeoutError(f"no result within {seconds} s (deadlock?)")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def tiny(checkpoint, load_llmos):
    return load_llmos(checkpoint("llama"))


@pytest.fixture(scope="module")
def bundled():
    from llmos.runtime.default_model import load_default

    return load_default(threads=1)


@pytest.fixture(params=["tiny", "bundled"])
def model(request):
    return request.getfixturevalue(request.param)


def _validate(text: str):
    value = json.loads(text)
    jsonschema.validate(value, SCHEMA)
    return value


# ---- every reply follows the constraint --------------------------------------------------


def test_sampled_json_schema_replies_always_validate(model):
    with deadline():
        for seed in SEEDS:
            g = model.generate("Describe a user:", do_sample=True, temperature=1.5, seed=seed, max_new_tokens=160,
                               guided_json=SCHEMA)
            assert g.finish_reason == "eos", (seed, g.text)
            _validate(g.text)


def test_response_format_json_schema_in_a_batch_with_several_returns(tiny):
    rf = {"type": "json_schema", "json_schema": {"name": "user", "schema": SCHEMA, "strict": True}}
    with deadline():
        out = tiny.generate(["A user:", "Another user:"], do_sample=True, seed=3, max_new_tokens=160,
                            num_return_sequences=3, response_format=rf)
    texts = [g.text for per_prompt in out for g in per_prompt]
    assert len(texts) == 6
    for t in texts:
        _validate(t)
    assert len(set(texts)) > 1  # each sequence has its own constraint state and RNG


def test_stream_and_chat_follow_the_schema(bundled):
    with deadline():
        text = "".join(bundled.stream("Hello", do_sample=True, seed=5, max_new_tokens=160, guided_json=SCHEMA))
        assert text == bundled.generate("Hello", do_sample=True, seed=5, max_new_tokens=160, guided_json=SCHEMA).text
        _validate(text)
        g = bundled.chat([{"role": "user", "content": "Give me JSON"}], do_sample=True, seed=2, max_new_tokens=160,
                         response_format={"type": "json_schema", "json_schema": {"name": "u", "schema": SCHEMA}})
    _validate(g.text)


def test_json_object_gives_an_object(tiny):
    # (The bundled model, trained on novels, writes prose inside the first string: its replies
    # are cut, see test_cut_off_reply_finishes_with_length.)
    model = tiny
    ends = 0
    with deadline():
        for seed in SEEDS:
            g = model.generate("JSON:", do_sample=True, seed=seed, max_new_tokens=64,
                               response_format={"type": "json_object"})
            if g.finish_reason == "length":  # cut off (a random model writes long strings): OpenAI's answer too
                assert len(g.token_ids) == 64 and g.text.startswith("{")
                continue
            assert g.finish_reason == "eos"
            assert isinstance(json.loads(g.text), dict)
            ends += 1
    assert ends >= 2, f"only {ends} of {len(SEEDS)} replies finished: the check above never ran"


def test_regex_replies_fullmatch(model):
    with deadline():
        for seed in SEEDS:
            g = model.generate("Code:", do_sample=True, seed=seed, max_new_tokens=40, guided_regex=REGEX)
            assert g.finish_reason == "eos", (seed, g.text)
            assert re.fullmatch(REGEX, g.text), (seed, g.text)


def test_grammar_replies_follow_it(tiny):
    grammar = 'start: "(" item (", " item){0,3} ")"\nitem: /[0-9]{1,3}/ | "x"'
    with deadline():
        for seed in SEEDS:
            g = tiny.generate("Tuple:", do_sample=True, seed=seed, max_new_tokens=40, guided_grammar=grammar)
            assert g.finish_reason == "eos"
            assert re.fullmatch(r"\((?:[0-9]{1,3}|x)(?:, (?:[0-9]{1,3}|x)){0,3}\)", g.text), g.text


def test_cut_off_reply_finishes_with_length(tiny, bundled):
    g = tiny.generate("User:", do_sample=True, seed=1, max_new_tokens=5, guided_json=SCHEMA)
    assert g.finish_reason == "length"
    assert len(g.token_ids) == 5
    with pytest.raises(json.JSONDecodeError):
        json.loads(g.text)
    prefix = '{"name": "'  # what the schema forces first
    assert g.text.startswith(prefix) or prefix.startswith(g.text), g.text
    g = bundled.generate("JSON:", do_sample=True, seed=0, max_new_tokens=40, response_format={"type": "json_object"})
    assert g.finish_reason == "length" and len(g.token_ids) == 40 and g.text.startswith("{")


def test_greedy_constrained_is_deterministic_and_valid(tiny):
    a = tiny.generate("User:", max_new_tokens=160, guided_json=SCHEMA)
    b = tiny.generate("User:", max_new_tokens=160, guided_json=json.dumps(SCHEMA))  # JSON text works too
    assert a.text == b.text and a.finish_reason == "eos"
    _validate(a.text)


# ---- the mask plumbing changes nothing else ------------------------------------------------


class AllowAll(_core.TokenConstraint):
    """Allows every token and records where fill_mask ran."""

    def __init__(self):
        super().__init__()
        self.threads, self.accepted = set(), []

    def fill_mask(self, allowed, vocab):
        self.threads.add(threading.get_ident())
        allowed[:] = 0xFFFFFFFF
        if vocab % 32:
            allowed[-1] = (1 << (vocab % 32)) - 1

    def accept(self, token):
        self.accepted.append(token)

    def done(self):
        return False


@pytest.mark.parametrize("sample", [False, True])
def test_an_allow_all_constraint_leaves_tokens_unchanged(tiny, sample):
    from llmos.runtime.generation import GenerationConfig, to_core_options

    ids = tiny.tokenizer.encode("Once upon a time")
    cfg = tiny.generation_config.merged(GenerationConfig(max_new_tokens=24, do_sample=sample, seed=7))
    o, _ = to_core_options(_core, cfg, len(ids), tiny.config.vocab_size, tiny.config.max_position_embeddings,
                           explicit_limit=True)
    plain = tiny.backend.generate([ids], o)
    c = AllowAll()
    with deadline():
        constrained = tiny.backend.generate([ids], o, constraints=[c])
    assert constrained[0]["tokens"] == plain[0]["tokens"]
    assert c.accepted == plain[0]["tokens"]
    # The mask for the next step is computed on a helper thread while the forward runs.
    assert threading.get_ident() not in c.threads


# ---- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("options, field", [
    ({"guided_json": {"type": "objekt"}}, "guided_json"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_json": [1, 2]}, "guided_json"),
    ({"guided_json": {"type": "string", "minLength": 5, "maxLength": 2}}, "guided_json"),
    ({"guided_regex": "a(b"}, "guided_regex"),
    ({"guided_regex": ""}, "guided_regex"),
    ({"guided_grammar": "start: nowhere"}, "guided_grammar"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}}, "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex"),
    ({"guided_regex": "a+", "num_beams": 2}, "guided_regex"),
])
def test_bad_options_are_refused_before_generation(tiny, options, field):
    with pytest.raises(InvalidInputError) as e:
        tiny.generate("x", max_new_tokens=4, **options)
    assert e.value.field == field, str(e.value)
    with pytest.raises(InvalidInputError):
        tiny.stream("x", max_new_tokens=4, **options)  # at the call, not at the first piece


def test_grammar_size_is_limited(tiny):
    from llmos import limits

    old = limits.current()
    limits.configure(max_grammar_chars=100)
    try:
        with pytest.raises(InvalidInputError, match="max_grammar_chars"):
            tiny.generate("x", max_new_tokens=4, guided_regex="a" * 101)
    finally:
        limits.configure(max_grammar_chars=old.max_grammar_chars)


def test_response_format_text_is_unconstrained(tiny):
    a = tiny.generate("Hi", max_new_tokens=8, response_format={"type": "text"})
    assert a.text == tiny.generate("Hi", max_new_tokens=8).text


class Boom(Exception):
    pass


@pytest.mark.parametrize("where, at", [("fill_mask", 0), ("fill_mask", 3), ("accept", 2)])
def test_an_error_inside_a_constraint_reaches_the_caller(tiny, monkeypatch, where, at):
    from llmos.text import structured

    original = getattr(structured.GrammarConstraint, where)
    calls = [0]

    def failing(self, *args):
        calls[0] += 1
        if calls[0] > at:
            raise Boom(f"{where} failed")
        return original(self, *args)

    before = tiny.generate("Once", max_new_tokens=12)
    monkeypatch.setattr(structured.GrammarConstraint, where, failing)
    with deadline():
        with pytest.raises(Boom, match=f"{where} failed"):
            tiny.generate("User:", do_sample=True, seed=0, max_new_tokens=40, guided_json=SCHEMA)
        with pytest.raises(Boom):
            list(tiny.stream("User:", max_new_tokens=40, guided_json=SCHEMA))
    monkeypatch.undo()
    with deadline():  # still usable, and unchanged
        assert tiny.generate("Once", max_new_tokens=12).token_ids == before.token_ids
        _validate(tiny.generate("User:", max_new_tokens=160, guided_json=SCHEMA).text)


def test_missing_llguidance_names_the_extra(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(NotAvailableError, match=r"llmos\[structured\]"):
        tiny.generate("x", max_new_tokens=4, guided_regex="a+")


# ---- llguidance's masks on every tokenizer style ----------------------------------------------


def _tokenizer_styles(tmp_path):
    import checkpoints
    import tokenizer_factory as tf

    yield "byte-level BPE", checkpoints.build_tokenizer(tmp_path / "bl", 384)
    yield "byte-level BPE, prefix space", tf.make_bytelevel_bpe(tmp_path / "blp", 400, add_prefix_space=True)
    yield "metaspace + byte fallback", tf.make_llama_style(tmp_path / "ll", 420)
    yield "legacy sentencepiece normalizer", tf.make_llama_style(tmp_path / "lln", 420, legacy_normalizer=True)
    yield "gemma", tf.make_gemma_style(tmp_path / "gm", 420)


def test_masks_are_right_on_every_tokenizer_style(tmp_path):
    """A random walk over each mask (any allowed token, uniformly: far from what a model picks)
    decodes, with llmos's tokenizer, to JSON that validates."""
    from llmos.runtime.generation import GenerationConfig
    from llmos.text.structured import constraint_factory
    from llmos.text.tokenizer import Tokenizer

    for style, path in _tokenizer_styles(tmp_path):
        tok = Tokenizer.from_dir(path)
        eos = tok.eos_token_id
        factory = constraint_factory(tok, GenerationConfig(guided_json=SCHEMA), vocab_size=tok.vocab_size,
                                     eos_token_ids=[eos])
        for seed in range(8):
            rng = random.Random(seed)
            c, out = factory(), []
            mask = np.zeros((tok.vocab_size + 31) // 32, dtype=np.uint32)
            for _ in range(400):
                mask[:] = 0
                c.fill_mask(mask, tok.vocab_size)
                allowed = np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little")[:tok.vocab_size])
                t = int(rng.choice(list(allowed)))
                if t == eos:
                    break
                c.accept(t)
                out.append(t)
            else:
                pytest.fail(f"{style}: seed {seed} did not finish")
            text = tok.decode(out, skip_special_tokens=True)
            try:
                _validate(text)
            except (ValueError, jsonschema.ValidationError) as e:
                pytest.fail(f"{style}, seed {seed}: {text!r}: {e}")


def test_onnx_backend_applies_the_same_masks(tiny, checkpoint, llmos, tmp_path):
    """The ONNX loop asks the same constraint between its runs: same tokens as the core."""
    out = tmp_path / "onnx"
    llmos.export_onnx(str(checkpoint("llama")), str(out), precision="fp32")
    onnx_model = llmos.load(str(out), threads=1)
    assert onnx_model.backend.name == "onnx"
    with deadline():
        for seed in range(3):
            a = tiny.generate("User:", do_sample=True, seed=seed, max_new_tokens=160, guided_json=SCHEMA)
            b = onnx_model.generate("User:", do_sample=True, seed=seed, max_new_tokens=160, guided_json=SCHEMA)
            assert b.token_ids == a.token_ids and b.finish_reason == "eos"
            _validate(b.text)
        g = onnx_model.generate("Code:", do_sample=True, seed=1, max_new_tokens=40, guided_regex=REGEX)
    assert re.fullmatch(REGEX, g.text)


def test_cancel_while_a_mask_is_computed(tiny, monkeypatch):
    """A forward cancelled while the helper fills the next mask joins it and raises cleanly."""
    from llmos import CancelToken
    from llmos.errors import CancelledError
    from llmos.text import structured

    token = CancelToken()
    original_accept, original_fill = structured.GrammarConstraint.accept, structured.GrammarConstraint.fill_mask
    n = [0]

    def accept(self, t):
        n[0] += 1
        if n[0] == 5:
            token.cancel()  # the next forward stops, while the mask for it is being filled
        return original_accept(self, t)

    def slow_fill(self, allowed, vocab):
        time.sleep(0.01)
        return original_fill(self, allowed, vocab)

    monkeypatch.setattr(structured.GrammarConstraint, "accept", accept)
    monkeypatch.setattr(structured.GrammarConstraint, "fill_mask", slow_fill)
    with deadline():
        with pytest.raises(CancelledError):
            tiny.generate("User:", max_new_tokens=160, guided_json=SCHEMA, cancel=token)
    assert n[0] == 5
    monkeypatch.undo()
    _validate(tiny.generate("User:", max_new_tokens=160, guided_json=SCHEMA).text)
