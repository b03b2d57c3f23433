"""The app file `NAME.app.md`: YAML front matter between two `---` lines, then the body (the
system prompt, a Jinja template). `load_spec` reads it into an `AppSpec` (pydantic, unknown keys
refused with a did-you-mean) and checks what needs the file's folder (the output schema file, the
tools module, the knowledge paths). The front matter is parsed with `yaml.compose`, so every
error, whether YAML's, pydantic's or a later check's, names the line of the app file it is about.
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmos import limits
from llmos.errors import AppFileError

__all__ = ["AppSpec", "InputDecl", "TestSpec", "Expect", "MetricSpec", "OutputSpec", "ToolsSpec",
           "KINDS", "INPUT_TYPES", "RESERVED_INPUTS", "load_spec", "parse_app_text"]

KINDS = ("chat", "qa", "translate", "summarize", "generate")
INPUT_TYPES = ("string", "text", "integer", "number", "boolean", "choice")
# The input a kind renders as its default user message; loading checks the app declares it.
KIND_INPUT = {"qa": "question", "translate": "text", "summarize": "text"}
# Names that App.run takes as keyword arguments of its own, or that templates get besides inputs.
RESERVED_INPUTS = frozenset({"message", "history", "explain", "cancel", "params", "stream", "chunks", "self"})
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
INPUT_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
LANG_RE = re.compile(r"[A-Za-z0-9_+#.-]{1,32}")
# Structured-output options belong to `output:`, where the app's reply is then parsed.
_STRUCTURED_PARAMS = ("response_format", "guided_json", "guided_regex", "guided_grammar")
# Values a front matter may expand to (aliases repeat a node without repeating its text).
_MAX_NODES = 100_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class InputDecl(_Strict):
    """One entry of `inputs:` (see llmos.apps.inputs.InputSpec for how values are checked)."""

    type: Literal["string", "text", "integer", "number", "boolean", "choice"] = "string"
    default: Any = None
    description: str = ""
    required: bool | None = None
    min: int | float | None = None
    max: int | float | None = None
    choices: list[str | int | float | bool] | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if self.type == "choice" and not self.choices:
            raise ValueError("type choice needs a non-empty `choices` list")
        if self.type != "choice" and self.choices is not None:
            raise ValueError(f"`choices` is for type choice, not {self.type}")
        if self.type == "boolean" and (self.min is not None or self.max is not None):
            raise ValueError("`min`/`max` do not apply to type boolean")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is over max ({self.max})")
        if self.type in ("string", "text") and any(v is not None and (v < 0 or v != int(v))
                                                   for v in (self.min, self.max)):
            raise ValueError("`min`/`max` of a string are lengths: whole numbers >= 0")
        if self.required and self.default is not None:
            raise ValueError("an input with a default is not required (drop `required: true` or the default)")
        return self


class MetricSpec(_Strict):
    name: Literal["bleu", "chrf", "rouge"]
    reference: str
    min: float


class Expect(_Strict):
    """What a test's output must satisfy; every key given must hold."""

    contains: str | list[str] | None = None
    regex: str | None = None
    json_schema: bool | dict | None = None
    parses: Literal["python"] | None = None
    citations: int | None = Field(default=None, ge=0)
    metric: MetricSpec | None = None

    @field_validator("regex")
    @classmethod
    def _regex(cls, v):
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from None
        return v

    @model_validator(mode="after")
    def _not_empty(self):
        if all(getattr(self, k) is None for k in type(self).model_fields):
            raise ValueError(f"expect nothing: give at least one of {', '.join(type(self).model_fields)}")
        return self


class TestSpec(_Strict):
    __test__ = False  # not a pytest class

    name: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    message: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    expect: Expect


class OutputSpec(BaseModel):
    """`output:` normalized: kind text | json | code; schema (json; read from schema_file when
    the app names one); lang (code). `model_dump()` is its JSON form (GET /v1/apps)."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    kind: Literal["text", "json", "code"] = "text"
    schema_: dict | None = Field(default=None, alias="schema")
    schema_file: str | None = None
    lang: str | None = None

    def __init__(self, kind: str = "text", **kw):
        super().__init__(kind=kind, **kw)

    @property
    def schema(self) -> dict | None:
        return self.schema_

    def model_dump(self, **kw) -> dict:
        return super().model_dump(by_alias=True, **kw)

    def describe(self) -> str:
        if self.kind == "json":
            return f"json:{self.schema_file}" if self.schema_file else "json"
        return f"code:{self.lang}" if self.kind == "code" else "text"


class ToolsSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    module: str
    functions: tuple[str, ...] | None = None


class AppSpec(_Strict):
    """The front matter of an app file, plus `body` (the raw template after it)."""

    app: str
    kind: Literal["chat", "qa", "translate", "summarize", "generate"]
    description: str = ""
    model: str = "default"
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, InputDecl] = Field(default_factory=dict)
    user: str | None = None
    knowledge: list[str] | None = None
    retrieve: int = Field(default=3, ge=1, le=50)
    memory: int = Field(default=6, ge=0, le=10_000)
    tools: Any = None
    output: Any = Field(default="text", validate_default=True)
    tests: list[TestSpec] = Field(default_factory=list)
    body: str = ""

    @field_validator("app")
    @classmethod
    def _name(cls, v):
        if not NAME_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not an app name: lower-case letters, digits and '-', starting with a "
                             "letter or digit, at most 64 characters")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v):
        if not v.strip():
            raise ValueError("empty model name (leave `model` out for the bundled model)")
        return v

    @field_validator("knowledge", mode="before")
    @classmethod
    def _knowledge(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("params")
    @classmethod
    def _params(cls, v):
        from llmos.runtime.generation import GenerationConfig

        names = GenerationConfig.field_names()
        for k in v:
            if k in _STRUCTURED_PARAMS:
                raise ValueError(f"{k} is not a param of an app: say `output: json:...` or `output: code:LANG`")
            if k not in names:
                raise ValueError(f"unknown generation option {k!r}{_did_you_mean(k, names)}")
        return v

    @field_validator("inputs")
    @classmethod
    def _input_names(cls, v):
        for name in v:
            if not INPUT_NAME_RE.fullmatch(name):
                raise ValueError(f"input name {name!r} is not an identifier (letters, digits, '_')")
            if name in RESERVED_INPUTS:
                raise ValueError(f"input name {name!r} is reserved (it is an argument of App.run or a "
                                 "template variable)")
        return v

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, v):
        if v is None:
            return None
        if isinstance(v, str):
            return ToolsSpec(module=_nonempty(v, "tools"))
        if isinstance(v, dict):
            extra = set(v) - {"module", "functions"}
            if extra:
                k = sorted(extra)[0]
                raise ValueError(f"unknown key {k!r}{_did_you_mean(k, ['module', 'functions'])}")
            if not isinstance(v.get("module"), str):
                raise ValueError("`module` (the Python file next to the app) is required, as a string")
            fns = v.get("functions")
            if fns is not None and (not isinstance(fns, list) or not fns
                                    or not all(isinstance(f, str) and f.isidentifier() for f in fns)):
                raise ValueError("`functions` must be a non-empty list of function names")
            return ToolsSpec(module=_nonempty(v["module"], "module"), functions=tuple(fns) if fns else None)
        raise ValueError("expected a module file name (tools: tools.py) or {module: ..., functions: [...]}")

    @field_validator("output", mode="before")
    @classmethod
    def _output(cls, v):
        if isinstance(v, dict):
            if set(v) != {"json"} or not isinstance(v["json"], dict):
                raise ValueError("an inline output is {json: {...a JSON schema...}}")
            return OutputSpec("json", schema=v["json"])
        if not isinstance(v, str):
            raise ValueError("expected text, json:<schema file>, {json: {...schema...}} or code:<language>")
        if v == "text":
            return OutputSpec()
        kind, _, arg = v.partition(":")
        if kind == "json" and arg.strip():
            return OutputSpec("json", schema_file=arg.strip())
        if kind == "code" and LANG_RE.fullmatch(arg.strip()):
            return OutputSpec("code", lang=arg.strip().lower())
        raise ValueError(f"{v!r}: expected text, json:<schema file>, {{json: {{...schema...}}}} or code:<language>")

    @field_validator("tests")
    @classmethod
    def _tests(cls, v):
        if len(v) > limits.current().max_app_tests:
            raise ValueError(f"{len(v)} tests, over the limit of {limits.current().max_app_tests} "
                             "(llmos.limits.max_app_tests)")
        return v

    @property
    def output_spec(self) -> OutputSpec:
        return self.output

    @property
    def tools_spec(self) -> ToolsSpec | None:
        return self.tools


def _nonempty(v: str, what: str) -> str:
    if not v.strip():
        raise ValueError(f"empty {what}")
    return v.strip()


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---- reading the file ----------------------------------------------------------------------


@dataclass
class ParsedFile:
    data: dict
    body: str
    body_line: int                       # file line where the body starts
    lines: dict[tuple, int] = field(default_factory=dict)  # key path -> file line of its value
    key_lines: dict[tuple, int] = field(default_factory=dict)  # key path -> file line of the key

    def line_of(self, loc: tuple) -> int | None:
        """The line of the deepest part of `loc` that the front matter has (keys first)."""
        for n in range(len(loc), 0, -1):
            p = tuple(loc[:n])
            if p in self.key_lines:
                return self.key_lines[p]
            if p in self.lines:
                return self.lines[p]
        return 1


def load_spec(path: Path) -> tuple[AppSpec, ParsedFile]:
    """Reads and validates an app file (not yet the files it names: see App.load)."""
    path = Path(path)
    shown = str(path)
    limit = limits.current().max_app_file_bytes
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        raise AppFileError("no such app file", file=shown) from None
    except IsADirectoryError:
        raise AppFileError("is a folder, not an app file (NAME.app.md)", file=shown) from None
    except OSError as e:
        raise AppFileError(f"cannot be read: {e.strerror or e}", file=shown) from None
    if len(raw) > limit:
        raise AppFileError(f"the app file is over the limit of {limit} bytes (llmos.limits.max_app_file_bytes; "
                           "raise it with llmos.limits.configure(max_app_file_bytes=...))", file=shown)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise AppFileError(f"not UTF-8 text (byte {e.start})", file=shown, line=line) from None
    return parse_app_text(text, shown)


def parse_app_text(text: str, file: str) -> tuple[AppSpec, ParsedFile]:
    parsed = _split(text, file)
    if "body" in parsed.data:
        raise AppFileError("not a front-matter key: the body is the text after the closing ---", file=file,
                           line=parsed.line_of(("body",)), field="body")
    try:
        spec = AppSpec.model_validate({**parsed.data, "body": parsed.body})
    except ValidationError as e:
        raise _app_error(e, parsed, file) from None
    return spec, parsed


def _split(text: str, file: str) -> ParsedFile:
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip("\r\n").rstrip() != "---":
        raise AppFileError("no front matter: an app file starts with a line `---`, then YAML (app:, kind:, ...), "
                           "then a closing `---` line, then the system prompt", file=file, line=1)
    end = next((i for i in range(1, len(lines)) if lines[i].rstrip("\r\n").rstrip() in ("---", "...")), None)
    if end is None:
        raise AppFileError("the front matter has no closing `---` line", file=file, line=1)
    front = "".join(lines[1:end])
    body = "".join(lines[end + 1:])
    offset = 2  # YAML's line 0 is the file's line 2
    try:
        node = yaml.compose(front, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join(x for x in (e.context, e.problem) if x) or str(e)
        raise AppFileError(f"invalid YAML: {problem}", file=file,
                           line=mark.line + offset if mark else None) from None
    except yaml.YAMLError as e:
        raise AppFileError(f"invalid YAML: {e}", file=file, line=2) from None
    if node is None:
        raise AppFileError("the front matter is empty (it needs at least `app:` and `kind:`)", file=file, line=2)
    if not isinstance(node, yaml.MappingNode):
        raise AppFileError("the front matter must be a mapping of keys (app:, kind:, ...)", file=file,
                           line=node.start_mark.line + offset)
    out = ParsedFile({}, body, end + 2)
    data = _Converter(file, offset, out).value(node, ())
    out.data = data
    return out


class _Converter:
    """YAML nodes -> Python values, noting the line of every key path."""

    def __init__(self, file: str, offset: int, out: ParsedFile):
        self.file, self.offset, self.out = file, offset, out
        self.constructor = yaml.SafeLoader("")
        self.count = 0

    def value(self, node, path: tuple):
        self.count += 1
        if self.count > _MAX_NODES:
            raise AppFileError(f"the front matter expands to over {_MAX_NODES} values (YAML aliases?)",
                               file=self.file, line=node.start_mark.line + self.offset)
        self.out.lines[path] = node.start_mark.line + self.offset
        if isinstance(node, yaml.MappingNode):
            result = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise AppFileError("YAML merge keys (<<) are not supported in an app file", file=self.file,
                                       line=key_node.start_mark.line + self.offset, field=_dotted(path) or None)
                key = self.constructor.construct_object(key_node, deep=True) \
                    if isinstance(key_node, yaml.ScalarNode) else None
                where = key_node.start_mark.line + self.offset
                if not isinstance(key, str):
                    raise AppFileError(f"keys must be strings, got {key!r}", file=self.file, line=where,
                                       field=_dotted(path) or None)
                if key in result:
                    raise AppFileError(f"duplicate key {key!r}", file=self.file, line=where,
                                       field=_dotted(path + (key,)))
                self.out.key_lines[path + (key,)] = where
                result[key] = self.value(value_node, path + (key,))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item, path + (i,)) for i, item in enumerate(node.value)]
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            raise AppFileError(f"invalid value: {e}", file=self.file, line=node.start_mark.line + self.offset,
                               field=_dotted(path) or None) from None


def _dotted(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _app_error(e: ValidationError, parsed: ParsedFile, file: str) -> AppFileError:
    err = e.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"])
    kind = err["type"]
    # pydantic names a union's branch in the location (`str`, `list[str]`): not a key of the file.
    loc = tuple(p for p in loc if isinstance(p, int) or not _is_branch(p))
    where = parsed.line_of(loc)
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        problem = f"unknown key{_did_you_mean(loc[-1], known)}; known keys here: {', '.join(known)}"
    elif kind == "missing":
        problem = "is required"
        where = parsed.line_of(loc[:-1]) if loc[:-1] else 1
    elif kind == "literal_error" and err.get("ctx", {}).get("expected"):
        got = err.get("input")
        problem = f"{got!r} is not one of {err['ctx']['expected']}"
        if isinstance(got, str):
            options = re.findall(r"'([^']*)'", err["ctx"]["expected"])
            problem += _did_you_mean(got, options)
    else:
        problem = err["msg"].removeprefix("Value error, ")
        if "input" in err and kind.endswith("_type"):
            problem += f" (got {_short(err['input'])})"
    return AppFileError(problem, file=file, line=where, field=_dotted(loc) or None)


def _is_branch(part: str) -> bool:
    return any(c in part for c in "[]()") or part in ("str", "int", "float", "bool", "dict", "list",
                                                       "function-after", "function-before")


def _short(value, n: int = 60) -> str:
    r = repr(value)
    return r if len(r) <= n else r[:n - 3] + "..."


def _known_keys(loc: tuple) -> list[str]:
    """The keys allowed where `loc` points (the fields of the model found there)."""
    types_at: list = [AppSpec]
    for part in loc:
        nxt = []
        for t in _expand(types_at):
            if isinstance(t, type) and issubclass(t, BaseModel):
                if isinstance(part, str) and part in t.model_fields:
                    nxt.append(t.model_fields[part].annotation)
            elif typing.get_origin(t) is dict and not isinstance(part, int):
                nxt.append(typing.get_args(t)[1])
            elif typing.get_origin(t) is list and isinstance(part, int):
                nxt.append(typing.get_args(t)[0])
        types_at = nxt
    for t in _expand(types_at):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return [k for k in t.model_fields if k != "body"]
    return []


def _expand(ts) -> list:
    out = []
    for t in ts:
        if typing.get_origin(t) in (typing.Union, types.UnionType):
            out.extend(_expand(typing.get_args(t)))
        else:
            out.append(t)
    return out


def read_schema_file(spec: AppSpec, parsed: ParsedFile, base: Path, file: str) -> dict:
    """The JSON schema an `output: json:FILE` names (relative to the app file's folder)."""
    out = spec.output_spec
    line = parsed.line_of(("output",))
    p = base / out.schema_file
    limit = limits.current().max_app_schema_bytes
    try:
        with open(p, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise AppFileError(f"the schema file {out.schema_file} cannot be read ({e.strerror or e})", file=file,
                           line=line, field="output") from None
    if len(raw) > limit:
        raise AppFileError(f"the schema file {out.schema_file} is over {limit} bytes "
                           "(llmos.limits.max_app_schema_bytes)", file=file, line=line, field="output")
    try:
        schema = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise AppFileError(f"the schema file {out.schema_file} is not JSON: {e}", file=file, line=line,
                           field="output") from None
    if not isinstance(schema, dict):
        raise AppFileError(f"the schema file {out.schema_file} must hold a JSON object (a JSON schema)",
                           file=file, line=line, field="output")
    return schema
