"""/v1/chat/completions: messages rendered with the model's chat template (tools passed to it),
the reply generated, tool calls parsed out of it (text/tool_calls.py), streamed or whole.

With tools in play (tools given, tool_choice not "none") a streamed reply is held until it is
complete: whether it is a tool call or text is only known then. Without tools it streams as
produced. tool_choice "required" or a named function is not forced on the model: its reply is
parsed as with "auto" (forcing it needs constrained decoding of the family's call format)."""

from __future__ import annotations

import json
import time
import uuid

from llmos.text import tool_calls as toolcalls
from llmos.serve.api_errors import invalid
from llmos.serve.options import check_context, sampling_options, structured_option
from llmos.serve.streaming import DONE, Run, finish_reason, sse, submit_all


def template_messages(messages) -> list[dict]:
    """OpenAI messages as chat templates expect them: text parts joined, a tool call's arguments
    as an object (templates write them with tojson)."""
    out = []
    for i, m in enumerate(messages):
        d: dict = {"role": m.role}
        content = m.content
        if isinstance(content, list):
            texts = []
            for k, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise invalid(f"messages[{i}].content[{k}]: part type {part.type!r} is not supported by a text "
                                  "model (only 'text')", param=f"messages[{i}].content[{k}].type")
                texts.append(part.text)
            content = "".join(texts)
        d["content"] = content if content is not None else ""
        if m.name is not None:
            d["name"] = m.name
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            calls = []
            for k, c in enumerate(m.tool_calls):
                try:
                    args = json.loads(c.function.arguments)
                except json.JSONDecodeError as e:
                    raise invalid(f"messages[{i}].tool_calls[{k}].function.arguments: not JSON ({e})",
                                  param=f"messages[{i}].tool_calls[{k}].function.arguments") from None
                calls.append({"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": args}})
            d["tool_calls"] = calls
        out.append(d)
    return out


class Chat:
    """One /v1/chat/completions request against one model."""

    def __init__(self, req, model, engine, metrics, name: str):
        self.req, self.model, self.engine, self.metrics, self.name = req, model, engine, metrics, name
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
        self.tool_names = {t["function"]["name"] for t in self.tools or []}
        choice = req.tool_choice
        if choice is not None and not isinstance(choice, str) and choice.function.name not in self.tool_names:
            raise invalid(f"tool_choice: function {choice.function.name!r} is not among the tools",
                          param="tool_choice")
        if choice is not None and choice != "none" and not self.tools:
            raise invalid("tool_choice: is set but no tools are given", param="tool_choice")
        self.parse_tools = bool(self.tools) and choice != "none"
        self.max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        self.options = self._options()
        self.prompt_ids: list[int] = []

    def _options(self) -> dict:
        req = self.req
        o = sampling_options(req)
        if self.max_tokens is not None:
            o["max_new_tokens"] = self.max_tokens
        if req.logprobs or req.top_logprobs:
            o["logprobs"] = True
            o["top_logprobs"] = req.top_logprobs or 0
        fmt = req.response_format
        if fmt is not None and fmt.type != "text":
            structured_option(o, "response_format", fmt.model_dump())
        return o

    def prepare(self) -> None:
        """The prompt's token ids (the template may run up to llmos.limits' bounds: a worker thread)."""
        extra = {"tools": self.tools} if self.tools else {}
        self.prompt_ids = self.model.apply_chat_template(template_messages(self.req.messages), tokenize=True, **extra)
        max_param = "max_completion_tokens" if self.req.max_completion_tokens is not None else "max_tokens"
        check_context(self.model, len(self.prompt_ids), self.max_tokens, param="messages", max_param=max_param)

    def submit(self) -> None:
        self.run = Run(submit_all(self.engine, [self.prompt_ids], self.options, prompt_param="messages"),
                       self.metrics, self.name)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def usage(self) -> dict:
        p = len(self.prompt_ids)
        return {"prompt_tokens": p, "completion_tokens": self.run.tokens_out, "total_tokens": p + self.run.tokens_out}

    def _message(self, text: str, reason: str | None) -> tuple[dict, str | None]:
        if self.parse_tools:
            templates = self.model.tokenizer.chat_templates
            fmt = toolcalls.format_for(templates.get("tool_use") or templates.get("default"))
            content, calls = toolcalls.parse(text, fmt, self.tool_names)
            if calls:
                return ({"role": "assistant", "content": content, "tool_calls": [c.to_openai() for c in calls]},
                        "tool_calls")
        return {"role": "assistant", "content": text}, reason

    def _logprobs(self, token_ids, logprobs, top_logprobs) -> list | None:
        if not self.req.logprobs or logprobs is None:
            return None
        tok = self.model.tokenizer
        out = []
        for k, t in enumerate(token_ids):
            s = tok.decode([t], skip_special_tokens=False)
            tops = [(a, lp) for a, lp in (top_logprobs[k] if top_logprobs else [])][: self.req.top_logprobs or 0]
            out.append({"token": s, "logprob": float(logprobs[k]), "bytes": list(s.encode("utf-8")),
                        "top_logprobs": [{"token": (a_s := tok.decode([int(a)], skip_special_tokens=False)),
                                          "logprob": float(lp), "bytes": list(a_s.encode("utf-8"))} for a, lp in tops]})
        return out

    async def respond(self, http_request) -> dict:
        (res,) = await self.run.results(http_request)
        gens = res if isinstance(res, list) else [res]
        choices = []
        for j, g in enumerate(gens):
            message, reason = self._message(g.text, finish_reason(g.finish_reason))
            lp = self._logprobs(g.token_ids, g.logprobs, g.top_logprobs)
            choices.append({"index": j, "message": message, "logprobs": None if lp is None else {"content": lp},
                            "finish_reason": reason})
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.name,
                "choices": choices, "usage": self.usage()}

    async def stream(self):
        include_usage = bool(self.req.stream_options and self.req.stream_options.include_usage)

        def chunk(index, delta, reason=None, lp=None):
            return sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.name, "choices": [{"index": index, "delta": delta,
                                                         "logprobs": None if lp is None else {"content": lp},
                                                         "finish_reason": reason}]})

        for j in range(self.req.n):
            yield chunk(j, {"role": "assistant", "content": ""})
        held: dict[int, list[str]] = {}
        async for tagged in self.run.pieces():
            p = tagged.piece
            lp = self._logprobs(p.token_ids, p.logprobs, p.top_logprobs)
            reason = finish_reason(p.finish_reason)
            if not self.parse_tools:
                if p.text or lp:
                    yield chunk(p.index, {"content": p.text}, None, lp)
                if reason is not None:
                    yield chunk(p.index, {}, reason)
                continue
            held.setdefault(p.index, []).append(p.text)
            if reason is not None:
                message, reason = self._message("".join(held.pop(p.index)), reason)
                delta = {"content": message["content"]} if "tool_calls" not in message else {
                    "content": message["content"],
                    "tool_calls": [{"index": k, **c} for k, c in enumerate(message["tool_calls"])]}
                yield chunk(p.index, delta)
                yield chunk(p.index, {}, reason)
        if include_usage:
            yield sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                       "model": self.name, "choices": [], "usage": self.usage()})
        yield DONE

