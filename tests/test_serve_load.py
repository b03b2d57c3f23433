"""The server under load and at shutdown, on loopback with bounded waits.

Load: 32 concurrent streams against the bundled model (completions and chat), 10% cancelled by
the client mid-stream, 5% invalid, more than max_concurrency + max_queue at once. Every request
ends in exactly one of completed / rejected (429) / invalid (4xx) / cancelled, the server's
/metrics counts the same, and each completed stream's text and usage equal those of the same
request (same seed) made without streaming.

SIGTERM: `llmos serve` stops accepting, lets the running stream finish, and exits 0."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, prometheus-client) is in the test extra")

from serve_server import BUNDLED, TIMEOUT, PacedEngine, running_server, serve_process, wait_for  # noqa: E402

N = 32
CANCELLED = {1, 4, 9}  # 10%: the client closes the stream after its first piece of text (early
# indexes: sent first, so admitted)
INVALID = {7, 23}  # 5%: a field out of range
MAX_TOKENS = 16


def _body(i: int) -> tuple[str, dict]:
    common = {"model": BUNDLED, "max_tokens": MAX_TOKENS, "temperature": 0.8, "seed": 100 + i}
    if i in INVALID:
        common["temperature"] = 7.5
    if i % 2:
        return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": f"Letter {i}, please."}]}
    return "/v1/completions", {**common, "prompt": f"Chapter {i}. It was a"}


def _text(route: str, choice: dict) -> str:
    return choice["delta"].get("content") or "" if route.endswith("chat/completions") else choice["text"]


async def _stream(client: httpx.AsyncClient, i: int) -> dict:
    route, body = _body(i)
    async with client.stream("POST", route, json={**body, "stream": True,
                                                  "stream_options": {"include_usage": True}}) as r:
        if r.status_code != 200:
            await r.aread()
            return {"i": i, "outcome": "rejected" if r.status_code == 429 else "invalid", "status": r.status_code,
                    "retry_after": r.headers.get("Retry-After"), "error": r.json()["error"]}
        text, reasons, usage, done = "", [], None, False
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            event = json.loads(line[6:])
            assert "error" not in event, event
            for choice in event["choices"]:
                text += _text(route, choice)
                if choice["finish_reason"]:
                    reasons.append(choice["finish_reason"])
            usage = event.get("usage") or usage
            if i in CANCELLED and text:
                return {"i": i, "outcome": "cancelled"}  # leaving the block closes the connection
        assert done and len(reasons) == 1, (i, reasons)
        return {"i": i, "outcome": "completed", "text": text, "usage": usage}


async def _whole(client: httpx.AsyncClient, i: int) -> tuple[str, dict]:
    route, body = _body(i)
    r = await client.post(route, json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    choice = out["choices"][0]
    return (choice["message"]["content"] if "message" in choice else choice["text"]), out["usage"]


def _outcomes(base: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(httpx.get(base + "/metrics", timeout=TIMEOUT).text):
        for s in family.samples:
            if s.name == "llmos_requests_total":
                counts[s.labels["outcome"]] = counts.get(s.labels["outcome"], 0) + s.value
    return counts


def test_32_streams_with_cancels_and_invalid_requests():
    # 8 decode at once and 16 wait: of 32 arriving together, some are refused with 429. Each piece
    # reaches the server 10 ms apart, so a stream lasts long enough to be cancelled in its middle.
    with running_server(max_concurrency=8, max_queue=16, engine_factory=PacedEngine.factory(0.01)) as (base, app):
        async def main():
            limits = httpx.Limits(max_connections=N + 4)
            async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT, limits=limits) as client:
                await client.get("/v1/models")
                await client.post("/v1/tokenize", json={"model": BUNDLED, "prompt": "x"})  # loads the model
                streamed = await asyncio.wait_for(asyncio.gather(*(_stream(client, i) for i in range(N))), 60)
                completed = [s for s in streamed if s["outcome"] == "completed"]
                # The repeats go at most max_concurrency at once, so admission never refuses one:
                # sent all together (up to 24) they met slots still held by streams just ended,
                # and one got a 429 (seen once in a full-suite run).
                slots = asyncio.Semaphore(8)

                async def whole(i):
                    async with slots:
                        return await _whole(client, i)
                wholes = await asyncio.wait_for(asyncio.gather(*(whole(s["i"]) for s in completed)), 60)
                return streamed, completed, wholes

        streamed, completed, wholes = asyncio.run(main())
        by = {}
        for s in streamed:
            by.setdefault(s["outcome"], []).append(s["i"])
        assert sorted(i for ids in by.values() for i in ids) == list(range(N)), "each request ends exactly once"
        assert set(by.get("invalid", [])) == INVALID
        assert set(by.get("cancelled", [])) <= CANCELLED and by.get("cancelled")
        assert by.get("rejected"), "more than max_concurrency + max_queue arrived together: some are refused"
        for s in streamed:
            if s["outcome"] == "rejected":
                assert s["status"] == 429 and int(s["retry_after"]) >= 1
            if s["outcome"] == "invalid":
                assert s["status"] == 400 and s["error"]["param"] == "temperature"
        assert len(completed) >= N // 4
        for s, (text, usage) in zip(completed, wholes):
            assert s["text"] == text, f"request {s['i']}: streamed text differs from the whole one"
            assert s["usage"] == usage, f"request {s['i']}: usage differs"
            assert 1 <= usage["completion_tokens"] <= MAX_TOKENS

        # The server counted each request once, with the client's outcome (the non-streamed
        # repeats, the tokenize call and the invalid requests included).
        want = {"completed": len(completed) * 2 + 1, "rejected": len(by.get("rejected", [])),
                "invalid": len(INVALID), "cancelled": len(by.get("cancelled", []))}
        wait_for(lambda: _outcomes(base) == want, timeout=10.0, what=f"/metrics outcomes {want}")
        wait_for(lambda: app.state.admission.in_flight == 0, what="every slot freed")


def test_sigterm_lets_the_running_stream_finish_then_exits_0():
    with serve_process(BUNDLED, "--drain-seconds", "20") as (proc, base):
        body = {"model": BUNDLED, "prompt": "Once", "max_tokens": 200, "temperature": 1.0, "seed": 4,
                "logit_bias": {"0": -100, "2": -100}, "stream": True}
        with httpx.Client(timeout=TIMEOUT) as client, client.stream("POST", base + "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            proc.send_signal(signal.SIGTERM)
            rest = list(lines)
        events = [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
        assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]", rest[-3:]
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert proc.wait(TIMEOUT) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(base + "/health", timeout=2.0)


def _stream_after_shutdown(base, app, max_tokens):
    """Starts a stream, asks the server to stop once its first event is in, reads the rest;
    also tries a new connection meanwhile. Returns (events after the stop, refused?, finish reasons)."""
    body = {"model": BUNDLED, "prompt": "Once", "max_tokens": max_tokens, "temperature": 1.0, "seed": 4,
            "logit_bias": {"0": -100, "2": -100}, "stream": True}
    with httpx.Client(timeout=TIMEOUT) as client, client.stream("POST", base + "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        app.test_server.should_exit = True  # what uvicorn's SIGTERM handler does
        wait_for(lambda: not app.test_server.servers or all(not s.is_serving() for s in app.test_server.servers),
                 what="the listener to close")
        try:
            httpx.get(base + "/health", timeout=2.0)
            refused = False
        except httpx.TransportError:
            refused = True
        try:
            rest = list(lines)
        except httpx.TransportError:  # cut at the drain's deadline
            rest = []
    events = [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
    return events, refused, [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]


def test_a_stop_drains_running_streams_and_refuses_new_connections():
    # 100 pieces 20 ms apart: the stream outlasts the moment the server is asked to stop by 2 s.
    with running_server(drain_seconds=20, engine_factory=PacedEngine.factory(0.02)) as (base, app):
        events, refused, reasons = _stream_after_shutdown(base, app, 100)
    assert refused, "a new connection was accepted while draining"
    assert reasons == ["length"] and len(events) >= 50, "the running stream was not let finish"


def test_the_drain_deadline_cuts_what_still_runs_and_cancels_it():
    with running_server(drain_seconds=0.3, engine_factory=PacedEngine.factory(0.05)) as (base, app):
        engine = app.state.pool.engines
        events, refused, reasons = _stream_after_shutdown(base, app, 200)
        assert refused and reasons == [] and len(events) < 100, "the stream outlived the drain deadline"
    assert engine() == {}, "the engines were not closed"
