"""`llmos serve` through the official `openai` client and plain HTTP, against the bundled model on
loopback: completions, chat, streaming (the same text as without streaming, for the same seed),
echo logprobs (the logits' log_softmax), tokenize, /metrics, API keys, 429, 400 shapes, the body
cap, the bind refusal, and a disconnect freeing its slot. Every wait is bounded."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, prometheus-client) is in the test extra")
openai = pytest.importorskip("openai", reason="the test extra installs the openai client")

from child_env import child_env  # noqa: E402
from llmos.paths import bundled_model_dir  # noqa: E402
from serve_server import BUNDLED, TIMEOUT, api_error, PacedEngine, running_server, wait_for  # noqa: E402

PROMPT = "It is a truth universally acknowledged"
CHAT = [{"role": "user", "content": "Tell me about the ball."}]
# The bundled model's context, read from its config so the over-the-context cases follow it.
CTX = json.loads((bundled_model_dir() / "config.json").read_text())["max_position_embeddings"]
NO_EOS = {"0": -100, "2": -100}  # the bundled model's end tokens: a request that runs to max_tokens


@pytest.fixture(scope="module")
def server():
    with running_server(max_concurrency=8, max_queue=8) as (base, app):
        yield base, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def model():
    import llmos

    return llmos.load(BUNDLED, threads=1)


def _streamed_completion(client, **kw):
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and not chunks[-1].choices, "include_usage: one last chunk with usage and no choices"
    return text, reasons, usage[0]


def test_models_lists_what_is_served(client):
    assert [m.id for m in client.models.list().data] == [BUNDLED]


def test_greedy_completion_is_what_generate_gives(client, model):
    out = client.completions.create(model=BUNDLED, prompt=PROMPT, max_tokens=12, temperature=0)
    ref = model.generate(PROMPT, max_new_tokens=12, do_sample=False)
    assert out.choices[0].text == ref.text
    assert out.choices[0].finish_reason == ("length" if ref.finish_reason == "length" else "stop")
    assert out.usage.prompt_tokens == len(model.tokenizer.encode(PROMPT))
    assert out.usage.completion_tokens == len(ref.token_ids)


@pytest.mark.parametrize("seed", [3, 11])
def test_streamed_completion_equals_the_whole_one_for_a_seed(client, model, seed):
    kw = dict(model=BUNDLED, prompt=PROMPT, max_tokens=20, temperature=0.9, seed=seed)
    whole = client.completions.create(**kw)
    text, reasons, usage = _streamed_completion(client, **kw)
    assert text == whole.choices[0].text
    assert reasons == [whole.choices[0].finish_reason]
    assert usage.model_dump() == whole.usage.model_dump()
    ref = model.generate(PROMPT, max_new_tokens=20, do_sample=True, temperature=0.9, seed=seed)
    assert whole.choices[0].text == ref.text and usage.completion_tokens == len(ref.token_ids)


def test_streamed_chat_equals_the_whole_reply(client, model):
    kw = dict(model=BUNDLED, messages=CHAT, max_tokens=16, seed=5)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    ids = model.apply_chat_template(CHAT, tokenize=True)
    assert whole.usage.prompt_tokens == len(ids)
    ref = model.generate(ids, max_new_tokens=16, seed=5)
    assert whole.choices[0].message.content == ref.text and whole.usage.completion_tokens == len(ref.token_ids)


def test_n_choices_and_token_prompts(client, model):
    ids = model.tokenizer.encode(PROMPT)
    out = client.completions.create(model=BUNDLED, prompt=[ids, ids[:3]], n=2, max_tokens=6, temperature=1.0, seed=7)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    refs = model.generate([ids, ids[:3]], max_new_tokens=6, do_sample=True, temperature=1.0, seed=7,
                          num_return_sequences=2)
    assert [c.text for c in out.choices] == [g.text for per in refs for g in per]
    assert out.usage.prompt_tokens == len(ids) + 3


def test_echo_logprobs_score_the_prompt_as_the_logits_do(client, model):
    """What lm-evaluation-harness's local-completions does: context + continuation, echo, logprobs=1,
    max_tokens=1; token_logprobs[ctxlen:-1] summed, greedy if each equals its row's best."""
    ids = model.tokenizer.encode(PROMPT + " that a single man")
    out = client.completions.create(model=BUNDLED, prompt=ids, echo=True, logprobs=1, max_tokens=1, temperature=0)
    lp = out.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1 and lp.token_logprobs[0] is None
    logits = model.logits(ids).astype(np.float64)
    ref = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)
    want = [ref[i - 1, ids[i]] for i in range(1, len(ids))]
    np.testing.assert_allclose(lp.token_logprobs[1:len(ids)], want, rtol=0, atol=1e-4)
    for i in range(1, len(ids)):
        top = lp.top_logprobs[i]
        assert max(top.values()) == pytest.approx(ref[i - 1].max(), abs=1e-4)
        greedy = lp.token_logprobs[i] == max(top.values())
        assert greedy == (int(np.argmax(ref[i - 1])) == ids[i])
    assert out.choices[0].text.startswith(model.tokenizer.decode(ids))
    assert lp.text_offset[:2] == [0, len(lp.tokens[0])]


def test_generated_logprobs_are_the_top_of_their_row(client):
    out = client.chat.completions.create(model=BUNDLED, messages=CHAT, max_tokens=5, temperature=0, logprobs=True,
                                         top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-5)  # greedy: the best


def test_tokenize_round_trip(server, model):
    base, _ = server
    text = "Mr. Darcy said: “Ça va?” 😀"
    ids = httpx.post(base + "/v1/tokenize", json={"model": BUNDLED, "prompt": text}, timeout=TIMEOUT).json()
    assert ids["tokens"] == model.tokenizer.encode(text) and ids["count"] == len(ids["tokens"])
    assert ids["max_model_len"] == model.config.max_position_embeddings
    back = httpx.post(base + "/v1/detokenize", json={"model": BUNDLED, "tokens": ids["tokens"]}, timeout=TIMEOUT)
    assert back.json()["prompt"] == text
    chat = httpx.post(base + "/v1/tokenize", json={"model": BUNDLED, "messages": CHAT}, timeout=TIMEOUT).json()
    assert chat["tokens"] == model.apply_chat_template(CHAT, tokenize=True)


@pytest.mark.parametrize("body,param,needles", [
    ({"model": "nope", "prompt": "a"}, "model", ["nope", BUNDLED]),
    ({"model": BUNDLED, "prompt": "a", "temperature": 2.5}, "temperature", ["2.5"]),
    ({"model": BUNDLED, "prompt": "a", "temperature": "hot"}, "temperature", ["hot"]),
    ({"model": BUNDLED, "prompt": "a", "max_tokens": 4 * CTX}, "max_tokens", [str(4 * CTX), str(CTX)]),
    ({"model": BUNDLED, "prompt": "a", "n": 0}, "n", ["0"]),
    ({"model": BUNDLED, "prompt": "a", "frobnicate": 1}, "frobnicate", ["frobnicate"]),
    ({"model": BUNDLED, "prompt": [5, 99999]}, "prompt", ["99999", "4096"]),
    ({"model": BUNDLED, "prompt": "a " * (CTX + 50)}, "prompt", [str(CTX)]),
    ({"model": BUNDLED, "prompt": "a", "logprobs": 21}, "logprobs", ["21"]),
    ({"model": BUNDLED, "prompt": "a", "logit_bias": {"x": 1}}, "logit_bias", ["'x'"]),
    ({"prompt": "a"}, "model", ["model"]),
])
def test_invalid_completion_fields_are_400_naming_the_field(server, body, param, needles):
    message = api_error(httpx.post(server[0] + "/v1/completions", json=body, timeout=TIMEOUT), 400, param)
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("body,param,needles", [
    ({"model": BUNDLED, "messages": []}, "messages", ["messages"]),
    ({"model": BUNDLED, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", ["wizard"]),
    ({"model": BUNDLED, "messages": CHAT, "max_completion_tokens": 2 * CTX}, "max_completion_tokens",
     [str(2 * CTX), str(CTX)]),
    ({"model": BUNDLED, "messages": CHAT, "tool_choice": "auto"}, "tool_choice", ["tools"]),
    ({"model": BUNDLED, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0].type", ["image_url"]),
])
def test_invalid_chat_fields_are_400_naming_the_field(server, body, param, needles):
    message = api_error(httpx.post(server[0] + "/v1/chat/completions", json=body, timeout=TIMEOUT), 400, param)
    for needle in needles:
        assert needle in message, message


def test_the_openai_client_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=BUNDLED, prompt="a", max_tokens=4 * CTX)
    assert e.value.body["param"] == "max_tokens" and e.value.body["code"] == "context_length_exceeded"


def test_unknown_routes_and_methods_answer_in_the_error_shape(server):
    api_error(httpx.get(server[0] + "/v1/engines", timeout=TIMEOUT), 404, None)
    api_error(httpx.get(server[0] + "/v1/completions", timeout=TIMEOUT), 405, None)
    text = httpx.get(server[0] + "/metrics", timeout=TIMEOUT).text
    assert "/v1/engines" not in text and 'route="other"' in text  # a stranger's paths never become labels


def test_malformed_json_is_400(server):
    r = httpx.post(server[0] + "/v1/completions", content=b"{not json", timeout=TIMEOUT,
                   headers={"content-type": "application/json"})
    api_error(r, 400, None)


def test_a_body_over_the_cap_is_413_before_it_is_parsed(server):
    from llmos import limits

    before = limits.current()
    limits.configure(serve_max_body_bytes=1000)
    try:
        body = json.dumps({"model": BUNDLED, "prompt": "x" * 2000})
        r = httpx.post(server[0] + "/v1/completions", content=body, timeout=TIMEOUT,
                       headers={"content-type": "application/json"})
        assert "serve_max_body_bytes" in api_error(r, 413, None)

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(4):
                yield b" " * 400

        r = httpx.post(server[0] + "/v1/completions", content=chunks(), timeout=TIMEOUT)
        api_error(r, 413, None)
    finally:
        limits.configure(serve_max_body_bytes=before.serve_max_body_bytes)


def test_metrics_parse_and_count_outcomes(server, client, model):
    from prometheus_client.parser import text_string_to_metric_families

    base, _ = server

    def scrape():
        text = httpx.get(base + "/metrics", timeout=TIMEOUT).text
        return {s.name + json.dumps(s.labels, sort_keys=True): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    before = scrape()
    client.completions.create(model=BUNDLED, prompt=PROMPT, max_tokens=4, temperature=0)
    httpx.post(base + "/v1/completions", json={"model": BUNDLED, "prompt": "a", "n": 0}, timeout=TIMEOUT)
    after = scrape()

    def delta(name, **labels):
        key = name + json.dumps(labels, sort_keys=True)
        return after.get(key, 0) - before.get(key, 0)

    assert delta("llmos_requests_total", model=BUNDLED, route="/v1/completions", outcome="completed") == 1
    assert delta("llmos_requests_total", model="unknown", route="/v1/completions", outcome="invalid") == 1
    assert delta("llmos_generation_tokens_total", model=BUNDLED) == 4
    assert delta("llmos_prompt_tokens_total", model=BUNDLED) == len(model.tokenizer.encode(PROMPT))
    assert delta("llmos_time_to_first_token_seconds_count", model=BUNDLED) == 1
    for gauge in ("llmos_requests_waiting", "llmos_kv_blocks_used", "llmos_kv_blocks_total",
                  "llmos_prefix_cache_hit_rate"):
        assert gauge + json.dumps({"model": BUNDLED}) in after, gauge


def test_api_keys_401_unless_the_key_matches():
    key = "k" * 20
    with running_server(api_keys=[key, "other-key-0123456789"]) as (base, _):
        assert httpx.get(base + "/health", timeout=TIMEOUT).status_code == 200  # probes need no key
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {key}"},
                        {"Authorization": f"Bearer {key}x"}):
            r = httpx.get(base + "/v1/models", headers=headers, timeout=TIMEOUT)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0, timeout=TIMEOUT)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model=BUNDLED, prompt="a", max_tokens=1)
        good = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT)
        assert good.completions.create(model=BUNDLED, prompt="a", max_tokens=2, temperature=0).choices
        assert httpx.get(base + "/metrics", timeout=TIMEOUT).status_code == 401


def _hold_a_stream(base):
    """A streaming request that is running (its first chunk read); close() disconnects it."""
    client = httpx.Client(timeout=TIMEOUT)
    cm = client.stream("POST", base + "/v1/completions",
                       json={"model": BUNDLED, "prompt": "Once", "max_tokens": 250, "temperature": 1.0, "seed": 1,
                             "stream": True, "logit_bias": NO_EOS})
    response = cm.__enter__()
    assert response.status_code == 200
    lines = response.iter_lines()
    assert next(line for line in lines if line.startswith("data:"))

    def close():  # holds `lines` too: a line iterator that is garbage-collected closes the response
        lines.close()
        cm.__exit__(None, None, None)
        client.close()

    return close


def test_beyond_concurrency_and_queue_is_429_with_retry_after():
    with running_server(max_concurrency=1, max_queue=0, engine_factory=PacedEngine.factory(0.05)) as (base, app):
        close = _hold_a_stream(base)
        try:
            r = httpx.post(base + "/v1/completions", json={"model": BUNDLED, "prompt": "a", "max_tokens": 2},
                           timeout=TIMEOUT)
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_exceeded"
            client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT)
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model=BUNDLED, messages=CHAT, max_tokens=2)
        finally:
            close()
        wait_for(lambda: app.state.admission.in_flight == 0, what="the held stream's slot")
        assert httpx.post(base + "/v1/completions", json={"model": BUNDLED, "prompt": "a", "max_tokens": 2},
                          timeout=TIMEOUT).status_code == 200


def _engine_idle(app):
    engines = app.state.pool.engines()
    return app.state.admission.in_flight == 0 and all(
        e.stats()["running"] == 0 and e.stats()["waiting"] == 0 for e in engines.values())


def _steps(app) -> int:
    return sum(e.stats()["steps"] for e in app.state.pool.engines().values())


def test_a_client_that_disconnects_frees_its_slot():
    """The engine stops the sequence: it runs far fewer decode steps than the 250 tokens asked for."""
    with running_server(max_concurrency=1, max_queue=0) as (base, app):
        close = _hold_a_stream(base)
        steps = _steps(app)
        close()
        wait_for(lambda: _engine_idle(app), timeout=5.0, what="the streaming request to be cancelled")
        assert _steps(app) - steps < 200
        # Not streaming: the client gives up (read timeout) while the reply is being generated.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(base + "/v1/completions", json={"model": BUNDLED, "prompt": "Once", "max_tokens": 250,
                                                       "temperature": 1.0, "seed": 2, "logit_bias": NO_EOS},
                       timeout=httpx.Timeout(
                TIMEOUT, read=0.05))
        wait_for(lambda: _engine_idle(app), timeout=5.0, what="the non-streaming request to be cancelled")
        assert _steps(app) - steps < 400
        text = httpx.get(base + "/metrics", timeout=TIMEOUT).text
        assert 'llmos_requests_total{model="default",outcome="cancelled",route="/v1/completions"} 2.0' in text


SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                          "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


def test_structured_output_is_passed_to_constrained_decoding(client):
    from llmos.serve.options import STRUCTURED_AVAILABLE

    if not STRUCTURED_AVAILABLE:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=BUNDLED, messages=CHAT, response_format={"type": "json_object"})
        assert e.value.body["param"] == "response_format"
        pytest.skip("NOT TESTED: constrained decoding (GenerationConfig.response_format / guided_*) is not in this "
                    "build; the server refuses them with a 400 naming the field")
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    for seed in range(3):
        out = client.chat.completions.create(model=BUNDLED, messages=CHAT, max_tokens=60, seed=seed,
                                             response_format=fmt)
        if out.choices[0].finish_reason != "length":
            value = json.loads(out.choices[0].message.content)
            assert set(value) == {"name", "age"} and 0 <= value["age"] <= 120 and len(value["name"]) <= 12
    out = client.completions.create(model=BUNDLED, prompt="The year was", max_tokens=8, seed=1,
                                    extra_body={"guided_regex": "1[0-9]{3}"})
    assert re.fullmatch("1[0-9]{3}", out.choices[0].text), out.choices[0].text
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=BUNDLED, messages=CHAT, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no such type"}}})
    assert e.value.body["param"].startswith("response_format"), e.value.body


def test_a_non_loopback_bind_without_keys_is_refused(tmp_path):
    from llmos.serve.run import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")
    out = subprocess.run([sys.executable, "-m", "llmos", "serve", BUNDLED, "--host", "0.0.0.0", "--port", "1"],
                         env=child_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 2 and "--api-keys" in out.stderr and "0.0.0.0" in out.stderr, out.stderr
    weak = tmp_path / "keys"
    weak.write_text("# keys\nshort\n")
    out = subprocess.run([sys.executable, "-m", "llmos", "serve", BUNDLED, "--api-keys", str(weak)],
                         env=child_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 2 and "16 characters" in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "llmos", "serve", BUNDLED, "--max-concurrency", "0"],
                         env=child_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 2 and "invalid positive int value: '0'" in out.stderr, out.stderr


def test_several_models_load_on_first_use_and_unload_when_idle(tmp_path):
    import shutil

    from llmos.runtime.default_model import default_model_path

    other = str(shutil.copytree(default_model_path(), tmp_path / "second", ignore=shutil.ignore_patterns("*.py")))
    with running_server(models=(BUNDLED, other), idle_unload=0.3) as (base, app):
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT)
        assert [m.id for m in client.models.list().data] == [BUNDLED, other]
        assert app.state.pool.engines() == {}  # nothing loaded before it is asked for
        client.completions.create(model=BUNDLED, prompt="a", max_tokens=2, temperature=0)
        assert set(app.state.pool.engines()) == {BUNDLED}
        out = client.completions.create(model=other, prompt=[1, 2, 3], max_tokens=3, temperature=0)
        assert out.model == other and out.usage.completion_tokens >= 1
        wait_for(lambda: app.state.pool.engines() == {}, timeout=10.0, what="both idle models to unload")
        again = client.completions.create(model=BUNDLED, prompt="a", max_tokens=2, temperature=0)
        assert again.choices[0].text == client.completions.create(model=BUNDLED, prompt="a", max_tokens=2,
                                                                  temperature=0).choices[0].text


def test_a_stream_whose_client_is_gone_before_the_first_event_frees_its_slot():
    """The event generator never starts (sending the headers fails), so only the response can free it."""
    import asyncio

    from llmos.serve.app import create_app
    from serve_server import ENGINE

    guard = create_app([BUNDLED], engine_factory=ENGINE, load_options={"threads": 1}, max_concurrency=1, max_queue=0)
    app = guard.app
    body = json.dumps({"model": BUNDLED, "prompt": "Once", "max_tokens": 250, "stream": True,
                       "logit_bias": NO_EOS}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)  # the disconnect is only seen through send failing

    async def send(message):
        if message["type"] == "http.response.start":
            raise OSError("the client is gone")

    async def main():
        with pytest.raises(BaseException):
            await asyncio.wait_for(guard(scope, receive, send), TIMEOUT)

    try:
        asyncio.run(main())
        assert app.state.admission.in_flight == 0
        engine = app.state.pool.engines()[BUNDLED]
        wait_for(lambda: engine.stats()["running"] == 0 and engine.stats()["waiting"] == 0, timeout=5.0,
                 what="the engine request to be cancelled")
    finally:
        app.state.pool.close()


class _Broken:
    """An engine with a bug: submit raises something no llmos error explains."""

    def __init__(self, model, **_options):
        pass

    def submit(self, *args, **kw):
        raise RuntimeError("boom")

    def stats(self):
        return {}

    def close(self, drain_seconds=0.0):
        pass


def test_a_failure_inside_is_a_500_in_the_error_shape_and_frees_the_slot():
    with running_server(engine_factory=_Broken) as (base, app):
        r = httpx.post(base + "/v1/completions", json={"model": BUNDLED, "prompt": "a"}, timeout=TIMEOUT)
        assert "boom" in api_error(r, 500, None) and r.json()["error"]["type"] == "server_error"
        assert app.state.admission.in_flight == 0
