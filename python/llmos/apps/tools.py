"""An app's tools: Python functions of the module the app names, next to the app file.

The module is imported (importlib, from its file) only when the app runs a request, never when
it loads; each function's JSON schema comes from its type hints and docstring. Every call is
logged on the `llmos.apps.tools` logger (app, function, arguments, outcome); with
allow_tools=False (a server started without --allow-tools) a call is not run, and the model
is told so.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import re
import sys
import threading
import types
import typing
from pathlib import Path
from typing import Any, Literal

from llmos import limits
from llmos.errors import AppFileError

__all__ = ["AppTools", "function_schema", "DISABLED", "tool_instructions"]

log = logging.getLogger("llmos.apps.tools")

DISABLED = "tools are disabled (start the server with --allow-tools)"

_JSON = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


def _type_schema(tp) -> dict:
    if tp is inspect.Parameter.empty or tp is Any:
        return {}
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_schema(args[0]) if len(args) == 1 else {"anyOf": [_type_schema(a) for a in args]}
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(tp)
        return {"type": "array", **({"items": _type_schema(args[0])} if args else {})}
    if origin is dict:
        return {"type": "object"}
    if tp in _JSON:
        return {"type": _JSON[tp]}
    return {}


def _doc_params(doc: str) -> tuple[str, dict[str, str]]:
    """(summary, {param: description}) from a docstring (Google `Args:` or `:param x:` style)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    in_args = False
    for line in lines:
        s = line.strip()
        m = re.match(r":param\s+(?:\w+\s+)?(\w+):\s*(.*)", s)
        if m:
            params[m.group(1)] = m.group(2)
            continue
        if s.lower() in ("args:", "arguments:", "parameters:"):
            in_args = True
            continue
        if in_args:
            m = re.match(r"(\w+)\s*(?:\([^)]*\))?:\s*(.*)", s)
            if m:
                params[m.group(1)] = m.group(2)
                continue
            if not s or s.endswith(":"):
                in_args = s == ""
                continue
        elif not params and s:
            summary.append(s)
        elif summary and not s:
            break
    return " ".join(summary), params


def function_schema(fn) -> dict:
    """The OpenAI tool declaration of `fn` ({"type": "function", "function": {...}})."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve: the parameter is untyped
        hints = {}
    summary, docs = _doc_params(fn.__doc__ or "")
    props, required = {}, []
    for name, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        s = _type_schema(hints.get(name, p.annotation))
        if name in docs:
            s["description"] = docs[name]
        if p.default is p.empty:
            required.append(name)
        elif isinstance(p.default, (str, int, float, bool)) or p.default is None:
            s["default"] = p.default
        props[name] = s
    return {"type": "function", "function": {
        "name": fn.__name__, "description": summary,
        "parameters": {"type": "object", "properties": props, "required": required}}}


def tool_instructions(schemas: list[dict]) -> str:
    """The tool-use instructions for a chat template that has no tools section (hermes format,
    which llmos.text.tool_calls parses)."""
    decls = "\n".join(json.dumps(s["function"], ensure_ascii=False) for s in schemas)
    return ("You can call these functions. To call one, reply with only\n"
            '<tool_call>{"name": NAME, "arguments": {...}}</tool_call>\n'
            "and wait for its result. Functions:\n<tools>\n" + decls + "\n</tools>")


class AppTools:
    """The tools module of one app: found at load, imported on first use."""

    def __init__(self, spec, *, base: Path, app: str, file: str, line: int | None):
        self.spec, self.app, self.file, self.line = spec, app, file, line
        self.path = (base / spec.module)
        if not self.path.is_file():
            raise AppFileError(f"the tools module {spec.module} is not a file next to the app ({self.path})",
                               file=file, line=line, field="tools")
        if self.path.suffix != ".py":
            raise AppFileError(f"the tools module {spec.module} must be a .py file", file=file, line=line,
                               field="tools")
        self._functions: dict | None = None
        self._lock = threading.Lock()

    @property
    def functions(self) -> dict:
        """name -> function (imports the module on first use)."""
        with self._lock:
            if self._functions is None:
                self._functions = self._import()
            return self._functions

    def _import(self) -> dict:
        key = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:12]
        name = f"llmos_app_tools_{key}"
        try:
            module_spec = importlib.util.spec_from_file_location(name, self.path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module  # dataclasses and typing look the module up by name
            module_spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise AppFileError(f"the tools module {self.spec.module} failed to import: {type(e).__name__}: {e}",
                               file=self.file, line=self.line, field="tools") from e
        if self.spec.functions is not None:
            out = {}
            for fn in self.spec.functions:
                obj = getattr(module, fn, None)
                if not callable(obj):
                    raise AppFileError(f"the tools module {self.spec.module} has no function {fn!r}",
                                       file=self.file, line=self.line, field="tools.functions")
                out[fn] = obj
            return out
        out = {n: f for n, f in vars(module).items()
               if inspect.isfunction(f) and f.__module__ == name and not n.startswith("_")}
        if not out:
            raise AppFileError(f"the tools module {self.spec.module} defines no public function", file=self.file,
                               line=self.line, field="tools")
        return out

    def schemas(self) -> list[dict]:
        return [function_schema(f) for f in self.functions.values()]

    def call(self, name: str, arguments: str, *, allow: bool) -> dict:
        """Runs one parsed call; returns {name, arguments, result | error}. Never raises for the
        tool's own failure: the model sees the error."""
        try:
            args = json.loads(arguments) if arguments else {}
        except ValueError:
            args = None
        record: dict = {"name": name, "arguments": args if isinstance(args, dict) else arguments}
        if not allow:
            record["error"] = DISABLED
            log.info("app %s: tool %s(%s) refused: %s", self.app, name, _short(arguments), DISABLED)
            return record
        fn = self.functions.get(name)
        if fn is None or not isinstance(args, dict):
            record["error"] = f"no tool named {name!r}" if fn is None else "arguments are not a JSON object"
        else:
            try:
                inspect.signature(fn).bind(**args)
            except TypeError as e:
                record["error"] = f"bad arguments: {e}"
            else:
                try:
                    result = fn(**args)
                    record["result"] = _cap(result if isinstance(result, str)
                                            else json.dumps(result, ensure_ascii=False, default=str))
                except Exception as e:  # the tool's failure is the model's to see, and logged
                    record["error"] = f"{type(e).__name__}: {e}"
        outcome = f"error: {record['error']}" if "error" in record else f"ok: {_short(record['result'])}"
        log.info("app %s: tool %s(%s) %s", self.app, name, _short(arguments), outcome)
        return record


def _cap(text: str) -> str:
    n = limits.current().max_tool_result_chars
    return text if len(text) <= n else text[:n] + f"... [cut at {n} characters: llmos.limits.max_tool_result_chars]"


def _short(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."
