"""`llmos.App`: one app file, loaded and validated, run as one-shot requests, streams and chats.

A request: inputs checked (inputs.py) -> knowledge searched -> system prompt and user message
rendered (prompt.py) -> history trimmed to `memory` turns and to the context -> generated on the
model's continuous-batching engine (so many apps and requests share one) with the output's
constraint (output.py) -> tool calls run and fed back, up to limits.max_tool_rounds (tools.py)
-> the output extracted. `stream` yields AppEvents as it goes; `run` collects them.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from llmos import limits
from llmos.apps import output as outputs
from llmos.apps.inputs import InputSpec, coerce_inputs, input_schema
from llmos.apps.prompt import AppTemplates
from llmos.apps.spec import KIND_INPUT, AppSpec, OutputSpec, _dotted, load_spec, read_schema_file
from llmos.apps.tools import AppTools, tool_instructions
from llmos.errors import AppFileError, InvalidInputError
from llmos.text import tool_calls

__all__ = ["App", "AppEvent", "AppResult"]

_TOP_LOGPROBS = 5


@dataclass
class AppEvent:
    """One step of a streamed app request: "meta" (first), "text", "tool", "done" (last)."""

    type: str
    text: str = ""
    data: dict | None = None

    def to_dict(self) -> dict:
        return {"type": self.type, "text": self.text, "data": self.data}


@dataclass
class AppResult:
    text: str
    output: object
    output_error: str | None = None
    citations: list[dict] = field(default_factory=list)
    tool_calls: list[dict] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    explain: dict | None = None

    def to_dict(self) -> dict:
        return _json_safe(asdict(self))


def _json_safe(v):
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if v is None or isinstance(v, (str, int, bool)):
        return v
    if isinstance(v, float):
        return v if v == v and abs(v) != float("inf") else None
    return str(v)


class App:
    """An app file, validated. Build with App.load(path)."""

    def __init__(self, spec: AppSpec, path: Path, *, templates: AppTemplates, output: OutputSpec,
                 tools: AppTools | None, model_ref: str, model=None, allow_tools: bool = True,
                 load_options: dict | None = None, knowledge_paths: list[Path] | None = None):
        self.spec = spec
        self.path = path
        self.name = spec.app
        self.kind = spec.kind
        self.description = spec.description
        self.model_ref = model_ref
        self.allow_tools = allow_tools
        self.output = output
        self._templates = templates
        self._tools = tools
        self._model = model
        self._load_options = dict(load_options or {})
        self._knowledge_paths = knowledge_paths
        self._index = None
        self._lock = threading.Lock()
        self._specs = [InputSpec.from_decl(n, d) for n, d in spec.inputs.items()]

    # ---- loading --------------------------------------------------------------------------

    @classmethod
    def load(cls, path, *, model=None, allow_tools: bool = True, load_options: dict | None = None) -> "App":
        """Reads and validates the app file and what it names (schema file, tools module,
        knowledge paths); AppFileError names the file, line and field of any problem. The
        model loads on first use unless `model` (an llmos.Model) is given to share."""
        path = Path(path)
        file = str(path)
        spec, parsed = load_spec(path)
        base = path.resolve().parent  # absolute, so the knowledge paths joined to it do not depend on the cwd

        def err(problem, loc, fld=None):
            return AppFileError(problem, file=file, line=parsed.line_of(loc), field=fld or _dotted(loc))

        need = KIND_INPUT.get(spec.kind)
        if need and need not in spec.inputs:
            raise err(f"a {spec.kind} app renders `{{{{ {need} }}}}` as the user message: declare the input "
                      f"`{need}` under `inputs:`", ("kind",))
        specs = [InputSpec.from_decl(n, d) for n, d in spec.inputs.items()]
        for s in specs:
            if s.default is not None:
                try:
                    s.coerce(s.default, app=spec.app)
                except InvalidInputError as e:
                    raise err(f"the default does not fit the input: {str(e).split(': ', 2)[-1]}",
                              ("inputs", s.name, "default")) from None

        output = spec.output_spec
        if output.kind == "json" and output.schema_file:
            output = OutputSpec("json", schema=read_schema_file(spec, parsed, base, file),
                                schema_file=output.schema_file)
        if output.kind == "json":
            _check_schema(output.schema, err)
            spec = spec.model_copy(update={"output": output})  # spec.output carries the schema read

        tools = None
        if spec.tools_spec is not None:
            tools = AppTools(spec.tools_spec, base=base, app=spec.app, file=file, line=parsed.line_of(("tools",)))

        knowledge_paths = None
        if spec.knowledge:
            knowledge_paths = []
            for i, k in enumerate(spec.knowledge):
                p = base / k
                if not p.exists():
                    raise err(f"{k}: no such file or folder (relative to the app file: {p})", ("knowledge", i))
                knowledge_paths.append(p)

        templates = AppTemplates(spec, parsed, file, has_knowledge=bool(spec.knowledge))

        for i, t in enumerate(spec.tests):
            try:
                coerce_inputs(specs, t.inputs, app=spec.app)
            except InvalidInputError as e:
                raise err(str(e).removeprefix(f"{spec.app}: "), ("tests", i, "inputs", e.field)
                          if e.field in t.inputs else ("tests", i, "inputs")) from None
            if spec.kind == "chat" and not t.message:
                raise err("a test of a chat app needs `message:` (what the user says)", ("tests", i))
            if t.expect.json_schema is True and output.kind != "json":
                raise err("json_schema: true checks against the app's output schema, but the app's output is "
                          f"{output.describe()}: give a schema here instead", ("tests", i, "expect", "json_schema"))
            if t.expect.json_schema not in (None, True, False):
                _check_schema(t.expect.json_schema, err, ("tests", i, "expect", "json_schema"))

        if spec.model == "default":
            model_ref = "default"
        elif _looks_like_path(spec.model) or (base / spec.model).exists():
            p = (base / os.path.expanduser(spec.model)).resolve()
            if not p.exists():
                raise err(f"{spec.model}: no such model folder (relative to the app file: {p})", ("model",))
            model_ref = str(p)
        else:
            model_ref = spec.model
        return cls(spec, path, templates=templates, output=output, tools=tools, model_ref=model_ref, model=model,
                   allow_tools=allow_tools, load_options=load_options, knowledge_paths=knowledge_paths)

    @property
    def model(self):
        """The llmos.Model the app runs on (loaded on first access)."""
        with self._lock:
            if self._model is None:
                if self.model_ref == "default":
                    from llmos.runtime.default_model import load_default
                    self._model = load_default(**self._load_options)
                else:
                    from llmos.runtime.load import load
                    self._model = load(self.model_ref, **self._load_options)
            return self._model

    def index(self, progress=None):
        """The knowledge index (built on first use; progress(done, total) while it builds), or None."""
        if not self._knowledge_paths:
            return None
        with self._lock:
            if self._index is None:
                from llmos.apps.knowledge import KnowledgeIndex
                self._index = KnowledgeIndex.build(self._knowledge_paths, base=self.path.parent, progress=progress)
            return self._index

    def __repr__(self) -> str:
        return f"App({self.name!r}, kind={self.kind!r}, model={self.model_ref!r}, file={str(self.path)!r})"

    # ---- inputs ---------------------------------------------------------------------------

    def input_specs(self) -> list[InputSpec]:
        return list(self._specs)

    def input_schema(self) -> dict:
        """JSON schema (an object) of the inputs, plus `message` for a chat app."""
        return input_schema(self._specs, chat=self.kind == "chat")

    def coerce_inputs(self, raw: dict, *, from_strings: bool = False) -> dict:
        return coerce_inputs(self._specs, raw, from_strings=from_strings, app=self.name)

    # ---- running --------------------------------------------------------------------------

    def run(self, *, history: list[dict] | None = None, message: str | None = None, explain: bool = False,
            cancel=None, params: dict | None = None, **inputs) -> AppResult:
        """One request, whole: the AppResult of the reply."""
        result = None
        for event in self._events(history, message, explain, cancel, params, inputs):
            if event.type == "done":
                result = event.data["_result"]
        return result

    def stream(self, *, history: list[dict] | None = None, message: str | None = None, explain: bool = False,
               cancel=None, params: dict | None = None, **inputs) -> Iterator[AppEvent]:
        """One request as AppEvents: "meta", then "text" pieces and "tool" calls, then "done"
        (data = AppResult.to_dict()). Closing the iterator stops generation."""
        for event in self._events(history, message, explain, cancel, params, inputs):
            if event.type == "done":
                event = AppEvent("done", data=event.data["_result"].to_dict())
            yield event

    def chat(self, message: str, history: list[dict] | None = None, *, stream: bool = False, **inputs):
        """A chat turn: the reply to `message` after `history` ([{role, content}], trimmed to the
        app's `memory`)."""
        if stream:
            return self.stream(message=message, history=history, **inputs)
        return self.run(message=message, history=history, **inputs)

    def test(self):
        """Runs the app's `tests:` (llmos.apps.testing): a TestReport."""
        from llmos.apps.testing import run_tests
        return run_tests(self)

    # ---- internals ------------------------------------------------------------------------

    def _events(self, history, message, explain, cancel, params, raw_inputs) -> Iterator[AppEvent]:
        inputs = self.coerce_inputs(raw_inputs)
        message = self._check_message(message)
        history = self._check_history(history)
        model = self.model
        t0 = time.perf_counter()  # timings leave out loading the model (once per app)
        options = self._options(model, params, explain)

        chunks = self._retrieve(inputs, message)
        # An optional input left out renders as nothing (not "None"), and is false in an {% if %}.
        variables = {**{k: "" if v is None else v for k, v in inputs.items()},
                     **({"chunks": chunks} if self._knowledge_paths else {}),
                     **({"message": message or ""} if self.kind == "chat" else {})}
        system = self._templates.system(variables, chunks)
        user = self._templates.user_message(variables, message, chunks)

        schemas = None
        tool_names: set[str] = set()
        template_tools = False
        if self._tools is not None:
            schemas = self._tools.schemas()
            tool_names = {s["function"]["name"] for s in schemas}
            template = model.tokenizer.chat_templates.get("tool_use") or model.tokenizer.chat_templates.get("default")
            template_tools = bool(template) and "tools" in template
            if not template_tools:
                system = (system + "\n\n" if system else "") + tool_instructions(schemas)
        else:
            options.update(outputs.constraint_options(self.output, self.name))

        head = [{"role": "system", "content": system}] if system else []
        turns = self._trim_memory(history)
        messages = head + turns + [{"role": "user", "content": user}]
        extra = {"tools": schemas} if template_tools else {}
        ids, messages = self._fit(model, messages, options, extra)

        citations = [dict(c) for c in chunks]
        meta = {"citations": citations, "prompt_tokens": len(ids)}
        prompt_text = None
        if explain:
            prompt_text = model.apply_chat_template(messages, **extra)
            meta["prompt"] = prompt_text
            meta["chunks"] = citations
        yield AppEvent("meta", data=meta)

        fmt = tool_calls.format_for(model.tokenizer.chat_templates.get("tool_use")
                                    or model.tokenizer.chat_templates.get("default")) if schemas else None
        calls_made: list[dict] = []
        tokens_out, first_token_at = 0, None
        explained: list[dict] = []
        prompt_tokens = len(ids)
        text, finish = "", "stop"
        for round_ in range(limits.current().max_tool_rounds + 1):
            pieces_text: list[str] = []
            finish = "stop"
            held = schemas is not None  # a reply that may be a tool call is held until complete
            for piece in self._generate(model, ids, options, cancel):
                if first_token_at is None and piece["tokens"]:
                    first_token_at = time.perf_counter()
                tokens_out += len(piece["tokens"])
                if explain:
                    explained.extend(self._explain_tokens(model, piece))
                pieces_text.append(piece["text"])
                if piece["text"] and not held:
                    yield AppEvent("text", text=piece["text"])
                if piece["finish"]:
                    finish = piece["finish"]
            reply = "".join(pieces_text)
            if schemas is None:
                text = reply
                break
            content, calls = tool_calls.parse(reply, fmt, tool_names)
            if not calls:
                text = reply
                if text:
                    yield AppEvent("text", text=text)
                break
            text = content or ""
            if round_ == limits.current().max_tool_rounds:
                finish = "tool_rounds"
                if text:
                    yield AppEvent("text", text=text)
                break
            messages = messages + [{"role": "assistant", "content": reply}]
            for call in calls:
                record = self._tools.call(call.name, call.arguments, allow=self.allow_tools)
                calls_made.append(record)
                yield AppEvent("tool", data=dict(record))
                result = record.get("result") if "result" in record else "error: " + record["error"]
                messages.append({"role": "tool", "name": call.name, "content": result})
            ids, messages = self._fit(model, messages, options, extra)
            prompt_tokens += len(ids)

        if finish == "eos":
            finish = "stop"
        value, error = outputs.extract(text, self.output, finish)
        total = time.perf_counter() - t0
        ttft = (first_token_at - t0) if first_token_at is not None else None
        gen_time = (time.perf_counter() - first_token_at) if first_token_at is not None else None
        timings = {"ttft_s": ttft, "total_s": total,
                   "tokens_per_s": (tokens_out - 1) / gen_time if gen_time and tokens_out > 1 else None}
        result = AppResult(text=text, output=value, output_error=error, citations=citations, tool_calls=calls_made,
                           finish_reason=finish, usage={"prompt_tokens": prompt_tokens, "completion_tokens": tokens_out},
                           timings=timings)
        if explain:
            result.explain = {"prompt": prompt_text, "chunks": citations, "prompt_tokens": len(ids) if not calls_made
                              else prompt_tokens, "tokens": explained, "timings": timings}
        yield AppEvent("done", data={"_result": result})

    def _check_message(self, message):
        if self.kind != "chat":
            if message not in (None, ""):
                raise InvalidInputError(f"{self.name}: message is for chat apps; this is a {self.kind} app "
                                        "(give its inputs)", field="message")
            return None
        if not isinstance(message, str) or not message.strip():
            raise InvalidInputError(f"{self.name}: a chat app needs a message (a non-empty string)", field="message")
        n = limits.current().max_app_input_chars
        if len(message) > n:
            raise InvalidInputError(f"{self.name}: message: {len(message)} characters, over the limit of {n} "
                                    "(llmos.limits.max_app_input_chars)", field="message")
        return message

    def _check_history(self, history) -> list[dict]:
        if history is None:
            return []
        if not isinstance(history, list):
            raise InvalidInputError(f"{self.name}: history: expected a list of {{role, content}}", field="history")
        limits.check("max_app_history_messages", len(history), what="history")
        out = []
        for i, m in enumerate(history):
            if (not isinstance(m, dict) or m.get("role") not in ("user", "assistant")
                    or not isinstance(m.get("content"), str) or set(m) - {"role", "content"}):
                raise InvalidInputError(f"{self.name}: history[{i}]: expected {{\"role\": \"user\" or \"assistant\", "
                                        "\"content\": string}", field="history")
            if len(m["content"]) > limits.current().max_app_input_chars:
                raise InvalidInputError(f"{self.name}: history[{i}]: over max_app_input_chars (llmos.limits)",
                                        field="history")
            out.append({"role": m["role"], "content": m["content"]})
        return out

    def _trim_memory(self, history: list[dict]) -> list[dict]:
        """The last `memory` turns of the history (a turn starts at a user message)."""
        keep = self.spec.memory
        if keep == 0 or not history:
            return []
        starts = [i for i, m in enumerate(history) if m["role"] == "user"]
        if len(starts) <= keep:
            return history[starts[0]:] if starts else []
        return history[starts[-keep]:]

    def _options(self, model, params, explain) -> dict:
        options = dict(self.spec.params)
        if params:
            if not isinstance(params, dict):
                raise InvalidInputError(f"{self.name}: params: expected an object of generation options",
                                        field="params")
            from llmos.apps.spec import _STRUCTURED_PARAMS
            for k in params:
                if k in _STRUCTURED_PARAMS:
                    raise InvalidInputError(f"{self.name}: params: {k} is set by the app's output "
                                            f"({self.output.describe()})", field=k)
            options.update(params)
        if explain:
            options.update(logprobs=True, top_logprobs=_TOP_LOGPROBS)
        return options

    def _fit(self, model, messages, options, extra) -> tuple[list[int], list[dict]]:
        """The prompt ids, older turns dropped (the system message and last turn kept) until the
        reply's max_new_tokens fits the context."""
        max_new = options.get("max_new_tokens") or model.generation_config.max_new_tokens or 1
        ctx = model.config.max_position_embeddings
        return model.fit_chat(messages, reserve=max_new, truncate="oldest",
                              need=f" in {self.name}'s model context of {ctx} with max_new_tokens={max_new}", **extra)

    def _retrieve(self, inputs, message) -> list[dict]:
        if not self._knowledge_paths:
            return []
        need = KIND_INPUT.get(self.kind)
        if self.kind == "chat":
            query = message or ""
        elif need:
            query = str(inputs.get(need) or "")
        else:
            query = " ".join(str(v) for v in inputs.values() if isinstance(v, str))
        found = self.index().search(query, k=self.spec.retrieve) if query.strip() else []
        return [{"id": i, "source": c.source, "lines": list(c.lines), "text": c.text, "score": float(c.score)}
                for i, c in enumerate(found, start=1)]

    def _generate(self, model, ids, options, cancel) -> Iterator[dict]:
        """Pieces of the reply: {text, tokens, logprobs, top, finish}; on the engine when the
        model has one (continuous batching shared by every request), else Model.generate."""
        if model.backend.name == "cpu" and int(options.get("num_beams") or 1) == 1:
            req = model.engine.submit(ids, cancel=cancel, **options)
            try:
                for p in req:
                    yield {"text": p.text, "tokens": p.token_ids, "logprobs": p.logprobs, "top": p.top_logprobs,
                           "finish": p.finish_reason}
            finally:
                req.cancel()
            return
        g = model.generate(ids, cancel=cancel, **options)
        yield {"text": g.text, "tokens": g.token_ids, "logprobs": g.logprobs, "top": g.top_logprobs,
               "finish": g.finish_reason}

    @staticmethod
    def _explain_tokens(model, piece) -> list[dict]:
        out = []
        tok = model.tokenizer
        for k, t in enumerate(piece["tokens"]):
            lp = piece["logprobs"][k] if piece["logprobs"] and k < len(piece["logprobs"]) else None
            top = piece["top"][k] if piece["top"] and k < len(piece["top"]) else []
            out.append({"id": int(t), "text": tok.decode([int(t)], skip_special_tokens=False), "logprob": lp,
                        "top": [{"id": int(i), "text": tok.decode([int(i)], skip_special_tokens=False),
                                 "logprob": float(v)} for i, v in top]})
        return out


def _looks_like_path(ref: str) -> bool:
    """A model named by a path (relative to the app file), not a registry name."""
    return ref.startswith((".", "/", "~")) or ref.endswith("/")


def _check_schema(schema, err, loc=("output",)) -> None:
    try:
        import jsonschema
    except ImportError:
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise err(f"not a valid JSON schema: {e.message}", loc) from None
