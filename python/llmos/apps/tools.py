"""An app's tools: Python functions of the module the app names, next to the app file.

Loading reads the module's syntax tree only: each function's JSON schema comes from its type
hints and docstring there. The module is imported (importlib, from its file) only to run a call,
and only when tools are allowed. Every call is
logged on the `llmos.apps.tools` logger (app, function, arguments, outcome); with
allow_tools=False (a server started without --allow-tools) a call is not run, and the model
is told so.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import json
import logging
import re
import sys
import threading
from pathlib import Path
from llmos import limits
from llmos.errors import AppFileError

__all__ = ["AppTools", "function_schema", "DISABLED", "tool_instructions"]

log = logging.getLogger("llmos.apps.tools")

DISABLED = "tools are disabled (start the server with --allow-tools)"

_JSON = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "dict": "object",
         "Dict": "object", "list": "array", "List": "array", "tuple": "array", "Tuple": "array",
         "set": "array", "Sequence": "array"}


def _annotation_schema(node) -> dict:
    """The JSON schema of a type hint, read from its syntax tree (int, str, list[str],
    Optional[X], X | None, Literal[...], dict[...]); anything else gives {} (any value)."""
    if node is None:
        return {}
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a string annotation
        try:
            return _annotation_schema(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return {}
    if isinstance(node, ast.Attribute):  # typing.List, t.Optional
        node = ast.Name(node.attr)
    if isinstance(node, ast.Name):
        return {"type": _JSON[node.id]} if node.id in _JSON else {}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([node.left, node.right])
    if isinstance(node, ast.Subscript):
        head = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head == "Optional":
            return _union(args)
        if head == "Union":
            return _union(args)
        if head == "Literal":
            values = [a.value for a in args if isinstance(a, ast.Constant)]
            return {"enum": values} if len(values) == len(args) else {}
        if _JSON.get(head) == "array":
            return {"type": "array", "items": _annotation_schema(args[0])} if head in ("list", "List", "set",
                                                                                        "Sequence") else {"type": "array"}
        if _JSON.get(head) == "object":
            return {"type": "object"}
    return {}


def _union(nodes) -> dict:
    flat = []
    for n in nodes:
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr):
            flat.extend([n.left, n.right])
        else:
            flat.append(n)
    kept = [n for n in flat if not (isinstance(n, ast.Constant) and n.value is None)
            and not (isinstance(n, ast.Name) and n.id == "None")]
    if len(kept) == 1:
        return _annotation_schema(kept[0])
    return {"anyOf": [_annotation_schema(n) for n in kept]}


def _doc_params(doc: str) -> tuple[str, dict[str, str]]:
    """(summary: the first paragraph, {param: description}) of a docstring, Google style
    (`Args:` then `name: text`) or reST style (`:param name: text`)."""
    summary: list[str] = []
    params: dict[str, str] = {}
    section = None
    for line in inspect.cleandoc(doc or "").splitlines():
        s = line.strip()
        m = re.match(r":param\s+(?:\w+\s+)?(\w+):\s*(.*)", s)
        if m:
            params[m.group(1)] = m.group(2)
            section = "rest"
            continue
        if re.fullmatch(r"[A-Z][A-Za-z ]*:", s):  # Args:, Returns:, Raises:
            section = s[:-1].lower()
            continue
        if section in ("args", "arguments", "parameters"):
            m = re.match(r"(\w+)\s*(?:\([^)]*\))?:\s*(.*)", s)
            if m:
                params[m.group(1)] = m.group(2)
            continue
        if section is None:
            if not s and summary:
                section = "body"
            elif s:
                summary.append(s)
    return " ".join(summary), params


def function_schema(fn: ast.FunctionDef) -> dict:
    """The OpenAI tool declaration ({"type": "function", "function": {...}}) of a function,
    from its definition's syntax tree: type hints and docstring, without running the module."""
    summary, docs = _doc_params(ast.get_docstring(fn) or "")
    a = fn.args
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    params = list(zip(positional, defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
    props, required = {}, []
    for arg, default in params:
        if arg.arg in ("self", "cls"):
            continue
        s = _annotation_schema(arg.annotation)
        if arg.arg in docs:
            s["description"] = docs[arg.arg]
        if default is None:
            required.append(arg.arg)
        else:
            try:
                value = ast.literal_eval(default)
                if value is None or isinstance(value, (str, int, float, bool)):
                    s["default"] = value
            except ValueError:
                pass
        props[arg.arg] = s
    return {"type": "function", "function": {
        "name": fn.name, "description": summary,
        "parameters": {"type": "object", "properties": props, "required": required}}}


def tool_instructions(schemas: list[dict]) -> str:
    """The tool-use instructions for a chat template that has no tools section (hermes format,
    which llmos.text.tool_calls parses)."""
    decls = "\n".join(json.dumps(s["function"], ensure_ascii=False) for s in schemas)
    return ("You can call these functions. To call one, reply with only\n"
            '<tool_call>{"name": NAME, "arguments": {...}}</tool_call>\n'
            "and wait for its result. Functions:\n<tools>\n" + decls + "\n</tools>")


class AppTools:
    """The tools module of one app. Loading reads its syntax tree (the functions and their
    schemas; no code runs); the module is imported only to run a call, and only when tools are
    allowed."""

    def __init__(self, spec, *, base: Path, app: str, file: str, line: int | None):
        self.spec, self.app, self.file, self.line = spec, app, file, line
        self.path = base / spec.module

        def err(problem, fld="tools"):
            return AppFileError(problem, file=file, line=line, field=fld)

        if self.path.suffix != ".py":
            raise err(f"the tools module {spec.module} must be a .py file")
        limit = limits.current().max_app_file_bytes
        try:
            with open(self.path, "rb") as f:
                source = f.read(limit + 1)
        except OSError as e:
            raise err(f"the tools module {spec.module} cannot be read next to the app ({self.path}: "
                      f"{e.strerror or e})") from None
        if len(source) > limit:
            raise err(f"the tools module {spec.module} is over {limit} bytes (llmos.limits.max_app_file_bytes)")
        try:
            tree = ast.parse(source, filename=str(self.path))
        except (SyntaxError, ValueError) as e:
            where = f" line {e.lineno}" if getattr(e, "lineno", None) else ""
            raise err(f"the tools module {spec.module} does not parse:{where} {getattr(e, 'msg', e)}") from None
        defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        if spec.functions is not None:
            missing = [f for f in spec.functions if f not in defs]
            if missing:
                raise err(f"the tools module {spec.module} defines no function {missing[0]!r} "
                          f"(it has: {', '.join(defs) or 'none'})", "tools.functions")
            chosen = [defs[f] for f in spec.functions]
        else:
            chosen = [d for name, d in defs.items() if not name.startswith("_")]
        if not chosen:
            raise err(f"the tools module {spec.module} defines no public function")
        async_ = [d.name for d in chosen if isinstance(d, ast.AsyncFunctionDef)]
        if async_:
            raise err(f"tool {async_[0]!r} is async; tools are plain functions")
        self._schemas = [function_schema(d) for d in chosen]
        self.names = [d.name for d in chosen]
        self._functions: dict | None = None
        self._lock = threading.Lock()

    def schemas(self) -> list[dict]:
        return [json.loads(json.dumps(s)) for s in self._schemas]

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
        out = {}
        for fn in self.names:
            obj = getattr(module, fn, None)
            if not callable(obj):
                raise AppFileError(f"the tools module {self.spec.module}: {fn} is not a function once imported",
                                   file=self.file, line=self.line, field="tools")
            out[fn] = obj
        return out

    def call(self, name: str, arguments: str, *, allow: bool) -> dict:
        """Runs one parsed call; returns {name, arguments, result | error}. Never raises for the
        tool's own failure: the model sees the error (and the log has it)."""
        try:
            args = json.loads(arguments) if arguments else {}
        except ValueError:
            args = None
        record: dict = {"name": name, "arguments": args if isinstance(args, dict) else arguments}
        if not allow:
            record["error"] = DISABLED
            log.info("app %s: tool %s(%s) refused: %s", self.app, name, _short(arguments), DISABLED)
            return record
        if name not in self.names or not isinstance(args, dict):
            record["error"] = f"no tool named {name!r}" if name not in self.names else "arguments are not a JSON object"
        else:
            fn = self.functions[name]
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
