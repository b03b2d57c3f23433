"""Apps over HTTP: `GET /v1/apps` (the list), `POST /v1/apps/NAME` (JSON in; the AppResult as
JSON, or server-sent AppEvents ending `data: [DONE]`), the page at `/apps/NAME` and its static
files (python/llmos/serve/web/, plain HTML/CSS/JS).

`router(apps)` gives these routes to any FastAPI app, answering errors in the OpenAI shape
themselves; the model server (create_app) mounts the same router behind its API keys, body cap
and admission, and counts each call in /metrics.

An app call is a synchronous iterator (App.stream) that may run for a while: it runs in a
thread of its own, its events handed to the event loop as they come, and a client that goes
away cancels it (the CancelToken stops the generation at the model's next token)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any, Literal, Optional

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from llmos.errors import CancelledError, InvalidInputError, LlmosError
from llmos.runtime.model import CancelToken
from llmos.limits import current as current_limits
from llmos.serve.api_errors import APIError, from_llmos, from_validation, invalid, too_large
from llmos.serve.streaming import DONE, EventStream, disconnected, error_event, sse

_log = logging.getLogger("llmos.serve")

WEB = Path(__file__).with_name("web")
# An app's name (APPS_API.md); `_static` can never be one, so the page's files live there.
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


class HistoryMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str


class AppRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: dict[str, Any] = {}
    message: Optional[str] = None
    history: Optional[list[HistoryMessage]] = None
    stream: bool = False
    explain: bool = False
    params: Optional[dict[str, Any]] = None


class Hooks:
    """What the embedding server adds to each call: admission (enter may raise a 429 APIError)
    and counting. The plain router admits everything and counts nothing."""

    def enter(self) -> None:
        pass

    def leave(self) -> None:
        pass

    def outcome(self, model: str, route: str, outcome: str) -> None:
        pass

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        pass


ROUTE = "/v1/apps/{name}"
_END = object()


def describe(app) -> dict:
    """An app's entry in GET /v1/apps. `inputs` (the input specs, in order, with their llmos
    types: text vs string, choice) is what the page builds its form from; `output` is text,
    json (or json:FILE) or code:LANG, and `output_schema` the JSON schema of a json app."""
    return {"name": app.name, "kind": app.kind, "description": app.description, "model": app.model_ref,
            "input_schema": app.input_schema(), "inputs": [_spec(s) for s in app.input_specs()],
            "output": app.output.describe(), "output_schema": app.output.schema, "page": f"/apps/{app.name}"}


def _spec(s) -> dict:
    keys = ("name", "type", "default", "description", "required", "choices", "min", "max")
    return json.loads(json.dumps({k: getattr(s, k, None) for k in keys}, default=str))


def _event_json(event) -> dict:
    return {"type": event.type, "text": event.text, "data": event.data}


class _Call:
    """One app call running in its own thread; `next()` awaits its next event (or `_END`)."""

    def __init__(self, app, kwargs: dict):
        self.token = CancelToken()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self.finished = False
        threading.Thread(target=self._work, args=(app, kwargs), daemon=True, name=f"llmos-app-{app.name}").start()

    def _put(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop has closed: nobody is left to read
            pass

    def _work(self, app, kwargs: dict) -> None:
        try:
            events = app.stream(cancel=self.token, **kwargs)
            try:
                for event in events:
                    self._put(event)
                    if self.token.cancelled():
                        break
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()
        except BaseException as e:  # handed to the event loop, which answers with it
            self._put(e)
            return
        self._put(_END)

    async def next(self):
        item = await self._queue.get()
        if item is _END:
            self.finished = True
        elif isinstance(item, BaseException):
            self.finished = True
            raise item
        return item


def _api_error(e: BaseException, app, body: AppRequest | None) -> APIError:
    """The OpenAI-shaped error for what an app call raised; `param` names the request field
    (inputs.tone, message, params.temperature) when the error names one."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, CancelledError):
        return APIError(499, str(e), type="server_error", code="cancelled")
    if isinstance(e, LlmosError):
        err = from_llmos(e)
        field = getattr(e, "field", None)
        if field:
            names = {s.name for s in app.input_specs()}
            if field in names:
                err.param = f"inputs.{field}"
            elif field in ("message", "history"):
                err.param = field
            elif body is not None and body.params and field in body.params:
                err.param = f"params.{field}"
            else:
                err.param = field
        return err
    _log.error("app %s failed", app.name, exc_info=e)
    return APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error", code="internal_error")


def _outcome(status: int) -> str:
    return "rejected" if status == 429 else ("invalid" if 400 <= status < 500 else "error")


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers())


async def _parse(request: Request) -> AppRequest:
    # The server's Guard caps bodies before they arrive; an app embedded with router() may
    # have no such guard, so the cap is kept here too.
    cap = current_limits().serve_max_body_bytes
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > cap:
            raise too_large(f"more than {cap}", cap)
        parts.append(part)
    raw = b"".join(parts)
    try:
        obj = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as e:
        where = f" at character {e.pos}" if isinstance(e, json.JSONDecodeError) else ""
        raise invalid(f"the request body is not valid JSON ({getattr(e, 'msg', e)}{where})", code="invalid_json") from None
    try:
        return AppRequest.model_validate(obj)
    except ValidationError as e:
        raise from_validation(e.errors()) from None


def _arguments(app, body: AppRequest) -> dict:
    """App.stream's arguments for a request, validated before anything runs."""
    inputs = app.coerce_inputs(dict(body.inputs))
    if app.kind == "chat" and not (body.message or "").strip():
        raise invalid(f"message: the chat app {app.name!r} needs a message", param="message")
    if app.kind != "chat" and (body.message is not None or body.history):
        field = "message" if body.message is not None else "history"
        raise invalid(f"{field}: the {app.kind} app {app.name!r} takes no {field}; give its inputs", param=field)
    history = [m.model_dump() for m in body.history or []]
    kwargs = {"explain": body.explain, "params": body.params, **inputs}
    if app.kind == "chat":
        kwargs.update(message=body.message, history=history)
    return kwargs


def load_apps(items: list, *, pool, allow_tools: bool) -> list:
    """Apps from `items` (app file paths, or llmos.App objects kept as they are). Each distinct
    model the files name is loaded once, by the pool (pinned, sharing a served model's engine),
    and handed to every app that names it."""
    paths = [i for i in items if isinstance(i, (str, Path))]
    if not paths:
        return list(items)
    from llmos.apps import App

    # First without a model (nothing loads): every file is checked, and says which model it needs.
    checked = {i: App.load(i, allow_tools=allow_tools) for i in paths}
    models = {a.model_ref: None for a in checked.values()}
    for ref in models:
        models[ref] = pool.pin(ref)
    return [App.load(i, model=models[checked[i].model_ref], allow_tools=allow_tools) if i in checked else i
            for i in items]


def router(apps, *, hooks: Hooks | None = None, hide_names: bool = False) -> APIRouter:
    """The app routes for `apps` (loaded llmos.App objects). Embedding in a FastAPI service:

        app = FastAPI()
        app.include_router(router([App.load("support-bot.app.md")]))

    hide_names: serve the page for any well-formed name, so that a server behind API keys
    does not tell a stranger (the page needs no key) which apps it holds."""
    hooks = hooks or Hooks()
    by_name: dict[str, Any] = {}
    for a in apps:
        if a.name in by_name:
            raise InvalidInputError(f"{a.path}: app {a.name!r} is also {by_name[a.name].path}; app names must "
                                    "differ on one server", field="app")
        by_name[a.name] = a
    static = {p.name: p for p in WEB.iterdir() if p.suffix in _STATIC_TYPES}
    page = (WEB / "index.html").read_text(encoding="utf-8")
    r = APIRouter()

    def lookup(name: str):
        a = by_name.get(name)
        if a is None:
            served = ", ".join(by_name) or "none"
            raise APIError(404, f"app {name!r} is not served here; served: {served}", type="not_found",
                           param="name", code="app_not_found")
        return a

    @r.get("/v1/apps")
    async def list_apps():
        return {"object": "list", "data": [describe(a) for a in by_name.values()]}

    @r.post("/v1/apps/{name}")
    async def call(name: str, request: Request):
        app, body, model = None, None, "unknown"
        try:
            app = lookup(name)
            model = app.model_ref
            body = await _parse(request)
            kwargs = _arguments(app, body)
        except (APIError, LlmosError) as e:
            err = _api_error(e, app, body) if app is not None else e
            hooks.outcome(model, ROUTE, _outcome(err.status))
            return _error_response(err)
        try:
            hooks.enter()
        except APIError as e:
            hooks.outcome(model, ROUTE, "rejected")
            return _error_response(e)
        return await _respond(app, body, kwargs, request, hooks)

    @r.get("/apps/{name}")
    async def app_page(name: str):
        if not (hide_names and _NAME.fullmatch(name)):
            try:
                lookup(name)
            except APIError as e:
                return _error_response(e)
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @r.get("/apps/_static/{file}")
    async def app_static(file: str):
        path = static.get(file)
        if path is None:
            return _error_response(APIError(404, f"no such file: {file}", type="not_found", code="not_found"))
        return FileResponse(path, media_type=_STATIC_TYPES[path.suffix])

    return r


async def _respond(app, body: AppRequest, kwargs: dict, request: Request, hooks: Hooks) -> Response:
    """Runs the call (admitted already: leave() is ours to call, exactly once)."""
    model = app.model_ref
    state = {"outcome": "error", "streaming": False}
    run = None
    try:
        run = _Call(app, kwargs)
        # The first event (meta) comes once the app has rendered and queued its request: an
        # error before it (a template, a parameter, the context) is answered with its status.
        first = await _next(run, request)
        if body.stream:
            state["streaming"] = True
            state["outcome"] = "cancelled"  # until the stream ends
            return _stream(app, run, first, hooks, state)
        result = None
        event = first
        while event is not _END:
            if event.type == "done":
                result = event.data
            event = await _next(run, request)
        if result is None:
            raise APIError(500, f"app {app.name!r} ended without a result", type="server_error",
                           code="internal_error")
        _count(hooks, model, result)
        state["outcome"] = "completed"
        return JSONResponse(json.loads(json.dumps(result, default=str)))
    except _Disconnected:
        state["outcome"] = "cancelled"
        return Response(status_code=499)
    except asyncio.CancelledError:
        state["outcome"] = "cancelled"
        raise
    except Exception as e:
        err = _api_error(e, app, body)
        state["outcome"] = _outcome(err.status)
        return _error_response(err)
    finally:
        if not state["streaming"]:
            if run is not None and not run.finished:
                run.token.cancel()
            hooks.leave()
            hooks.outcome(model, ROUTE, state["outcome"])


class _Disconnected(Exception):
    pass


async def _next(run: _Call, request: Request):
    """The call's next event, or _Disconnected when the client goes away first."""
    watcher = asyncio.ensure_future(disconnected(request))
    step = asyncio.ensure_future(run.next())
    try:
        done, _ = await asyncio.wait({watcher, step}, return_when=asyncio.FIRST_COMPLETED)
        if step not in done:
            step.cancel()
            raise _Disconnected()
        return step.result()
    finally:
        watcher.cancel()



def _count(hooks: Hooks, model: str, result: dict) -> None:
    usage = result.get("usage") or {}
    hooks.tokens(model, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def _stream(app, run: _Call, first, hooks: Hooks, state: dict) -> EventStream:
    model = app.model_ref

    async def events():
        event = first
        try:
            while event is not _END:
                if event.type == "done":
                    _count(hooks, model, event.data or {})
                yield sse(json.loads(json.dumps(_event_json(event), default=str)))
                event = await run.next()
            yield DONE
            state["outcome"] = "completed"
        except Exception as e:  # after the headers were sent: the error goes in the stream
            state["outcome"] = "error"
            yield error_event(_api_error(e, app, None))
            yield DONE

    def finish():
        if not run.finished:
            run.token.cancel()
        hooks.leave()
        hooks.outcome(model, ROUTE, state["outcome"])

    return EventStream(events(), finish)
