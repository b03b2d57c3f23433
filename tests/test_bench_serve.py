"""tools/bench_serve.py's client against a stand-in OpenAI-compatible server: it counts the tokens
the server's usage reports, flags answers of the wrong length, and times the first token."""

import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("httpx")
starlette = pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from starlette.applications import Starlette  # noqa: E402
from starlette.responses import JSONResponse, StreamingResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import bench_serve  # noqa: E402

FIRST_DELAY = 0.2  # seconds before the stand-in's first token


async def models(request):
    return JSONResponse({"object": "list", "data": [{"id": "stand-in", "object": "model"}]})


async def completions(request):
    body = await request.json()
    # A prompt starting with token 0 gets one token too few: the harness must notice.
    n = body["max_tokens"] - (1 if body["prompt"][0] == 0 else 0)

    async def events():
        await asyncio.sleep(FIRST_DELAY)
        for _ in range(n):
            yield "data: " + json.dumps({"choices": [{"index": 0, "text": "a", "finish_reason": None}]}) + "\n\n"
            await asyncio.sleep(0.001)
        final = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}],
                 "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": n}}
        yield "data: " + json.dumps(final) + "\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = Starlette(routes=[Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "stand-in server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def run(url, prompts, streams, max_tokens, seconds=0.0):
    async def go():
        target = bench_serve.HttpTarget("stand-in", url, {})
        try:
            return await asyncio.wait_for(bench_serve.run_streams(target, prompts, streams, max_tokens, seconds), 60)
        finally:
            await target.aclose()
    return asyncio.run(go())


def test_counts_usage_tokens_and_times_the_first(url):
    r = run(url, [[5, 6, 7]] * 4, streams=2, max_tokens=6)
    assert r["errors"] == 0 and r["wrong_length"] == 0
    assert r["requests"] == 4 and r["out_tokens"] == 24
    # TTFT includes the stand-in's delay and not much more (loopback, 2 streams).
    assert FIRST_DELAY <= r["ttft_p50_ms"] / 1e3 < FIRST_DELAY + 5
    assert r["tok_s"] == pytest.approx(24 / r["wall_s"])


def test_flags_answers_of_the_wrong_length(url):
    r = run(url, [[0, 1], [5, 6], [0, 2]], streams=3, max_tokens=4)
    assert r["errors"] == 0
    assert r["wrong_length"] == 2
    assert r["out_tokens"] == 3 + 4 + 3


def test_a_capped_case_counts_only_the_requests_that_ran(url):
    # Each request takes at least FIRST_DELAY, so none starts after the first one's end.
    r = run(url, [[5, 6]] * 6, streams=1, max_tokens=2, seconds=FIRST_DELAY / 2)
    assert r["requests"] == 1 and r["out_tokens"] == 2


def test_request_mix_is_fixed_by_its_seed():
    a = bench_serve.request_set(5, 1000, 100, 200)
    assert a == bench_serve.request_set(5, 1000, 100, 200)
    assert a[:3] == bench_serve.request_set(3, 1000, 100, 200)  # a longer set extends a shorter one
    assert all(100 <= len(p) <= 200 and all(10 <= t < 990 for t in p) for p in a)
