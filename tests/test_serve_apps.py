"""The app routes over HTTP (GET /v1/apps, POST /v1/apps/NAME as JSON and as server-sent events,
the page and its files) on a stand-in app (tests/fake_app.py) whose replies are known words:
errors in the OpenAI shape naming the field, API keys, admission, a disconnect cancelling the
call, metrics, the router embedded in a plain FastAPI app, and a model shared by the apps and
the model routes. Every wait is bounded."""

from __future__ import annotations

import json
import re

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, prometheus-client) is in the test extra")

from fake_app import FakeApp  # noqa: E402
from serve_server import BUNDLED, TIMEOUT, api_error, running_server, wait_for  # noqa: E402

WRITER = {"inputs": {"topic": "ships", "words": 5}}


@pytest.fixture(scope="module")
def apps():
    return {"writer": FakeApp(delay=0.01), "bot": FakeApp(name="bot", kind="chat", description="Chats", delay=0.01,
                                                          specs=[])}


@pytest.fixture(scope="module")
def server(apps):
    with running_server(apps=list(apps.values()), max_concurrency=4, max_queue=0) as (base, app):
        yield base, app


def _sse(response) -> list:
    """The data of each event, in order; the last is the string "[DONE]"."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_the_list_names_each_app_with_its_schema_inputs_and_page(server):
    data = httpx.get(server[0] + "/v1/apps", timeout=TIMEOUT).json()
    assert data["object"] == "list"
    by = {a["name"]: a for a in data["data"]}
    assert set(by) == {"writer", "bot"}
    w = by["writer"]
    assert (w["kind"], w["model"], w["page"], w["output"]) == ("generate", "fake-model", "/apps/writer", "text")
    assert w["input_schema"]["required"] == ["topic"]
    assert [(i["name"], i["type"]) for i in w["inputs"]] == [("topic", "text"), ("tone", "choice"),
                                                             ("words", "integer"), ("shout", "boolean")]
    assert w["inputs"][1]["choices"] == ["formal", "friendly"] and w["inputs"][2]["max"] == 40


def test_a_call_answers_the_result_as_json(server, apps):
    r = httpx.post(server[0] + "/v1/apps/writer", json={**WRITER, "params": {"temperature": 0.5}}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["text"] == "friendly-0 friendly-1 friendly-2 friendly-3 friendly-4"
    assert out["usage"] == {"prompt_tokens": 7, "completion_tokens": 5} and out["explain"] is None
    call = apps["writer"].calls[-1]
    assert call["tone"] == "friendly" and call["shout"] is False and call["params"] == {"temperature": 0.5}


def test_a_streamed_call_sends_each_event_and_ends_with_done(server):
    with httpx.stream("POST", server[0] + "/v1/apps/writer", json={**WRITER, "stream": True, "explain": True},
                      timeout=TIMEOUT) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r)
    assert events[-1] == "[DONE]"
    types = [e["type"] for e in events[:-1]]
    assert types == ["meta"] + ["text"] * 5 + ["done"]
    assert events[0]["data"]["citations"][0]["source"] == "docs/faq.md"
    done = events[-2]["data"]
    assert "".join(e["text"] for e in events[1:-2]) == done["text"]
    assert [t["text"] for t in done["explain"]["tokens"]] == [e["text"] for e in events[1:-2]]


def test_a_chat_call_takes_the_message_and_history(server, apps):
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "turn-1 you said hi"}]
    r = httpx.post(server[0] + "/v1/apps/bot", json={"message": "and again", "history": history}, timeout=TIMEOUT)
    assert r.json()["text"] == "turn-2 you said and again"
    assert apps["bot"].calls[-1]["history"] == history


@pytest.mark.parametrize("path,body,status,param,needles", [
    ("/v1/apps/nope", WRITER, 404, "name", ["nope", "writer", "bot"]),
    ("/v1/apps/writer", {"inputs": {"words": 5}}, 400, "inputs.topic", ["topic", "required"]),
    ("/v1/apps/writer", {"inputs": {"topic": "x", "words": 400}}, 400, "inputs.words", ["words", "400"]),
    ("/v1/apps/writer", {"inputs": {"topic": "x", "tone": "rude"}}, 400, "inputs.tone", ["tone", "rude"]),
    ("/v1/apps/writer", {**WRITER, "frobnicate": 1}, 400, "frobnicate", ["frobnicate"]),
    ("/v1/apps/writer", {**WRITER, "stream": "often"}, 400, "stream", ["often"]),
    ("/v1/apps/writer", {**WRITER, "message": "hi"}, 400, "message", ["message", "generate"]),
    ("/v1/apps/writer", {**WRITER, "params": {"temperature": 9}}, 400, "params.temperature", ["9"]),
    ("/v1/apps/bot", {"history": []}, 400, "message", ["message"]),
    ("/v1/apps/bot", {"message": "x", "history": [{"role": "wizard", "content": "x"}]}, 400, "history[0].role",
     ["wizard"]),
])
def test_bad_calls_are_errors_naming_the_field(server, path, body, status, param, needles):
    for stream in (False, True):  # a streamed call is refused the same way, before any event
        message = api_error(httpx.post(server[0] + path, json={**body, "stream": stream} if "stream" not in body
                                    else body, timeout=TIMEOUT), status, param)
        for needle in needles:
            assert needle in message, message


def test_malformed_json_is_400(server):
    r = httpx.post(server[0] + "/v1/apps/writer", content=b"{nope", headers={"content-type": "application/json"},
                   timeout=TIMEOUT)
    assert "not valid JSON" in api_error(r, 400, None)


def test_the_page_and_its_files_are_served_and_fetch_nothing_elsewhere(server):
    base = server[0]
    page = httpx.get(base + "/apps/writer", timeout=TIMEOUT)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(not re.match(r"(?!data:)[a-z]+:|//", ref) for ref in refs), refs  # this server only
    for ref in refs:
        if ref.startswith("_static/"):
            r = httpx.get(f"{base}/apps/{ref}", timeout=TIMEOUT)
            assert r.status_code == 200 and r.text, ref
            assert not re.search(r"https?://", r.text), f"{ref} names another server"
    api_error(httpx.get(base + "/apps/nope", timeout=TIMEOUT), 404, "name")
    api_error(httpx.get(base + "/apps/_static/..%2Fapps.py", timeout=TIMEOUT), 404, None)


def test_the_web_files_are_in_the_package():
    from llmos.serve.apps import WEB

    assert {p.name for p in WEB.iterdir()} >= {"index.html", "app.js", "app.css"}


def test_a_disconnect_cancels_the_call_and_frees_its_slot(apps):
    slow = FakeApp(name="slow", delay=0.2)
    with running_server(apps=[slow], max_concurrency=1, max_queue=0) as (base, app):
        body = {"inputs": {"topic": "x", "words": 40}, "stream": True}
        with httpx.Client(timeout=TIMEOUT) as client:
            with client.stream("POST", base + "/v1/apps/slow", json=body) as r:
                lines = r.iter_lines()
                assert next(line for line in lines if '"type":"text"' in line)
                busy = client.post(base + "/v1/apps/slow", json=body)
                assert api_error(busy, 429, None) and busy.headers["Retry-After"] == "1"
                lines.close()
        wait_for(lambda: slow.cancelled, timeout=10.0, what="the app call to be cancelled")
        wait_for(lambda: app.state.admission.in_flight == 0, timeout=10.0, what="the slot to be freed")
        r = httpx.post(base + "/v1/apps/slow", json={"inputs": {"topic": "x", "words": 2}}, timeout=TIMEOUT)
        assert r.status_code == 200


def test_a_client_that_leaves_a_json_call_cancels_it():
    slow = FakeApp(name="slow", delay=0.2)
    with running_server(apps=[slow]) as (base, app):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(base + "/v1/apps/slow", json={"inputs": {"topic": "x", "words": 40}}, timeout=1.0)
        wait_for(lambda: slow.cancelled, timeout=10.0, what="the app call to be cancelled")
        wait_for(lambda: app.state.admission.in_flight == 0, timeout=10.0, what="the slot to be freed")


def test_calls_are_counted_in_metrics(server):
    from prometheus_client.parser import text_string_to_metric_families

    def count():
        text = httpx.get(server[0] + "/metrics", timeout=TIMEOUT).text
        return {json.dumps(s.labels, sort_keys=True): s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "llmos_requests_total"}

    before = count()
    httpx.post(server[0] + "/v1/apps/writer", json=WRITER, timeout=TIMEOUT)
    httpx.post(server[0] + "/v1/apps/writer", json={"inputs": {}}, timeout=TIMEOUT)
    after = count()

    def delta(outcome):
        key = json.dumps({"model": "fake-model", "outcome": outcome, "route": "/v1/apps/{name}"}, sort_keys=True)
        return after.get(key, 0) - before.get(key, 0)

    assert delta("completed") == 1 and delta("invalid") == 1


def test_api_keys_guard_the_api_but_not_the_page():
    key = "k" * 24
    with running_server(apps=[FakeApp(delay=0.0)], api_keys=[key]) as (base, _):
        api_error(httpx.get(base + "/v1/apps", timeout=TIMEOUT), 401, None)
        api_error(httpx.post(base + "/v1/apps/writer", json=WRITER, timeout=TIMEOUT), 401, None)
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.post(base + "/v1/apps/writer", json=WRITER, headers=auth, timeout=TIMEOUT).status_code == 200
        for name in ("writer", "secret-app"):  # the page says nothing of which apps exist
            assert httpx.get(f"{base}/apps/{name}", timeout=TIMEOUT).status_code == 200
        assert httpx.get(base + "/apps/_static/app.js", timeout=TIMEOUT).status_code == 200


def test_the_router_embeds_in_a_plain_fastapi_app():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from llmos.serve.apps import router

    service = FastAPI()
    service.include_router(router([FakeApp(delay=0.0)]))
    with TestClient(service) as client:
        assert client.post("/v1/apps/writer", json=WRITER).json()["text"].startswith("friendly-0")
        api_error(client.post("/v1/apps/writer", json={"inputs": {"topic": 3}}), 400, "inputs.topic")
        api_error(client.post("/v1/apps/writer", json={"nope": 1}), 400, "nope")
        assert client.get("/apps/writer").status_code == 200
        from llmos import limits

        before = limits.current()
        limits.configure(serve_max_body_bytes=1000)
        try:  # no server Guard in front: the router keeps the body cap itself
            big = {"inputs": {"topic": "x" * 2000}}
            assert "serve_max_body_bytes" in api_error(client.post("/v1/apps/writer", json=big), 413, None)
        finally:
            limits.configure(serve_max_body_bytes=before.serve_max_body_bytes)


def test_two_apps_with_one_name_are_refused():
    from llmos.errors import InvalidInputError
    from llmos.serve.apps import router

    with pytest.raises(InvalidInputError, match="writer"):
        router([FakeApp(), FakeApp()])


def test_a_pinned_model_shares_the_servers_engine():
    from llmos.runtime.engine import Engine
    from llmos.serve.models import ModelPool

    pool = ModelPool([BUNDLED], engine_factory=Engine, load_options={"threads": 1}, idle_unload=0.01)
    try:
        model = pool.pin(BUNDLED)
        assert pool.pin(BUNDLED) is model  # one Model per name, however many apps name it
        assert model.engine is pool.engines()[BUNDLED]  # the apps' calls batch with the routes'
        assert model.generate("Hello", max_new_tokens=3, do_sample=False).text is not None
        import asyncio

        assert asyncio.run(pool.unload_idle()) == []  # apps hold it: never unloaded
    finally:
        pool.close()
    unlisted = ModelPool([], engine_factory=Engine, load_options={"threads": 1})
    try:
        unlisted.pin(BUNDLED)
        assert unlisted.names() == [] and BUNDLED in unlisted.engines()  # loaded, counted, not routable
    finally:
        unlisted.close()


# ---- real app files on the bundled model -------------------------------------------------------

WRITER_APP = """---
app: writer
kind: generate
description: Writes a line
params: {max_new_tokens: 12, temperature: 0.8, seed: 3}
inputs:
  topic: {type: text, description: What the line is about}
  tone: {type: choice, choices: [formal, friendly], default: friendly}
---
Write a {{ tone }} line about {{ topic }}.
"""

HELPER_APP = """---
app: helper
kind: chat
params: {max_new_tokens: 8}
tools: helper_tools.py
---
You help customers.
"""

HELPER_TOOLS = '''from pathlib import Path


def handoff(reason: str) -> str:
    """Hands the conversation to a person."""
    Path(__file__).with_name("handoff.log").write_text(reason)
    return "a person will answer"
'''

TOOL_CALL = r'<tool_call>\{"name": "handoff", "arguments": \{"reason": "angry"\}\}</tool_call>'


QUIZ_APP = """---
app: quiz
kind: generate
params: {max_new_tokens: 60}
output: {json: {type: object, properties: {q: {type: string, maxLength: 24}}, required: [q],
               additionalProperties: false}}
---
Ask one question.
"""


def _write_apps(folder):
    (folder / "writer.app.md").write_text(WRITER_APP)
    (folder / "helper.app.md").write_text(HELPER_APP)
    (folder / "helper_tools.py").write_text(HELPER_TOOLS)
    return [str(folder / "writer.app.md"), str(folder / "helper.app.md")]


class _ToolCallingEngine:
    """An engine whose first request is constrained to one call of `handoff` (the bundled model
    never writes one by itself), so that a served app meets a real tool call."""

    def __new__(cls, model, **options):
        from llmos.runtime.engine import Engine

        class Forcing(Engine):
            forced = False

            def submit(self, prompt, *args, **kw):
                if not Forcing.forced:
                    Forcing.forced = True
                    room = self._model.config.max_position_embeddings - len(prompt)
                    kw.update(guided_regex=TOOL_CALL, max_new_tokens=min(80, room))
                return super().submit(prompt, *args, **kw)

        return Forcing(model, **options)


def test_app_files_share_the_served_models_engine_and_stream_what_they_return(tmp_path):
    with running_server(apps=_write_apps(tmp_path)) as (base, app):
        listed = httpx.get(base + "/v1/apps", timeout=TIMEOUT).json()["data"]
        assert [(a["name"], a["kind"], a["model"]) for a in listed] == [("writer", "generate", BUNDLED),
                                                                        ("helper", "chat", BUNDLED)]
        writer, helper = app.state.apps
        served = app.state.pool.engines()[BUNDLED]
        assert writer.model is helper.model and writer.model.engine is served  # one Model, one engine
        body = {"inputs": {"topic": "the sea"}}
        whole = httpx.post(base + "/v1/apps/writer", json=body, timeout=TIMEOUT).json()
        assert whole["usage"]["completion_tokens"] > 0 and whole["text"]
        with httpx.stream("POST", base + "/v1/apps/writer", json={**body, "stream": True}, timeout=TIMEOUT) as r:
            events = _sse(r)
        assert events[-1] == "[DONE]" and events[0]["type"] == "meta"
        assert "".join(e["text"] for e in events if isinstance(e, dict) and e["type"] == "text") == whole["text"]
        assert events[-2]["data"]["text"] == whole["text"]  # same seed: the same reply
        model_reply = httpx.post(base + "/v1/chat/completions", timeout=TIMEOUT, json={
            "model": BUNDLED, "messages": [{"role": "user", "content": "Write a friendly line about the sea."}],
            "max_tokens": 12, "temperature": 0.8, "seed": 3}).json()
        assert model_reply["choices"][0]["message"]["content"] == whole["text"]  # the app's prompt is that chat
        api_error(httpx.post(base + "/v1/apps/writer", json={"inputs": {"topic": "x", "tone": "rude"}}, timeout=TIMEOUT),
               400, "inputs.tone")


def test_a_json_app_lists_its_schema_and_answers_the_parsed_value(tmp_path):
    pytest.importorskip("llguidance", reason="json output is constrained decoding (the structured extra)")
    (tmp_path / "quiz.app.md").write_text(QUIZ_APP)
    with running_server(apps=[str(tmp_path / "quiz.app.md")]) as (base, _):
        (entry,) = httpx.get(base + "/v1/apps", timeout=TIMEOUT).json()["data"]
        assert entry["output"] == "json" and entry["output_schema"]["required"] == ["q"]
        out = httpx.post(base + "/v1/apps/quiz", json={}, timeout=TIMEOUT).json()
    assert out["output_error"] is None, out
    assert set(out["output"]) == {"q"} and json.loads(out["text"]) == out["output"]


@pytest.mark.parametrize("allow", [False, True])
def test_tools_run_only_when_the_server_allows_them(tmp_path, allow):
    pytest.importorskip("llguidance", reason="the structured extra forces the tool call in this test")
    paths = _write_apps(tmp_path)
    with running_server(apps=paths, allow_tools=allow, engine_factory=_ToolCallingEngine) as (base, app):
        with httpx.stream("POST", base + "/v1/apps/helper", json={"message": "I want a person", "stream": True},
                          timeout=TIMEOUT) as r:
            events = _sse(r)
    # The tool event, as it happened; what the model says after it does not matter here (on a
    # 256-token model the second round may not fit, and ends the stream with that error).
    calls = [e["data"] for e in events if isinstance(e, dict) and e.get("type") == "tool"]
    assert [c["name"] for c in calls] == ["handoff"], events
    call = calls[0]
    assert call["arguments"] == {"reason": "angry"}
    if allow:
        assert call["result"] == "a person will answer"
        assert (tmp_path / "handoff.log").read_text() == "angry"
    else:
        assert "--allow-tools" in call["error"] and "result" not in call
        assert not (tmp_path / "handoff.log").exists(), "a refused tool must not run"


def test_llmos_serve_with_app_files_as_a_user_runs_it(tmp_path):
    from serve_server import serve_process

    writer, helper = _write_apps(tmp_path)
    with serve_process(BUNDLED, "--app", writer, "--app", helper, "--allow-tools") as (_, base):
        assert [a["name"] for a in httpx.get(base + "/v1/apps", timeout=TIMEOUT).json()["data"]] == ["writer", "helper"]
        assert "_static/app.js" in httpx.get(base + "/apps/helper", timeout=TIMEOUT).text
        with httpx.stream("POST", base + "/v1/apps/writer", json={"inputs": {"topic": "rain"}, "stream": True},
                          timeout=TIMEOUT) as r:
            events = _sse(r)
        assert events[-1] == "[DONE]" and events[-2]["type"] == "done" and events[-2]["data"]["text"]


def test_llmos_serve_refuses_a_bad_app_file_naming_its_line(tmp_path):
    import subprocess
    import sys

    from child_env import child_env

    bad = tmp_path / "bad.app.md"
    bad.write_text("---\napp: bad\nkind: chatty\n---\nHi\n")
    p = subprocess.run([sys.executable, "-m", "llmos", "serve", BUNDLED, "--app", str(bad), "--port", "0"],
                       env=child_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode != 0
    assert f"{bad}:3" in p.stderr and "kind" in p.stderr, p.stderr


# ---- the templates, served ---------------------------------------------------------------------

TEMPLATE_CALLS = {
    "support-bot": {"message": "How do I get a refund for my order?"},
    "writer": {"inputs": {"topic": "a harbour at dawn", "length": 30}},
    "coder": {"inputs": {"task": "reverse a string"}},
    "tutor": {"inputs": {"topic": "volcanoes"}},
    "translator": {"inputs": {"text": "Where is the station?", "source": "English", "target": "Italian"}},
    "doc-qa": {"inputs": {"question": "Which file formats can I add to the folder?"}},
}


def test_every_template_is_served_and_answers(tmp_path):
    pytest.importorskip("bm25s", reason="the 'apps' extra (bm25s) is not installed")
    pytest.importorskip("llguidance", reason="the tutor's JSON output needs the 'structured' extra")
    from long_context import long_context_model, use_model

    from llmos.apps.templates import TEMPLATES, new_app

    assert set(TEMPLATE_CALLS) == set(TEMPLATES)
    model = long_context_model(tmp_path / "model")
    paths = []
    for t in TEMPLATES:
        paths.append(new_app(t, t, tmp_path / "apps"))
        use_model(paths[-1], model)
    with running_server(models=[model], apps=[str(p) for p in paths]) as (base, app):
        listed = {a["name"]: a for a in httpx.get(base + "/v1/apps", timeout=TIMEOUT).json()["data"]}
        assert set(listed) == set(TEMPLATES)
        assert (listed["coder"]["output"], listed["tutor"]["output"]) == ("code:python", "json")
        assert len({id(a.model) for a in app.state.apps}) == 1  # six apps, one model, one engine
        results = {}
        for name, body in TEMPLATE_CALLS.items():
            r = httpx.post(f"{base}/v1/apps/{name}", json={**body, "params": {"do_sample": False}}, timeout=120)
            assert r.status_code == 200, (name, r.text)
            results[name] = r.json()
    for name, out in results.items():
        assert out["text"].strip() and out["usage"]["completion_tokens"] > 0, name
    assert results["support-bot"]["citations"][0]["source"] == "support-bot_docs/refunds.md"
    assert results["doc-qa"]["citations"][0]["source"] == "doc-qa_docs/adding-documents.md"
    assert results["tutor"]["output_error"] is None and results["tutor"]["output"]["questions"]
    assert isinstance(results["coder"]["output"], str) and results["coder"]["output"] in results["coder"]["text"]


def test_the_readme_three_lines_embed_a_real_app(tmp_path):
    (tmp_path / "writer.app.md").write_text(WRITER_APP)
    from fastapi.testclient import TestClient

    from fastapi import FastAPI
    from llmos import App
    from llmos.serve.apps import router
    service = FastAPI()
    service.include_router(router([App.load(tmp_path / "writer.app.md")]))

    with TestClient(service) as client:
        out = client.post("/v1/apps/writer", json={"inputs": {"topic": "tea"}}).json()
        assert out["text"] and out["usage"]["completion_tokens"] > 0
