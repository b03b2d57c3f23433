"""Running the server: what a stranger on the network may reach (loopback only, unless API keys
are set), and how it stops (SIGTERM: stop accepting, let running requests finish for
drain_seconds, cancel the rest, close the engines, exit 0)."""

from __future__ import annotations

import ipaddress
import signal
import socket
from pathlib import Path

from llmos.errors import InvalidInputError, ModelFileError
from llmos.runtime.engine import Engine
from llmos.serve.app import create_app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_api_keys(path: str) -> list[str]:
    """One key a line; blank lines and lines starting with # are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the API key file ({e.strerror or e})", file=path) from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise InvalidInputError(f"{path}: the API key file holds no key", field="api_keys")
    short = [i for i, k in enumerate(keys) if len(k) < 16]
    if short:
        raise InvalidInputError(f"{path}: key {short[0] + 1} is shorter than 16 characters; use long random keys "
                                "(python -c 'import secrets; print(secrets.token_urlsafe(32))')", field="api_keys")
    return keys


def check_bind(host: str, api_keys: list[str] | None) -> None:
    if not is_loopback(host) and not api_keys:
        raise InvalidInputError(f"--host {host}: refusing to serve beyond this machine without API keys; "
                                "give --api-keys FILE (or bind 127.0.0.1)", field="host")


def serve(models: list[str], *, host: str = "127.0.0.1", port: int = 8000, api_keys: list[str] | None = None,
          max_concurrency: int = 64, max_queue: int = 256, drain_seconds: float = 30.0,
          load_options: dict | None = None, engine_options: dict | None = None, idle_unload: float | None = None,
          engine_factory=Engine, sock: socket.socket | None = None, log_level: str = "info",
          apps: list | None = None, allow_tools: bool = False) -> int:
    """Serves until SIGTERM or Ctrl-C; returns the exit code (0 after a drain). apps: app files
    (NAME.app.md) served at /v1/apps and /apps/NAME; their tools run only with allow_tools."""
    import uvicorn

    check_bind(host, api_keys)
    app = create_app(models, engine_factory=engine_factory, api_keys=api_keys, max_concurrency=max_concurrency,
                     max_queue=max_queue, load_options=load_options, engine_options=engine_options,
                     idle_unload=idle_unload, apps=apps, allow_tools=allow_tools)
    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=drain_seconds,
                            log_level=log_level, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it stopped on once it has drained; SIGTERM is handled then,
    # so the process exits with 0 rather than dying of the signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock] if sock is not None else None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if server.started else 1
