"""A stand-in for llmos.App (the contract in the apps API: name, kind, model_ref, input_schema,
input_specs, coerce_inputs, stream) whose replies are known words, paced so that a stream lasts:
the HTTP routes and the page are tested on it without a model's timing or wording."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from llmos.errors import CancelledError, InvalidInputError


@dataclass
class Spec:
    name: str
    type: str = "string"
    default: object = None
    description: str = ""
    required: bool = False
    choices: list | None = None
    min: float | None = None
    max: float | None = None


@dataclass
class Event:
    type: str
    text: str = ""
    data: dict | None = None


@dataclass
class FakeApp:
    name: str = "writer"
    kind: str = "generate"
    description: str = "Writes a few words"
    model_ref: str = "fake-model"
    delay: float = 0.05
    allow_tools: bool = False
    specs: list = field(default_factory=lambda: [
        Spec("topic", "text", description="What to write about", required=True),
        Spec("tone", "choice", "friendly", "How it sounds", choices=["formal", "friendly"]),
        Spec("words", "integer", 8, "How many words", min=1, max=40),
        Spec("shout", "boolean", False, "Upper case")])
    calls: list = field(default_factory=list)
    cancelled: list = field(default_factory=list)

    def __post_init__(self):
        self.path = Path(f"/apps/{self.name}.app.md")
        self.output = SimpleNamespace(kind="text", schema=None, describe=lambda: "text")

    def input_specs(self):
        return list(self.specs)

    def input_schema(self):
        kinds = {"text": "string", "string": "string", "choice": "string", "integer": "integer", "boolean": "boolean"}
        props = {s.name: {"type": kinds[s.type], "description": s.description} for s in self.specs}
        if self.kind == "chat":
            props["message"] = {"type": "string"}
        return {"type": "object", "properties": props, "required": [s.name for s in self.specs if s.required]}

    def coerce_inputs(self, raw: dict, *, from_strings: bool = False) -> dict:
        out = {}
        for key in raw:
            if key not in {s.name for s in self.specs}:
                raise InvalidInputError(f"{self.name}: unknown input {key!r}", field=key)
        for s in self.specs:
            value = raw.get(s.name, s.default)
            if value is None:
                if s.required:
                    raise InvalidInputError(f"{self.name}: input {s.name!r} is required", field=s.name)
                continue
            ok = {"integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "boolean": lambda v: isinstance(v, bool), "choice": lambda v: v in s.choices}.get(
                s.type, lambda v: isinstance(v, str))(value)
            if not ok or (s.max is not None and isinstance(value, int) and not s.min <= value <= s.max):
                raise InvalidInputError(f"{self.name}: input {s.name!r}: bad value {value!r}", field=s.name)
            out[s.name] = value
        return out

    def reply_words(self, message=None, history=None, **inputs) -> list[str]:
        if self.kind == "chat":
            return [f"turn-{len(history or []) // 2 + 1}", "you", "said", *message.split()]
        words = [f"{inputs['tone']}-{i}" for i in range(inputs["words"])]
        return [w.upper() for w in words] if inputs["shout"] else words

    def stream(self, *, history=None, message=None, explain=False, cancel=None, params=None, **inputs):
        self.calls.append({"history": history, "message": message, "explain": explain, "params": params, **inputs})
        if params and "temperature" in params and not 0 <= params["temperature"] <= 2:
            raise InvalidInputError(f"temperature: {params['temperature']} is outside [0, 2]", field="temperature")
        start = time.monotonic()
        yield Event("meta", data={"citations": [{"id": 1, "source": "docs/faq.md", "lines": [3, 9],
                                                 "text": "Acme ships worldwide.", "score": 1.5}], "prompt_tokens": 7})
        if inputs.get("topic") == "tools":
            result = {"result": "ok"} if self.allow_tools else {
                "error": "tools are disabled (start the server with --allow-tools)"}
            yield Event("tool", data={"name": "handoff", "arguments": {}, **result})
        words = self.reply_words(message=message, history=history, **inputs)
        pieces = []
        try:
            for i, w in enumerate(words):
                if cancel is not None and cancel.cancelled():
                    raise CancelledError("cancelled")
                time.sleep(self.delay)
                pieces.append(w if i == 0 else " " + w)
                yield Event("text", text=pieces[-1])
        except (CancelledError, GeneratorExit):  # cancelled, or closed by its caller: stopped either way
            self.cancelled.append(self.calls[-1])
            raise
        text = "".join(pieces)
        total = time.monotonic() - start
        result = {"text": text, "output": text, "output_error": None,
                  "citations": [{"id": 1, "source": "docs/faq.md", "lines": [3, 9], "text": "Acme ships worldwide.",
                                 "score": 1.5}],
                  "tool_calls": [], "finish_reason": "stop",
                  "usage": {"prompt_tokens": 7, "completion_tokens": len(words)},
                  "timings": {"ttft_s": self.delay, "total_s": total, "tokens_per_s": len(words) / total},
                  "explain": {"prompt": f"Write about {inputs.get('topic')}", "chunks": [], "prompt_tokens": 7,
                              "tokens": [{"id": i, "text": p, "logprob": -0.5, "top": [{"text": p, "logprob": -0.5}]}
                                         for i, p in enumerate(pieces)],
                              "timings": {"ttft_s": self.delay}} if explain else None}
        yield Event("done", data=result)
