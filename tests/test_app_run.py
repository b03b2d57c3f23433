"""Apps run on the bundled model: inputs rendered into the prompt (seen through explain), JSON
output valid against the app's schema (constrained decoding), a code block extracted, memory
trimmed to `memory` turns and to the context, retrieval plumbed into the prompt and citations,
and the tool loop — with replies scripted where the tiny model cannot be made to write them
(a tool call, Python that does not parse)."""

from __future__ import annotations

import json
import logging
import textwrap

import pytest

from llmos import limits
from llmos.apps import App, AppEvent, AppResult
from llmos.apps import output as outputs
from llmos.apps.tools import DISABLED
from llmos.errors import InvalidInputError
from llmos.runtime.default_model import load_default


@pytest.fixture(scope="module")
def model():
    return load_default()


def make(tmp_path, text, model, name="a.app.md", **kw) -> App:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return App.load(p, model=model, **kw)


def scripted_model(model):
    """The bundled model's tokenizer and chat template with a wide context: for replies that are
    scripted (never generated), so that tool declarations fit whatever the bundled model's context."""
    from functools import partial
    from types import SimpleNamespace

    wide = SimpleNamespace(tokenizer=model.tokenizer, apply_chat_template=model.apply_chat_template,
                           generation_config=model.generation_config, backend=model.backend,
                           config=SimpleNamespace(max_position_embeddings=4096))
    wide.fit_chat = partial(type(model).fit_chat, wide)  # the real fitting, against the wide context
    return wide


def script(app: App, replies: list[str]) -> list[list[int]]:
    """Makes the app's model "reply" each of `replies` in turn; returns the prompts it was given."""
    prompts: list[list[int]] = []
    replies = list(replies)

    def generate(model, ids, options, cancel):
        prompts.append(list(ids))
        text = replies.pop(0)
        toks = model.tokenizer.encode(text, add_special_tokens=False)
        yield {"text": text, "tokens": toks, "logprobs": None, "top": None, "finish": "eos"}

    app._generate = generate
    return prompts


WRITER = """\
---
app: writer
kind: generate
params: {max_new_tokens: 8}
inputs:
  topic: {}
  tone: {type: choice, choices: [formal, friendly], default: friendly}
---
Write a {{ tone }} note about {{ topic }}.
"""


def test_inputs_are_rendered_into_the_prompt(tmp_path, model):
    app = make(tmp_path, WRITER, model)
    r = app.run(topic="lighthouses", tone="formal", explain=True)
    assert isinstance(r, AppResult)
    # generate: the body is the user message, there is no system prompt
    assert r.explain["prompt"] == model.apply_chat_template(
        [{"role": "user", "content": "Write a formal note about lighthouses."}])
    assert r.explain["prompt_tokens"] == r.usage["prompt_tokens"] == len(
        model.apply_chat_template([{"role": "user", "content": "Write a formal note about lighthouses."}],
                                  tokenize=True))
    assert 1 <= r.usage["completion_tokens"] <= 8 and r.finish_reason in ("stop", "length")
    toks = r.explain["tokens"]
    assert len(toks) == r.usage["completion_tokens"]
    assert all(t["logprob"] <= 0 and 1 <= len(t["top"]) <= 5 for t in toks)
    # the sampled token is among the alternatives and no alternative beats the best one listed
    assert all(t["top"][0]["logprob"] >= t["logprob"] - 1e-5 for t in toks)
    assert model.tokenizer.decode([t["id"] for t in toks]) == r.text
    assert r.timings["ttft_s"] > 0 and r.timings["total_s"] >= r.timings["ttft_s"]
    json.dumps(r.to_dict())  # JSON-safe


def test_optional_input_left_out_renders_as_nothing(tmp_path, model):
    app = make(tmp_path, WRITER.replace("  topic: {}", "  topic: {}\n  extra: {required: false}")
               .replace("about {{ topic }}.", "about {{ topic }}.{{ extra }}"), model)
    r = app.run(topic="owls", explain=True)
    assert "about owls.<|im_end|>" in r.explain["prompt"]


def test_stream_events_match_run(tmp_path, model):
    app = make(tmp_path, WRITER, model)
    events = list(app.stream(topic="rain", params={"seed": 3}))
    assert all(isinstance(e, AppEvent) for e in events)
    assert events[0].type == "meta" and events[-1].type == "done"
    assert {e.type for e in events[1:-1]} <= {"text"}
    streamed = "".join(e.text for e in events if e.type == "text")
    assert events[-1].data["text"] == streamed
    assert app.run(topic="rain", params={"seed": 3}).text == streamed  # same seed, same reply


def test_chat_system_prompt_inputs_and_message(tmp_path, model):
    app = make(tmp_path, """\
        ---
        app: bot
        kind: chat
        params: {max_new_tokens: 4}
        inputs:
          company: {default: Acme}
        ---
        You answer for {{ company }}.
        """, model)
    r = app.chat("Where is my parcel?", company="Globex", explain=True)
    assert r.explain["prompt"] == model.apply_chat_template([
        {"role": "system", "content": "You answer for Globex."},
        {"role": "user", "content": "Where is my parcel?"}])
    with pytest.raises(InvalidInputError, match="needs a message") as e:
        app.run()
    assert e.value.field == "message"


def test_memory_keeps_the_last_turns(tmp_path, model):
    app = make(tmp_path, "---\napp: bot\nkind: chat\nmemory: 2\nparams: {max_new_tokens: 2}\n---\nBe brief.\n", model)
    history = []
    for i in range(4):
        history += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    r = app.chat("question 4", history=history, explain=True)
    assert r.explain["prompt"] == model.apply_chat_template(
        [{"role": "system", "content": "Be brief."}] + history[4:] + [{"role": "user", "content": "question 4"}])
    none = make(tmp_path, "---\napp: bot\nkind: chat\nmemory: 0\nparams: {max_new_tokens: 2}\n---\n", model, "b.app.md")
    r = none.chat("hi", history=history, explain=True)
    assert "question 3" not in r.explain["prompt"]


def test_memory_is_trimmed_to_the_context(tmp_path, model):
    app = make(tmp_path, "---\napp: bot\nkind: chat\nmemory: 1000\nparams: {max_new_tokens: 16}\n---\nBe brief.\n",
               model)
    ctx = model.config.max_position_embeddings
    long = " ".join(["word"] * 60)
    history = []
    for i in range(ctx // 40):
        history += [{"role": "user", "content": f"q{i} {long}"}, {"role": "assistant", "content": f"a{i} {long}"}]
    r = app.chat("the last question", history=history, explain=True)
    assert r.usage["prompt_tokens"] + 16 <= ctx
    p = r.explain["prompt"]
    assert p.startswith(model.apply_chat_template([{"role": "system", "content": "Be brief."}],
                                                  add_generation_prompt=False))
    assert "the last question" in p and "q0 " not in p  # oldest turns went first
    assert f"q{len(history) // 2 - 1} " in p  # the newest turn of the history still fits


def test_json_output_is_valid_against_its_schema(tmp_path, model):
    jsonschema = pytest.importorskip("jsonschema", reason="the test extra installs jsonschema")
    pytest.importorskip("llguidance", reason="json output needs the structured extra (in the test extra)")
    schema = {"type": "object", "properties": {
        "answer": {"type": "string", "maxLength": 24},
        "level": {"enum": ["easy", "hard"]},
        "ok": {"type": "boolean"}}, "required": ["answer", "level", "ok"], "additionalProperties": False}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    app = make(tmp_path, """\
        ---
        app: quiz
        kind: generate
        params: {max_new_tokens: 60}
        output: json:schema.json
        inputs:
          topic: {}
        ---
        One question about {{ topic }}.
        """, model)
    for seed in range(3):
        r = app.run(topic="the sea", params={"seed": seed})
        assert r.finish_reason == "stop", r
        assert r.output_error is None
        jsonschema.validate(r.output, schema)
        assert r.output == json.loads(r.text)


def test_code_block_is_extracted(tmp_path, model):
    pytest.importorskip("llguidance", reason="code output's guided_regex needs the structured extra")
    app = make(tmp_path, """\
        ---
        app: coder
        kind: generate
        params: {max_new_tokens: 24}
        output: code:python
        inputs:
          task: {type: text}
        ---
        Python code that {{ task }}.
        """, model)
    r = app.run(task="adds two numbers", params={"seed": 1})
    assert r.text.startswith("```python\n"), r.text
    body = r.text[len("```python\n"):]
    if r.finish_reason == "length":  # the budget ran out inside the block: said so, the code kept
        assert r.output == body and "not closed" in r.output_error
    else:
        assert r.text.endswith("\n```") and r.output == body[:-len("\n```")]


def test_python_that_does_not_parse_is_reported_not_raised(tmp_path, model):
    app = make(tmp_path, "---\napp: coder\nkind: generate\noutput: code:python\ninputs:\n  task: {}\n---\n{{ task }}\n",
               model)
    script(app, ["```python\ndef add(a, b)\n    return a + b\n```"])
    r = app.run(task="add")
    assert r.output == "def add(a, b)\n    return a + b"
    assert r.output_error == "code does not parse: line 1: expected ':'"
    script(app, ["```python\ndef add(a, b):\n    return a + b\n```"])
    r = app.run(task="add")
    assert r.output_error is None and r.output == "def add(a, b):\n    return a + b"


@pytest.mark.parametrize("reply, output, error", [
    ("```js\nlet a = 1;\n```", "let a = 1;", None),
    ("```python\nx = (\n", "x = (\n", "the code block is not closed"),
    ("print(1)", "print(1)", None),
])
def test_code_extraction_fixtures(reply, output, error):
    from llmos.apps.spec import OutputSpec

    value, err = outputs.extract(reply, OutputSpec("code", lang="js"), "length")
    assert value == output and (err == error or err.startswith(error))


def test_retrieved_chunks_reach_the_prompt_and_citations(tmp_path, model):
    pytest.importorskip("bm25s", reason="knowledge needs the apps extra (bm25s)")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "returns.md").write_text("# Returns\n\nParcels can be returned within 30 days for a refund.\n")
    (docs / "hours.md").write_text("# Hours\n\nThe shop opens at nine and closes at five.\n")
    app = make(tmp_path, "---\napp: bot\nkind: chat\nknowledge: docs/\nretrieve: 1\nparams: {max_new_tokens: 2}\n"
                         "---\nAnswer from the passages.\n", model)
    r = app.chat("How many days do I have to return a parcel?", explain=True)
    assert [c["source"] for c in r.citations] == ["docs/returns.md"]
    assert r.citations[0]["id"] == 1 and r.citations[0]["lines"][0] >= 1 and r.citations[0]["score"] > 0
    assert "[1] (docs/returns.md)" in r.explain["prompt"] and "30 days" in r.explain["prompt"]
    assert "nine" not in r.explain["prompt"]


def test_body_that_uses_chunks_is_not_appended_to(tmp_path, model):
    class FakeIndex:
        def search(self, query, k=3):
            from types import SimpleNamespace
            return [SimpleNamespace(source="faq.md", lines=(1, 2), text=f"about {query}", score=1.0)][:k]

    (tmp_path / "faq.md").write_text("x")
    app = make(tmp_path, "---\napp: qa\nkind: qa\nknowledge: faq.md\nparams: {max_new_tokens: 2}\ninputs:\n"
                         "  question: {}\n---\n{% for c in chunks %}<{{ c.id }}:{{ c.text }}>{% endfor %}\n", model)
    app._index = FakeIndex()
    r = app.run(question="tea", explain=True)
    assert r.explain["prompt"] == model.apply_chat_template([
        {"role": "system", "content": "<1:about tea>"}, {"role": "user", "content": "tea"}])
    assert r.citations == [{"id": 1, "source": "faq.md", "lines": [1, 2], "text": "about tea", "score": 1.0}]


TOOLS = '''\
CALLS = []


def add(a: int, b: int) -> int:
    """Adds two numbers.

    Args:
        a: the first number
        b: the second number
    """
    CALLS.append((a, b))
    return a + b
'''

TOOL_APP = "---\napp: calc\nkind: chat\ntools: calc_tools.py\nparams: {max_new_tokens: 8}\n---\nYou add numbers.\n"
CALL = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'


def test_tool_loop_runs_the_call_and_feeds_the_result_back(tmp_path, model, caplog):
    (tmp_path / "calc_tools.py").write_text(TOOLS)
    app = make(tmp_path, TOOL_APP, scripted_model(model))
    prompts = script(app, [CALL, "The sum is 5."])
    with caplog.at_level(logging.INFO, logger="llmos.apps.tools"):
        events = list(app.stream(message="What is 2 + 3?"))
    done = events[-1].data
    assert done["text"] == "The sum is 5." and done["finish_reason"] == "stop"
    assert done["tool_calls"] == [{"name": "add", "arguments": {"a": 2, "b": 3}, "result": "5"}]
    assert [e.type for e in events] == ["meta", "tool", "text", "done"]  # the tool-call reply is not shown
    # the tools were described to the model, and the result went back to it
    first = model.tokenizer.decode(prompts[0], skip_special_tokens=False)
    assert '"name": "add"' in first and '"a": {"type": "integer", "description": "the first number"}' in first
    second = model.tokenizer.decode(prompts[1], skip_special_tokens=False)
    assert CALL in second and "<|im_start|>tool\n5<|im_end|>" in second
    assert any("app calc: tool add(" in r.getMessage() and "ok: 5" in r.getMessage() for r in caplog.records)


def test_tool_rounds_are_bounded(tmp_path, model):
    (tmp_path / "calc_tools.py").write_text(TOOLS)
    app = make(tmp_path, TOOL_APP, scripted_model(model))
    n = limits.current().max_tool_rounds
    script(app, [CALL] * (n + 1))
    r = app.chat("loop forever")
    assert len(r.tool_calls) == n and r.finish_reason == "tool_rounds" and r.text == ""


def test_tools_disabled_refuse_and_log_without_importing(tmp_path, model, caplog):
    (tmp_path / "calc_tools.py").write_text("raise SystemExit('imported!')\n" + TOOLS)
    app = make(tmp_path, TOOL_APP, scripted_model(model), allow_tools=False)
    script(app, [CALL, "I cannot add."])
    with caplog.at_level(logging.INFO, logger="llmos.apps.tools"):
        r = app.chat("What is 2 + 3?")
    assert r.tool_calls == [{"name": "add", "arguments": {"a": 2, "b": 3}, "error": DISABLED}]
    assert DISABLED == "tools are disabled (start the server with --allow-tools)"
    assert r.text == "I cannot add."
    assert any("refused" in m.getMessage() and "add" in m.getMessage() for m in caplog.records)
    assert app._tools._functions is None  # the module never ran


def test_tool_errors_go_back_to_the_model(tmp_path, model):
    (tmp_path / "calc_tools.py").write_text(TOOLS + "\n\ndef boom() -> str:\n    raise ValueError('no')\n")
    app = make(tmp_path, TOOL_APP, scripted_model(model))
    script(app, ['<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
                 '<tool_call>{"name": "boom", "arguments": {}}</tool_call>', "ok"])
    r = app.chat("x")
    assert r.tool_calls[0]["error"].startswith("bad arguments: missing a required argument: 'b'")
    assert r.tool_calls[1]["error"] == "ValueError: no"


def test_non_chat_app_refuses_a_message(tmp_path, model):
    app = make(tmp_path, WRITER, model)
    with pytest.raises(InvalidInputError, match="message is for chat apps") as e:
        app.run(topic="x", message="hello")
    assert e.value.field == "message"


def test_bad_history_is_refused(tmp_path, model):
    app = make(tmp_path, "---\napp: bot\nkind: chat\n---\n", model)
    with pytest.raises(InvalidInputError, match=r"history\[0\]") as e:
        app.chat("hi", history=[{"role": "system", "content": "x"}])
    assert e.value.field == "history"


def test_structured_params_are_the_outputs(tmp_path, model):
    app = make(tmp_path, WRITER, model)
    with pytest.raises(InvalidInputError, match="guided_regex is set by the app's output"):
        app.run(topic="x", params={"guided_regex": "a"})


def test_llmos_app_export(tmp_path):
    import llmos

    assert llmos.App is App


def test_cancel_stops_the_request(tmp_path, model):
    from llmos.errors import CancelledError
    from llmos.runtime.model import CancelToken

    app = make(tmp_path, WRITER.replace("max_new_tokens: 8", "max_new_tokens: 200"), model)
    token = CancelToken()
    events = app.stream(topic="x", cancel=token)
    assert next(events).type == "meta"
    token.cancel()
    with pytest.raises(CancelledError):
        for _ in events:
            pass
