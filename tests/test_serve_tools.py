"""Tool calls: the parsers on crafted replies in each family's format (and on near misses, which
stay text), the format picked from real chat templates, and the chat route's tool_calls through
the openai client, streamed and whole, with an engine that replies with a scripted text."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, prometheus-client) is in the test extra")
openai = pytest.importorskip("openai", reason="the test extra installs the openai client")

from llmos.text import tool_calls as tools  # noqa: E402
from serve_server import BUNDLED, TIMEOUT, running_server  # noqa: E402

NAMES = {"get_weather", "search"}
WEATHER = {"city": "Bath", "unit": "celsius"}


def _calls(text, fmt):
    content, calls = tools.parse(text, fmt, NAMES)
    return content, [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("text,content,calls", [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bath", "unit": "celsius"}}\n</tool_call>',
     None, [("get_weather", WEATHER)]),
    ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bath", "unit": "celsius"}}\n'
     '</tool_call>\n<tool_call>\n{"name": "search", "arguments": {"q": "tea"}}\n</tool_call>',
     "Let me look.", [("get_weather", WEATHER), ("search", {"q": "tea"})]),
    # cut off by max_tokens before the closing tag: still a whole JSON object
    ('<tool_call>\n{"name": "search", "arguments": {"q": "tea"}}', None, [("search", {"q": "tea"})]),
])
def test_hermes(text, content, calls):
    assert _calls(text, "hermes") == (content, calls)


@pytest.mark.parametrize("text,content,calls", [
    ('{"name": "get_weather", "parameters": {"city": "Bath", "unit": "celsius"}}', None,
     [("get_weather", WEATHER)]),
    ('<|python_tag|>{"name": "search", "parameters": {"q": "tea"}}', None, [("search", {"q": "tea"})]),
    ('{"name": "search", "arguments": {"q": "a"}}; {"name": "search", "parameters": {"q": "b"}}', None,
     [("search", {"q": "a"}), ("search", {"q": "b"})]),
])
def test_llama3_json(text, content, calls):
    assert _calls(text, "llama3_json") == (content, calls)


@pytest.mark.parametrize("text,content,calls", [
    ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Bath", "unit": "celsius"}}]', None,
     [("get_weather", WEATHER)]),
    # [TOOL_CALLS] is a special token the detokenizer drops: the bare list parses the same
    ('[{"name": "search", "arguments": {"q": "a"}}, {"name": "search", "arguments": {"q": "b"}}]', None,
     [("search", {"q": "a"}), ("search", {"q": "b"})]),
    ('[TOOL_CALLS]get_weather[ARGS]{"city": "Bath", "unit": "celsius"}', None, [("get_weather", WEATHER)]),
    ('[TOOL_CALLS]search[ARGS]{"q": "a"}[TOOL_CALLS]search[ARGS]{"q": "b"}', None,
     [("search", {"q": "a"}), ("search", {"q": "b"})]),
])
def test_mistral(text, content, calls):
    assert _calls(text, "mistral") == (content, calls)


@pytest.mark.parametrize("fmt,text", [
    ("hermes", "I would call a tool but I will not."),
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'),  # broken JSON
    ("hermes", '<tool_call>{"name": "launch_missiles", "arguments": {}}</tool_call>'),  # not declared
    ("llama3_json", '{"name": "search", "parameters": {"q": "a"}} and then some words'),
    ("llama3_json", '{"answer": 42}'),
    ("llama3_json", '{"name": "search", "parameters": "not an object"}'),
    ("mistral", "[1, 2, 3]"),
    ("mistral", '[TOOL_CALLS]unknown[ARGS]{"q": 1}'),
    ("mistral", "Plain words."),
])
def test_near_misses_stay_text(fmt, text):
    assert tools.parse(text, fmt, NAMES) == (text, [])


def test_the_format_comes_from_the_template():
    assert tools.format_for("{% for t in tools %}<tool_call>{{ t }}</tool_call>{% endfor %}") == "hermes"
    assert tools.format_for("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}") == "mistral"
    assert tools.format_for('<|start_header_id|>ipython<|end_header_id|><|python_tag|>"parameters"<|eot_id|>') \
        == "llama3_json"
    assert tools.format_for(None) == "hermes"


class _Scripted:
    """An engine whose every sequence replies `reply`, as pieces of a few characters."""

    def __init__(self, model, *, reply: str, **_options):
        self.model, self.reply, self.submitted = model, reply, []

    def submit(self, prompt, generation_config=None, **options):
        self.submitted.append(list(prompt))
        return _ScriptedRequest(list(prompt), self.model.tokenizer.encode(self.reply, add_special_tokens=False),
                                self.reply)

    def stats(self):
        return {"running": 0, "waiting": 0}

    def close(self, drain_seconds=0.0):
        pass


class _ScriptedRequest:
    def __init__(self, prompt, ids, text):
        from llmos.runtime.generation import Generation

        self.prompt_token_ids, self.n = prompt, 1
        self.submit_time = self.first_token_time = time.monotonic()
        self._ids, self._text = ids, text
        self._result = Generation(text=text, token_ids=ids, finish_reason="eos", prompt_token_ids=prompt)

    async def __aiter__(self):
        from types import SimpleNamespace

        cuts = list(range(0, len(self._text), 7)) + [len(self._text)]
        for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
            last = b == len(self._text)
            yield SimpleNamespace(index=0, text=self._text[a:b], token_ids=self._ids if last else [], logprobs=None,
                                  top_logprobs=None, finish_reason="eos" if last else None)
            await asyncio.sleep(0)

    async def aresult(self):
        return self._result

    def cancel(self):
        pass


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
REPLY = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bath"}}\n</tool_call>'


@pytest.fixture(scope="module")
def scripted():
    import functools

    with running_server(engine_factory=functools.partial(_Scripted, reply=REPLY)) as (base, app):
        yield openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT), app


def test_chat_returns_tool_calls(scripted):
    client, _ = scripted
    out = client.chat.completions.create(model=BUNDLED, messages=[{"role": "user", "content": "Weather?"}],
                                         tools=TOOLS)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Bath"}


def test_streamed_tool_calls(scripted):
    client, _ = scripted
    chunks = list(client.chat.completions.create(model=BUNDLED, messages=[{"role": "user", "content": "Weather?"}],
                                                 tools=TOOLS, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert [(tc.index, tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == \
        [(0, "get_weather", {"city": "Bath"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_keeps_the_text(scripted):
    client, _ = scripted
    out = client.chat.completions.create(model=BUNDLED, messages=[{"role": "user", "content": "Weather?"}],
                                         tools=TOOLS, tool_choice="none")
    assert out.choices[0].message.content == REPLY and not out.choices[0].message.tool_calls


def test_a_tool_conversation_renders(scripted):
    """The assistant's earlier call (arguments as a JSON string) and the tool's answer reach the template."""
    client, app = scripted
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Bath"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Rain, 12 C"}]
    client.chat.completions.create(model=BUNDLED, messages=messages, tools=TOOLS)
    engine = app.state.pool.engines()[BUNDLED]
    model = app.state.pool._served[BUNDLED].model
    assert "Rain, 12 C" in model.tokenizer.decode(engine.submitted[-1])
