"""An app's prompt: the body (system prompt) and the user message are Jinja templates, rendered
in jinja2's immutable sandbox with StrictUndefined and the chat-template work budget
(llmos.text.template_budget: output size, loops, time), so an app file never runs code.

Templates compile when the app loads, and the variables they use are checked against the
inputs there, so a typo is an AppFileError naming the file and line, not a failure per request."""

from __future__ import annotations

import re

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmos.errors import AppFileError
from llmos.text import template_budget

__all__ = ["AppTemplates", "DEFAULT_USER", "format_chunks"]

# The user message of each kind when the app has no `user:` (chat: the caller's message;
# generate: the body itself is the user message and there is no system prompt).
DEFAULT_USER = {"qa": "{{ question }}", "translate": "{{ text }}", "summarize": "{{ text }}"}


class _Environment(template_budget.environment_class(ImmutableSandboxedEnvironment)):
    pass


def _environment() -> ImmutableSandboxedEnvironment:
    env = _Environment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)
    template_budget.install(env)
    return env


def format_chunks(chunks: list[dict]) -> str:
    """Retrieved chunks as the lines appended to a system prompt that does not use `chunks`."""
    return "\n".join(f"[{c['id']}] ({c['source']}) {' '.join(c['text'].split())}" for c in chunks)


class AppTemplates:
    """The compiled body and user templates of one app."""

    def __init__(self, spec, parsed, file: str, *, has_knowledge: bool):
        self.file = file
        self.kind = spec.kind
        self.env = _environment()
        allowed = set(spec.inputs) | ({"chunks"} if has_knowledge else set()) | \
            ({"message"} if spec.kind == "chat" else set())
        body = spec.body.strip()
        self.body = self._compile(body, "body", parsed.body_line + _leading_lines(spec.body), allowed) \
            if body else None
        self.body_mentions_chunks = bool(body) and "chunks" in self._variables(body)
        user_src = spec.user if spec.user is not None else DEFAULT_USER.get(spec.kind)
        user_line = parsed.line_of(("user",)) if spec.user is not None else parsed.line_of(("kind",))
        self.user = self._compile(user_src, "user", user_line, allowed, inline=spec.user is not None) \
            if user_src is not None else None

    def _variables(self, source: str) -> set[str]:
        return meta.find_undeclared_variables(self.env.parse(source))

    def _compile(self, source: str, field: str, first_line: int, allowed: set[str], *, inline: bool = False):
        try:
            variables = self._variables(source)
            template = self.env.from_string(source)
        except TemplateSyntaxError as e:
            line = first_line if inline else first_line + (e.lineno or 1) - 1
            raise AppFileError(f"template syntax error: {e.message}", file=self.file, line=line, field=field) from None
        for name in sorted(variables - allowed):
            hint = (" (`chunks` exists only when the app has `knowledge:`)" if name == "chunks"
                    else " (`message` exists only in chat apps)" if name == "message"
                    else "; declare it under `inputs:`")
            line = first_line if inline else first_line + _line_of_name(source, name)
            raise AppFileError(f"unknown variable {name!r}{hint}", file=self.file, line=line, field=field)
        return template

    def _render(self, template, field: str, variables: dict) -> str:
        try:
            with template_budget.budgeted():
                return template.render(**variables)
        except template_budget.OverBudget as e:
            raise AppFileError(f"rendering went over a limit: {e}", file=self.file, field=field) from None
        except TemplateError as e:
            raise AppFileError(f"rendering failed: {e}", file=self.file, field=field) from None

    def system(self, variables: dict, chunks: list[dict] | None) -> str | None:
        """The system prompt (None for a generate app without `user:`, whose body is the user message)."""
        if self.kind == "generate" and self.user is None:
            return None  # the body is the user message
        text = self._render(self.body, "body", variables).strip() if self.body is not None else ""
        if chunks and not self.body_mentions_chunks:
            text = (text + "\n\n" if text else "") + "Use these passages:\n" + format_chunks(chunks)
        return text or None

    def user_message(self, variables: dict, message: str | None, chunks: list[dict] | None) -> str:
        """The user message: the `user:` template, or the kind's default (chat: `message`)."""
        if self.kind == "generate" and self.user is None:
            text = self._render(self.body, "body", variables).strip() if self.body is not None else ""
            if chunks and not self.body_mentions_chunks:
                text = "Use these passages:\n" + format_chunks(chunks) + "\n\n" + text
            return text
        if self.user is not None:
            return self._render(self.user, "user", variables)
        return message or ""


def _leading_lines(body: str) -> int:
    """Blank lines before the body's text (the body is stripped before compiling)."""
    stripped = body.lstrip()
    return body[:len(body) - len(stripped)].count("\n")


def _line_of_name(source: str, name: str) -> int:
    m = re.search(rf"\b{re.escape(name)}\b", source)
    return source[:m.start()].count("\n") if m else 0
