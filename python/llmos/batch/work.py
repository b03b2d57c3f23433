"""The row function: one input row in, one record out, the same locally and on Ray.

A record is {"row", "id", "result": {...}} or {"row", "id", "error": reason}. Any llmos error a
row causes (a missing field, a wrong type, a prompt too long for the context, an app input
error) becomes its error record; the job goes on.
"""

from __future__ import annotations

from llmos.batch.rows import Row
from llmos.errors import InvalidInputError, LlmosError

_ROW_KEYS = ("id", "params")


def is_app(target: str) -> bool:
    return str(target).endswith(".app.md")


class Target:
    """A model or an app, loaded once, and the job's decoding options."""

    def __init__(self, target: str, *, options: dict | None = None, threads: int | None = None):
        self.target = str(target)
        self.options = dict(options or {})
        load_options = {} if threads is None else {"threads": threads}
        if is_app(self.target):
            from llmos.apps import App
            self.app = App.load(self.target, load_options=load_options)
            self.model = self.app.model
        else:
            from llmos.runtime.load import load
            self.app = None
            self.model = load(self.target, **load_options)

    def process(self, row: Row) -> dict:
        if row.error is not None:
            return {"row": row.row, "id": row.id, "error": row.error}
        try:
            result = self._app_row(row) if self.app is not None else self._model_row(row)
        except LlmosError as e:
            return {"row": row.row, "id": row.id, "error": str(e)}
        return {"row": row.row, "id": row.id, "result": {"id": row.id, **result}}

    def _params(self, data: dict) -> dict:
        params = data.get("params", {})
        if not isinstance(params, dict):
            raise InvalidInputError(f"params: expected an object of decoding options, got {type(params).__name__}",
                                    field="params")
        merged = {**self.options, **params}
        for name in ("num_return_sequences", "num_beams"):
            if merged.get(name, 1) != 1:
                raise InvalidInputError(f"params.{name}: a batch row gives one sequence; {name} must be 1",
                                        field=f"params.{name}")
        return merged

    def _model_row(self, row: Row) -> dict:
        data = row.data
        params = self._params(data)
        has_prompt, has_messages = "prompt" in data, "messages" in data
        if has_prompt == has_messages:
            raise InvalidInputError("a row needs either `prompt` or `messages`" if not has_prompt else
                                    "a row takes `prompt` or `messages`, not both", field="prompt")
        if has_prompt:
            if not isinstance(data["prompt"], str):
                raise InvalidInputError(f"prompt: expected a string, got {type(data['prompt']).__name__}",
                                        field="prompt")
            gen = self.model.generate(data["prompt"], **params)
        else:
            gen = self.model.chat(_messages(data["messages"]), **params)
        return {"text": gen.text, "tokens": len(gen.token_ids), "finish_reason": gen.finish_reason}

    def _app_row(self, row: Row) -> dict:
        data = row.data
        params = self._params(data)
        inputs = {k: v for k, v in data.items() if k not in _ROW_KEYS and k != "message"}
        message = data.get("message")
        if self.app.kind == "chat" and message is None:
            raise InvalidInputError("message: a chat app's row needs a `message`", field="message")
        if self.app.kind != "chat" and message is not None:
            raise InvalidInputError(f"message: only chat apps take a message; {self.app.name} is a "
                                    f"{self.app.kind} app", field="message")
        result = self.app.run(message=message, params=params or None, **inputs)
        d = result.to_dict()
        out = {"text": d["text"], "output": d["output"], "citations": d["citations"],
               "tokens": d["usage"].get("completion_tokens", 0), "finish_reason": d["finish_reason"]}
        if d["output_error"]:
            out["output_error"] = d["output_error"]
        return out


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise InvalidInputError("messages: expected a non-empty list of {role, content} objects", field="messages")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise InvalidInputError(f"messages[{i}]: expected an object with string `role` and `content`",
                                    field=f"messages[{i}]")
    return messages
