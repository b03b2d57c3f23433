"""The FastAPI application: routes, admission (429 beyond max_concurrency + max_queue), API
keys, the body cap, and every request's outcome counted exactly once in /metrics.

The HTTP layer only admits, streams and cancels; the engines batch and decode. Work that may
take a while in Python (tokenizing, rendering a chat template, a model loading) runs in worker
threads so the event loop keeps serving other clients."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from typing import Callable

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmos.errors import CancelledError, LlmosError
from llmos.limits import current as current_limits
from llmos.serve.api_errors import APIError, busy, from_llmos, from_validation, invalid, too_large
from llmos.serve.apps import ROUTE as APP_ROUTE
from llmos.serve.apps import Hooks, load_apps, router
from llmos.serve.chat import Chat, template_messages
from llmos.serve.completions import Completion
from llmos.serve.metrics import Metrics
from llmos.serve.models import ModelPool
from llmos.serve.protocol import ChatRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from llmos.serve.streaming import DONE, EventStream, error_event

_log = logging.getLogger("llmos.serve")

# Paths anyone may call, with or without a key: a load balancer's probe, and an app's page with
# its static files (the same for every app; the page then asks /v1/apps, with a key, for the rest).
_OPEN_PATHS = {"/health"}
_OPEN_PREFIX = "/apps/"
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/tokenize", "/tokenize", "/v1/detokenize",
          "/detokenize", "/health", "/metrics", "/v1/apps")


def _route(path: str) -> str:
    """A metrics label: a path a stranger sends is one of the routes or "other", never itself."""
    if path.startswith("/v1/apps/"):
        return APP_ROUTE
    return path if path in ROUTES else "other"


def _is_open(path: str) -> bool:
    return path in _OPEN_PATHS or path.startswith(_OPEN_PREFIX)


class Admission:
    """Requests in the server: max_concurrency may run and max_queue wait; one more is a 429."""

    def __init__(self, max_concurrency: int, max_queue: int):
        self.limit = max_concurrency + max_queue
        self.max_concurrency = max_concurrency
        self.in_flight = 0

    def enter(self) -> None:
        if self.in_flight >= self.limit:
            raise busy(f"the server is full: {self.in_flight} requests are running or queued "
                       f"(max_concurrency {self.max_concurrency} + max_queue {self.limit - self.max_concurrency})",
                       retry_after=1.0)
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers())


def _outcome(status: int) -> str:
    return "rejected" if status == 429 else ("invalid" if 400 <= status < 500 else "error")


class Guard:
    """ASGI middleware: the API key (constant-time compare against every key) and the body cap.
    The body is read here, up to the cap, before the app sees any of it."""

    def __init__(self, app, api_keys: list[str] | None, on_refused: Callable[[str, int], None]):
        self.app = app
        self.keys = [k.encode() for k in api_keys or []]
        self.on_refused = on_refused

    async def _refuse(self, scope, send, e: APIError):
        self.on_refused(scope.get("path", ""), e.status)
        await _error_response(e)(scope, _no_receive, send)

    def _authorized(self, scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        ok = False
        for key in self.keys:  # no early exit: the time taken does not say which key came close
            ok |= hmac.compare_digest(token.strip(), key)
        return ok and scheme.lower() == b"bearer"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.keys and not _is_open(scope.get("path", "")) and not self._authorized(scope):
            return await self._refuse(scope, send, APIError(
                401, "a valid API key is required: Authorization: Bearer <key>", type="invalid_request_error",
                code="invalid_api_key"))
        cap = current_limits().serve_max_body_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            return await self._refuse(scope, send, too_large(length.decode("latin-1"), cap))
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                return await self._refuse(scope, send, too_large(f"more than {cap}", cap))
            body.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _no_receive():
    return {"type": "http.disconnect"}


def create_app(models: list[str], *, engine_factory: Callable, api_keys: list[str] | None = None,
               max_concurrency: int = 64, max_queue: int = 256, load_options: dict | None = None,
               engine_options: dict | None = None, idle_unload: float | None = None, apps: list | None = None,
               allow_tools: bool = False) -> "Guard":
    """The server's ASGI app for `models` (registry names or checkpoint folders, as requests name
    them). engine_factory(model, **engine_options) makes each model's engine. The FastAPI app
    is the returned Guard's `.app` (its `.state` holds the pool, metrics and admission).

    apps: app files (loaded here, with allow_tools, one Model per distinct model they name,
    shared with the model routes when `models` holds it: see serve/models.py) or loaded
    llmos.App objects (used as they are), served at /v1/apps and /apps/NAME."""
    engine_options = {"max_running": max_concurrency, "max_waiting": max_queue, **(engine_options or {})}
    pool = ModelPool(models, engine_factory=engine_factory, load_options=load_options,
                     engine_options=engine_options, idle_unload=idle_unload)
    metrics = Metrics(pool.engines)
    admission = Admission(max_concurrency, max_queue)
    loaded_apps = load_apps(apps or [], pool=pool, allow_tools=allow_tools)

    def label(name) -> str:
        return name if name in pool.names() else "unknown"

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.ensure_future(_unload_loop(pool)) if idle_unload else None
        yield
        if task is not None:
            task.cancel()
        await anyio.to_thread.run_sync(pool.close)

    app = FastAPI(title="llmos", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pool, app.state.metrics, app.state.admission = pool, metrics, admission

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(request: Request, exc: RequestValidationError):
        metrics.outcome("unknown", _route(request.url.path), "invalid")
        return _error_response(from_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        metrics.outcome("unknown", _route(request.url.path), _outcome(exc.status_code))
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                        type=kind, code=kind))

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        metrics.outcome("unknown", _route(request.url.path), _outcome(exc.status))
        return _error_response(exc)

    async def generate(route: str, body, http_request: Request, kind):
        name, outcome, streaming = label(body.model), "error", False
        served, job = None, None
        try:
            admission.enter()
            try:
                served = await pool.acquire(body.model)
                job = kind(body, served.model, served.engine, metrics, body.model)
                await anyio.to_thread.run_sync(job.prepare)
                job.submit()
                metrics.prompt_tokens.labels(model=name).inc(job.prompt_tokens)
                if body.stream:
                    streaming = True
                    return _event_stream(job, name, route, served)
                result = await job.respond(http_request)
                outcome = "completed"
                return JSONResponse(result)
            finally:
                if not streaming:
                    admission.leave()
                    if served is not None:
                        pool.release(served)
        except APIError as e:
            outcome = _outcome(e.status)
            return _error_response(e)
        except CancelledError:
            outcome = "cancelled"
            return Response(status_code=499)
        except LlmosError as e:
            err = from_llmos(e, prompt_param="messages" if kind is Chat else "prompt")
            outcome = _outcome(err.status)
            return _error_response(err)
        except asyncio.CancelledError:
            outcome = "cancelled"
            if job is not None and getattr(job, "run", None) is not None:
                job.run.cancel()
            raise
        except Exception as e:  # a bug: logged whole, answered in the API's shape, its work stopped
            _log.exception("%s failed", route)
            if job is not None and getattr(job, "run", None) is not None:
                job.run.cancel()
            return _error_response(APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error",
                                            code="internal_error"))
        finally:
            if not streaming:
                if job is not None and getattr(job, "run", None) is not None:
                    metrics.generation_tokens.labels(model=name).inc(job.run.tokens_out)
                metrics.outcome(name, route, outcome)

    def _event_stream(job, name: str, route: str, served) -> "EventStream":
        state = {"outcome": "cancelled"}

        async def events():
            try:
                async for event in job.stream():
                    yield event
                state["outcome"] = "completed"
            except Exception as e:  # after the headers were sent: the error goes in the stream
                state["outcome"] = "error"
                yield error_event(e)
                yield DONE

        def finish():
            if state["outcome"] != "completed":
                job.run.cancel()
            admission.leave()
            pool.release(served)
            metrics.generation_tokens.labels(model=name).inc(job.run.tokens_out)
            metrics.outcome(name, route, state["outcome"])

        return EventStream(events(), finish)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await generate("/v1/completions", body, request, Completion)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        return await generate("/v1/chat/completions", body, request, Chat)

    @app.get("/v1/models")
    async def list_models():
        created = int(time.time())
        return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "llmos"}
                                           for n in pool.names()]}

    async def tokenize(body: TokenizeRequest):
        if (body.prompt is None) == (body.messages is None):
            raise invalid("give exactly one of prompt and messages", param="prompt")
        model = await pool.model(body.model)

        def work():
            if body.prompt is not None:
                return model.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
            return model.apply_chat_template(template_messages(body.messages),
                                             add_generation_prompt=body.add_generation_prompt, tokenize=True)

        try:
            ids = await anyio.to_thread.run_sync(work)
        except LlmosError as e:
            raise from_llmos(e, prompt_param="prompt" if body.prompt is not None else "messages") from e
        metrics.outcome(label(body.model), "/v1/tokenize", "completed")
        return {"tokens": ids, "count": len(ids), "max_model_len": model.config.max_position_embeddings}

    async def detokenize(body: DetokenizeRequest):
        model = await pool.model(body.model)
        vocab = model.config.vocab_size
        for i, t in enumerate(body.tokens):
            if not 0 <= t < vocab:
                raise invalid(f"tokens: token id {t} at index {i} is outside the vocabulary [0, {vocab})",
                              param="tokens")
        text = await anyio.to_thread.run_sync(lambda: model.tokenizer.decode(body.tokens))
        metrics.outcome(label(body.model), "/v1/detokenize", "completed")
        return {"prompt": text}

    for path in ("/v1/tokenize", "/tokenize"):
        app.post(path)(tokenize)
    for path in ("/v1/detokenize", "/detokenize"):
        app.post(path)(detokenize)

    app.include_router(router(loaded_apps, hooks=_ServerHooks(admission, metrics), hide_names=bool(api_keys)))
    app.state.apps = loaded_apps

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def refused(path: str, status: int) -> None:
        metrics.outcome("unknown", _route(path), _outcome(status))

    return Guard(app, api_keys, refused)


class _ServerHooks(Hooks):
    """The app routes' calls admitted with the model routes' and counted in the same metrics."""

    def __init__(self, admission: Admission, metrics: Metrics):
        self.admission, self.metrics = admission, metrics

    def enter(self) -> None:
        self.admission.enter()

    def leave(self) -> None:
        self.admission.leave()

    def outcome(self, model: str, route: str, outcome: str) -> None:
        self.metrics.outcome(model, route, outcome)

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        self.metrics.prompt_tokens.labels(model=model).inc(prompt)
        self.metrics.generation_tokens.labels(model=model).inc(completion)


async def _unload_loop(pool: ModelPool) -> None:
    period = max(0.05, min(5.0, pool.idle_unload / 4))
    while True:
        await asyncio.sleep(period)
        await pool.unload_idle()

