"""Chat templates: render a conversation to a prompt the way transformers 5.24 does.

Templates come from checkpoints downloaded from the internet, so they are untrusted code: they run
in jinja2's ``ImmutableSandboxedEnvironment`` and any attempt to reach an unsafe attribute
(``__class__``, ``__globals__``, ...) fails at once with :class:`ChatTemplateError` instead of
quietly rendering an empty string, as the plain sandbox would.

Rendering matches ``tokenizer.apply_chat_template(messages, tokenize=False, ...)``: the same
environment options (``trim_blocks``, ``lstrip_blocks``, loop controls, ``{% generation %}``
blocks), the same helpers (``raise_exception``, ``strftime_now``, a ``tojson`` that does not
HTML-escape, guarded ``dict`` and ``namespace``), the same variables (``messages``, ``tools``,
``documents``, ``add_generation_prompt`` and the named special tokens such as ``bos_token``) and
the same preparation of messages (keys set to None are dropped, ``reasoning_content`` is also
offered as ``thinking``, everything is converted to plain JSON-like data).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from llmos.errors import ChatTemplateError, InvalidInputError
from llmos.text import template_budget

__all__ = ["ChatTemplate"]

# Names a message's reasoning is passed under; the first is the standard one.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class _TemplateRaised(Exception):
    """raise_exception() called by the template itself."""


def _make_environment() -> Any:
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        # transformers marks assistant text with {% generation %}...{% endgeneration %} to build
        # training masks; for rendering the block is just its body.
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    # Rendering work (loops, output size, big values, time) is bounded by template_budget.
    class Environment(template_budget.environment_class(ImmutableSandboxedEnvironment)):
        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    class TemplateDict:
        # Stands in for the builtin ``dict`` type, whose attributes (mro(), ...) a template could misuse.
        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        # No underscore names on namespaces, so templates cannot plant dunder attributes.
        def __init__(*args: Any, **kwargs: Any) -> None:
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise SecurityError(f"chat templates cannot set underscore-prefixed namespace attributes ({name!r})")

    def raise_exception(message: Any) -> None:
        raise _TemplateRaised(str(message))

    def strftime_now(format: Any) -> str:
        if not isinstance(format, str):
            raise TypeError(f"strftime_now() needs a format string, got {type(format).__name__}")
        return datetime.now().strftime(format)

    env = Environment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    template_budget.install(env)  # also the tojson that does not HTML-escape, as transformers'
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


@lru_cache(maxsize=1)
def _environment() -> Any:
    return _make_environment()


@lru_cache(maxsize=64)
def _compile(source: str) -> Any:
    return _environment().from_string(source)


def _plain(value: Any) -> Any:
    """The value as plain JSON-like data (the only thing templates see).

    Rich objects can carry methods the sandbox does not know to be dangerous, so anything that is
    not a scalar, mapping, list, tuple, dataclass or pydantic model becomes a ``<TypeName>`` placeholder.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if type(value).__module__ == "numpy":
        import numpy as np

        if isinstance(value, np.generic):  # np.bool_(False) must not become a truthy placeholder
            return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _plain(dump())
    return f"<{type(value).__name__}>"


def _prepare_messages(messages: Any) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise InvalidInputError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}",
            field="messages",
        )
    if len(messages) == 0:
        raise InvalidInputError("messages is empty: a chat needs at least one message", field="messages")
    prepared = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidInputError(
                f"messages[{i}] must be a dict with a 'role', got {type(message).__name__}", field=f"messages[{i}]"
            )
        role = message.get("role")
        if not isinstance(role, str):
            what = "is missing" if "role" not in message else f"must be a str, got {type(role).__name__}"
            raise InvalidInputError(f"messages[{i}]['role'] {what}", field=f"messages[{i}].role")
        # Keys set to None are dropped: templates handle a missing key, often not a None value.
        message = _plain({k: v for k, v in message.items() if v is not None})
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def _prepare_tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise InvalidInputError(f"tools must be a list of JSON-schema dicts, got {type(tools).__name__}", field="tools")
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise InvalidInputError(
                f"tools[{i}] must be a JSON-schema dict, got {type(tool).__name__}", field=f"tools[{i}]"
            )
    return _plain(list(tools))


class ChatTemplate:
    """A compiled chat template.

    ``bos_token``/``eos_token`` (and any other named special tokens in ``special_tokens``, e.g. a
    tokenizer's ``special_tokens_map``) are passed to the template as variables, as transformers
    does. ``origin`` (usually the file the template came from) is named in errors.
    """

    def __init__(
        self,
        source: str,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        origin: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
    ):
        if not isinstance(source, str):
            raise ChatTemplateError(
                f"a chat template must be a string, got {type(source).__name__}", file=origin, field="chat_template"
            )
        self._source = source
        self._origin = origin
        tokens: dict[str, str] = {}
        for key, value in (special_tokens or {}).items():
            if value is not None:
                tokens[str(key)] = str(value)
        if bos_token is not None:
            tokens["bos_token"] = str(bos_token)
        if eos_token is not None:
            tokens["eos_token"] = str(eos_token)
        self._special_tokens = tokens
        try:
            self._template = _compile(source)
        except Exception as e:
            from jinja2.exceptions import TemplateSyntaxError

            if isinstance(e, TemplateSyntaxError):
                raise ChatTemplateError(
                    f"chat template {self._where} has a syntax error at line {e.lineno}: {e.message}",
                    file=origin,
                    field="chat_template",
                ) from e
            raise ChatTemplateError(
                f"chat template {self._where} cannot be compiled: {type(e).__name__}: {e}",
                file=origin,
                field="chat_template",
            ) from e

    @property
    def _where(self) -> str:
        return self._origin if self._origin is not None else "<string>"

    @property
    def source(self) -> str:
        return self._source

    @property
    def origin(self) -> str | None:
        return self._origin

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """The prompt text for ``messages``.

        ``extra`` become template variables (e.g. ``enable_thinking=False``, ``documents=[...]``,
        ``date_string=...``); they override the special-token variables.
        """
        from jinja2.exceptions import SecurityError, TemplateError

        context: dict[str, Any] = {
            "messages": _prepare_messages(messages),
            "tools": _prepare_tools(tools),
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
        }
        context.update(self._special_tokens)
        context.update(_plain(extra))
        try:
            with template_budget.budgeted():
                return self._template.render(**context)
        except template_budget.OverBudget as e:
            raise ChatTemplateError(f"chat template {self._where} was stopped: {e}", file=self._origin,
                                    field=e.limit) from None
        except MemoryError:
            raise ChatTemplateError(f"chat template {self._where} was stopped: out of memory while rendering",
                                    file=self._origin) from None
        except _TemplateRaised as e:
            raise ChatTemplateError(str(e), file=self._origin) from None
        except SecurityError as e:
            raise ChatTemplateError(
                f"chat template {self._where} attempted an unsafe operation and was stopped: {e}", file=self._origin
            ) from None
        except TemplateError as e:
            raise ChatTemplateError(
                f"chat template {self._where} failed while rendering: {type(e).__name__}: {e}", file=self._origin
            ) from e
        except RecursionError:
            raise ChatTemplateError(
                f"chat template {self._where} failed while rendering: recursion too deep", file=self._origin
            ) from None
        except Exception as e:
            raise ChatTemplateError(
                f"chat template {self._where} failed while rendering: {type(e).__name__}: {e}", file=self._origin
            ) from e

    def __repr__(self) -> str:
        return f"ChatTemplate(origin={self._origin!r}, {len(self._source)} chars)"
