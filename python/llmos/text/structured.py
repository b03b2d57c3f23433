"""Structured output: a JSON schema, any JSON object, a regex or a grammar that the reply must
follow, enforced token by token by a mask inside the core's sampler (cpp/sampling/constraint.h).

The masks come from llguidance (``pip install 'llmos[structured]'``), chosen over xgrammar by
measurement (tools/bench_structured.py --libraries, a 49,152-token byte-level BPE trained on
Python's sources, the nested schema of the benchmark replayed over a 176-token instance; AMD
EPYC, one thread, best of 3):

    library       tokenizer  compile  mask median / p90 / max / mean   accept median
    llguidance    340 ms     2 ms     19 / 62 / 1818 / 48 us           1.1 us
    xgrammar      353 ms     61 ms    2 / 32 / 87 / 9 us               1.3 us

Both are far below a decode step of a 135M model (milliseconds) and the mask is computed while
the forward runs, so mask speed does not decide. llguidance compiles a schema 30x faster (a
new schema per request is the server's common case), needs no other package, while xgrammar
requires torch, transformers and triton, which llmos never imports for inference; and its
masks are correct on every tokenizer style the tests build (byte-level BPE with and without
a prefix space, sentencepiece-style metaspace with byte fallback, Gemma's): 40 sampled runs
each, all valid against the schema (jsonschema).

JSON is written compactly, as json.dumps writes it (", " and ": ", no other whitespace): a
sampled model cannot then fill its token budget with blank lines.

Build a ConstraintFactory once per request with ``constraint_factory``; it validates the
options (errors name the field) and makes one fresh constraint per sequence. The decode loop
and the serving engine both take what it makes.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

from llmos import _core, extras, limits
from llmos.errors import InvalidInputError

__all__ = ["OPTIONS", "ConstraintFactory", "GrammarConstraint", "constraint_factory", "grammar_tokenizer"]

# The GenerationConfig fields that ask for structured output; at most one may be set.
OPTIONS = ("response_format", "guided_json", "guided_regex", "guided_grammar")

_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _llguidance():
    extras.require("structured", "structured output (response_format, guided_json, guided_regex, guided_grammar)")
    import llguidance

    return llguidance


class GrammarConstraint(_core.TokenConstraint):
    """One sequence's llguidance matcher as the core's TokenConstraint. The core calls it from
    its helper thread (fill_mask) and its decode thread (accept, done), never at once."""

    def __init__(self, ll_tokenizer, grammar: str, field: str):
        super().__init__()
        llg = _llguidance()
        self.field = field
        self._m = llg.LLMatcher(ll_tokenizer, grammar, log_level=0)
        if self._m.is_error():
            raise InvalidInputError(f"{field}: {self._m.get_error()}", field=field)

    def fill_mask(self, allowed, vocab: int) -> None:
        # Writes straight into the core's buffer; llguidance lets the GIL go meanwhile.
        self._m.unsafe_compute_mask_ptr(allowed.ctypes.data, allowed.nbytes)
        if self._m.is_error():
            raise InvalidInputError(f"{self.field}: the constraint failed: {self._m.get_error()}", field=self.field)

    def accept(self, token: int) -> None:
        if not self._m.consume_token(token):
            raise InvalidInputError(f"{self.field}: token {token} does not continue the constrained output: "
                                    f"{self._m.get_error()}", field=self.field)

    def done(self) -> bool:
        return self._m.is_stopped()


class ConstraintFactory:
    """Makes one fresh GrammarConstraint per sequence (``factory()``), all of one grammar.

    field: the option that asked for it (for error messages); grammar: llguidance's grammar
    text (already validated)."""

    def __init__(self, ll_tokenizer, grammar: str, field: str):
        self._tok = ll_tokenizer
        self.grammar = grammar
        self.field = field

    def __call__(self) -> GrammarConstraint:
        return GrammarConstraint(self._tok, self.grammar, self.field)


# llmos Tokenizer -> {(vocab size, eos ids): llguidance.LLTokenizer}. Building one walks the
# whole vocabulary (~0.3 s for 49k tokens), so it is done once per tokenizer.
_TOKENIZERS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


def grammar_tokenizer(tokenizer, vocab_size: int, eos_token_ids) -> Any:
    """The llguidance tokenizer for an llmos Tokenizer, a model vocabulary of `vocab_size`
    (the model's rows beyond the tokenizer's are never allowed) and the EOS ids the decode loop
    ends on; cached on the tokenizer."""
    llg = _llguidance()
    key = (int(vocab_size), tuple(int(e) for e in eos_token_ids))
    with _TOKENIZERS_LOCK:
        per = _TOKENIZERS.setdefault(tokenizer, {})
        if key not in per:
            if tokenizer.vocab_size > vocab_size:
                raise InvalidInputError(f"structured output: the tokenizer has {tokenizer.vocab_size} tokens, more "
                                        f"than the model's vocabulary of {vocab_size}", field="vocab_size")
            eos = list(key[1]) or None  # None: llguidance takes the tokenizer's own
            per[key] = llg.LLTokenizer(_tokenizer_json(tokenizer.backend), n_vocab=vocab_size, eos_token=eos)
        return per[key]


def _tokenizer_json(backend) -> str:
    """tokenizer.json for llguidance. A byte-level pre-tokenizer that adds a prefix space makes
    llguidance's tokenization of forced text fail (an index panic in 1.9); token bytes are the
    same without it, and only the model's own tokens are ever decoded, so it is turned off."""
    data = json.loads(backend.to_str())

    def fix(node):
        if isinstance(node, dict):
            if node.get("type") == "ByteLevel" and node.get("add_prefix_space"):
                node["add_prefix_space"] = False
            for v in node.values():
                fix(v)
        elif isinstance(node, list):
            for v in node:
                fix(v)

    fix(data.get("pre_tokenizer"))
    return json.dumps(data)


def _text(field: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{field}: expected a non-empty string, got {_short(value)}", field=field)
    limits.check("max_grammar_chars", len(value), what=f"{field} characters")
    return value


def _short(value, n: int = 80) -> str:
    r = repr(value)
    return r if len(r) <= n else f"{r[:n]}... ({len(r)} characters)"


def _schema(field: str, value) -> dict | bool:
    """A JSON schema given as a dict (or true/false) or as JSON text."""
    if isinstance(value, str):
        limits.check("max_grammar_chars", len(value), what=f"{field} characters")
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as e:
            raise InvalidInputError(f"{field}: not valid JSON: {e}", field=field) from e
    if not isinstance(value, (dict, bool)):
        raise InvalidInputError(f"{field}: expected a JSON schema (an object), got {_short(value)}", field=field)
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidInputError(f"{field}: the schema is not JSON data: {e}", field=field) from e
    limits.check("max_grammar_chars", len(text), what=f"{field} characters")
    return value


def _response_format(value) -> tuple[str, dict | bool] | None:
    """OpenAI's response_format: {"type": "text"} (no constraint), {"type": "json_object"},
    or {"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}."""
    field = "response_format"
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise InvalidInputError(f"{field}: expected {{'type': 'text' | 'json_object' | 'json_schema', ...}}, "
                                f"got {_short(value)}", field=field)
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return f"{field}.type", {"type": "object"}
    if kind != "json_schema":
        raise InvalidInputError(f"{field}.type: expected 'text', 'json_object' or 'json_schema', got {kind!r}",
                                field=f"{field}.type")
    js = value.get("json_schema")
    if not isinstance(js, dict):
        raise InvalidInputError(f"{field}.json_schema: expected an object with 'name' and 'schema', got {_short(js)}",
                                field=f"{field}.json_schema")
    unknown = sorted(set(js) - {"name", "schema", "strict", "description"})
    if unknown:
        raise InvalidInputError(f"{field}.json_schema: unknown field(s) {', '.join(unknown)}",
                                field=f"{field}.json_schema.{unknown[0]}")
    name = js.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise InvalidInputError(f"{field}.json_schema.name: expected a name of 1 to 64 characters, got {_short(name)}",
                                field=f"{field}.json_schema.name")
    if "strict" in js and not isinstance(js["strict"], (bool, type(None))):
        raise InvalidInputError(f"{field}.json_schema.strict: expected true or false, got {_short(js['strict'])}",
                                field=f"{field}.json_schema.strict")
    # OpenAI: a json_schema without a schema is any JSON value's schema ({}).
    return f"{field}.json_schema.schema", _schema(f"{field}.json_schema.schema", js.get("schema", {}))


def _grammar(cfg) -> tuple[str, str] | None:
    """(field, llguidance grammar text) for the one structured-output option set, or None."""
    given = [name for name in OPTIONS if getattr(cfg, name, None) is not None]
    if len(given) > 1:
        raise InvalidInputError(f"{given[1]}: only one of {', '.join(OPTIONS)} may be set (also got {given[0]})",
                                field=given[1])
    if not given:
        return None
    field = given[0]
    value = getattr(cfg, field)
    if field in ("response_format", "guided_json"):
        rf = _response_format(value) if field == "response_format" else (field, _schema(field, value))
        if rf is None:
            return None
        field, schema = rf
        llg = _llguidance()
        try:
            return field, llg.LLMatcher.grammar_from_json_schema(schema, defaults=dict(_JSON_OPTIONS))
        except (ValueError, TypeError) as e:
            raise InvalidInputError(f"{field}: {e}", field=field) from e
    llg = _llguidance()
    if field == "guided_regex":
        return field, llg.LLMatcher.grammar_from_regex(_text(field, value))
    return field, llg.LLMatcher.grammar_from_lark(_text(field, value))


def constraint_factory(tokenizer, cfg, *, vocab_size: int, eos_token_ids) -> ConstraintFactory | None:
    """The factory for the structured output `cfg` (a GenerationConfig, or anything with its
    response_format / guided_json / guided_regex / guided_grammar attributes) asks for, or
    None when it asks for none. Checks everything first: a bad option, schema, regex or grammar
    is an InvalidInputError naming the field; a missing llguidance is a NotAvailableError."""
    found = _grammar(cfg)
    if found is None:
        return None
    field, grammar = found
    llg = _llguidance()
    ll_tok = grammar_tokenizer(tokenizer, vocab_size, eos_token_ids)
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, ll_tok)
    if is_error:
        raise InvalidInputError(f"{field}: {messages[0] if messages else 'invalid'}", field=field)
    factory = ConstraintFactory(ll_tok, grammar, field)
    factory()  # a grammar the validator passes may still fail to start (resource limits)
    return factory

