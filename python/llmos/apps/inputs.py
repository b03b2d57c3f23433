"""An app's inputs: their specs as callers see them (CLI flags, JSON schema, web form) and the
checking of values given for them, from JSON (typed) or from the command line (strings)."""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass
from typing import Any

from llmos import limits
from llmos.errors import InvalidInputError

__all__ = ["InputSpec", "coerce_inputs", "input_schema"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_JSON_TYPES = {"string": "string", "text": "string", "integer": "integer", "number": "number",
               "boolean": "boolean"}


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str = "string"          # string | text | integer | number | boolean | choice
    default: Any = None
    description: str = ""
    required: bool = True
    choices: tuple | None = None
    min: int | float | None = None
    max: int | float | None = None

    @classmethod
    def from_decl(cls, name: str, decl) -> "InputSpec":
        required = decl.required if decl.required is not None else decl.default is None
        return cls(name, decl.type, decl.default, decl.description, required,
                   tuple(decl.choices) if decl.choices is not None else None, decl.min, decl.max)

    def json_schema(self) -> dict:
        if self.type == "choice":
            s: dict = {"enum": list(self.choices)}
        else:
            s = {"type": _JSON_TYPES[self.type]}
        if self.type in ("string", "text"):
            s["maxLength"] = self.max_chars
            if self.min is not None:
                s["minLength"] = int(self.min)
            if self.type == "text":
                s["format"] = "textarea"  # a hint for forms: multi-line
        elif self.type in ("integer", "number"):
            if self.min is not None:
                s["minimum"] = self.min
            if self.max is not None:
                s["maximum"] = self.max
        if self.description:
            s["description"] = self.description
        if self.default is not None:
            s["default"] = self.default
        return s

    @property
    def max_chars(self) -> int:
        cap = limits.current().max_app_input_chars
        return min(cap, int(self.max)) if self.max is not None else cap

    def coerce(self, value: Any, *, from_strings: bool = False, app: str = "app") -> Any:
        """The checked value (numbers parsed when from_strings), or InvalidInputError(field=name)."""

        def bad(problem: str) -> InvalidInputError:
            return InvalidInputError(f"{app}: input {self.name}: {problem}", field=self.name)

        t = self.type
        if from_strings and isinstance(value, str) and t not in ("string", "text"):
            value = self._parse(value, bad)
        if t in ("string", "text"):
            if not isinstance(value, str):
                raise bad(f"expected a string, got {_short(value)}")
            if len(value) > self.max_chars:
                which = ("max_app_input_chars (llmos.limits)" if self.max is None or self.max > self.max_chars
                         else "the input's max")
                raise bad(f"{len(value)} characters, over the limit of {self.max_chars} ({which})")
            if self.min is not None and len(value) < self.min:
                raise bad(f"{len(value)} characters, under the minimum of {int(self.min)}")
            if t == "string" and ("\n" in value or "\r" in value):
                raise bad("a string input is one line (the app declares type text for several lines)")
            return value
        if t == "boolean":
            if not isinstance(value, bool):
                raise bad(f"expected true or false, got {_short(value)}")
            return value
        if t == "integer":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(f"expected an integer, got {_short(value)}")
            return self._range(value, bad)
        if t == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(f"expected a finite number, got {_short(value)}")
            return self._range(value, bad)
        # choice
        for c in self.choices:
            if value == c and type(value) is type(c):
                return c
        raise bad(f"{_short(value)} is not one of {', '.join(map(str, self.choices))}"
                  f"{_did_you_mean(value, self.choices)}")

    def _parse(self, s: str, bad) -> Any:
        t = self.type
        if t == "boolean":
            if s.strip().lower() in _TRUE:
                return True
            if s.strip().lower() in _FALSE:
                return False
            raise bad(f"expected true or false, got {s!r}")
        if t == "integer":
            try:
                return int(s.strip())
            except ValueError:
                raise bad(f"expected an integer, got {s!r}") from None
        if t == "number":
            try:
                return float(s.strip())
            except ValueError:
                raise bad(f"expected a number, got {s!r}") from None
        for c in self.choices:  # choice: the string as written, or a choice's text form
            if s == (c if isinstance(c, str) else str(c).lower() if isinstance(c, bool) else str(c)):
                return c
        return s

    def _range(self, value, bad):
        if self.min is not None and value < self.min:
            raise bad(f"{value} is under the minimum of {self.min}")
        if self.max is not None and value > self.max:
            raise bad(f"{value} is over the maximum of {self.max}")
        return value


def coerce_inputs(specs: list[InputSpec], raw: dict, *, from_strings: bool = False, app: str = "app") -> dict:
    """Every declared input's value: the given one checked, else its default; unknown names
    and missing required inputs are refused (InvalidInputError naming the app and the input)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{app}: inputs: expected an object of name: value", field="inputs")
    names = [s.name for s in specs]
    for key in raw:
        if key not in names:
            known = ", ".join(names) if names else "none"
            raise InvalidInputError(f"{app}: unknown input {key!r}{_did_you_mean(key, names)}; the app's inputs: "
                                    f"{known}", field=str(key))
    out = {}
    for s in specs:
        if s.name in raw and raw[s.name] is not None:
            out[s.name] = s.coerce(raw[s.name], from_strings=from_strings, app=app)
        elif s.default is not None:
            out[s.name] = copy.deepcopy(s.default)
        elif s.required:
            what = f" ({s.description})" if s.description else ""
            raise InvalidInputError(f"{app}: input {s.name} is required{what}", field=s.name)
        else:
            out[s.name] = None
    return out


def input_schema(specs: list[InputSpec], *, chat: bool = False) -> dict:
    props = {s.name: s.json_schema() for s in specs}
    required = [s.name for s in specs if s.required]
    if chat:
        props["message"] = {"type": "string", "description": "the user's message",
                            "maxLength": limits.current().max_app_input_chars}
        required.append("message")
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def _did_you_mean(word, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _short(value, n: int = 60) -> str:
    r = repr(value)
    return r if len(r) <= n else r[:n - 3] + "..."
