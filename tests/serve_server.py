"""A `llmos serve` app running on a free loopback port in a thread of the test process (uvicorn),
for the server tests; `serve_process` runs the real `llmos serve` command in a child process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import subprocess
import sys
import threading
import time

import httpx

from child_env import child_env
from llmos.runtime.engine import Engine as ENGINE

BUNDLED = "default"  # the bundled model, by its reserved registry name
TIMEOUT = 30.0


class PacedEngine:
    """An engine whose requests hand each piece to the server `delay` seconds apart: a stream
    that lasts, whatever the engine's speed (to hold a slot, or to be cancelled in its middle)."""

    def __init__(self, model, *, delay: float, **options):
        self.inner = ENGINE(model, **options)
        self.delay = delay

    @classmethod
    def factory(cls, delay: float):
        return functools.partial(cls, delay=delay)

    def submit(self, *args, **kw):
        return _PacedRequest(self.inner.submit(*args, **kw), self.delay)

    def stats(self):
        return self.inner.stats()

    def close(self, drain_seconds: float = 0.0):
        self.inner.close(drain_seconds)


class _PacedRequest:
    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def __aiter__(self):
        async for piece in self.inner:
            await asyncio.sleep(self.delay)
            yield piece


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(models=(BUNDLED,), *, drain_seconds: float = 2.0, **options):
    """Yields (base url, the app) of create_app(models, **options), served in a thread; the app
    gets `.test_server`, the uvicorn Server (should_exit = True is what SIGTERM does)."""
    import uvicorn

    from llmos.serve.app import create_app

    options.setdefault("engine_factory", ENGINE)
    options.setdefault("load_options", {"threads": 1})
    guard = create_app(list(models), **options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(guard, log_level="warning", lifespan="on",
                                            timeout_graceful_shutdown=drain_seconds))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="test-uvicorn")
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    guard.app.test_server = server
    try:
        yield f"http://127.0.0.1:{port}", guard.app
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "the test server did not stop"


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def api_error(response, status: int, param: str | None) -> str:
    """The message of an error response in OpenAI's shape, after checking its status, shape and param."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["param"] == param, body
    return body["error"]["message"]


@contextlib.contextmanager
def serve_process(*args: str, port: int | None = None, command: tuple[str, ...] = ("serve",), cwd=None):
    """`python -m llmos COMMAND ARGS --port PORT` (`llmos serve` unless told) in a child; yields
    (process, base url) once /health answers."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmos", *command, *args, "--port", str(port)], env=child_env(),
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"llmos {' '.join(command)} exited with {proc.returncode}: {proc.stderr.read()}")
            try:
                if httpx.get(base + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"llmos {' '.join(command)} did not answer /health"
            time.sleep(0.05)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)

