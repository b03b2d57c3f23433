"""An app's `output:`: the decoding constraint that makes the reply take its shape, and the
value taken out of the reply afterwards.

- json: `response_format` json_schema (constrained decoding, llmos.text.structured): the reply
  is JSON of the schema unless max_new_tokens cut it, which `extract` reports.
- code:LANG: a guided_regex that allows exactly one fenced block, so extraction always finds
  it; code:python is then checked with ast.parse, a failure reported in `output_error`, not raised.
"""

from __future__ import annotations

import ast
import json
import re

__all__ = ["constraint_options", "extract", "code_block_regex"]

# The inside of a fence: anything without three backticks in a row.
_BLOCK_BODY = r"([^`]|`[^`]|``[^`])*"
_FENCE = re.compile(r"```[A-Za-z0-9_+#.-]*[ \t]*\r?\n(.*?)(?:\r?\n)?```", re.S)
_OPEN = re.compile(r"```[A-Za-z0-9_+#.-]*[ \t]*\r?\n(.*)\Z", re.S)


def code_block_regex(lang: str) -> str:
    """A regex (llguidance's syntax) for a reply that is one ```LANG fenced block."""
    return "```" + re.escape(lang) + r"\n" + _BLOCK_BODY + r"\n```"


def constraint_options(output, app_name: str) -> dict:
    """The generation options that enforce `output` (an OutputSpec with its schema read)."""
    if output.kind == "json":
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": app_name, "schema": output.schema, "strict": True}}}
    if output.kind == "code":
        return {"guided_regex": code_block_regex(output.lang)}
    return {}


def extract(text: str, output, finish_reason: str = "stop") -> tuple[object, str | None]:
    """(output value, output_error or None) of a reply: the text itself, the parsed JSON, or the
    code in its fenced block (for python, checked to parse)."""
    cut = " (the reply stopped at max_new_tokens)" if finish_reason == "length" else ""
    if output.kind == "json":
        try:
            value = json.loads(text)
        except ValueError as e:
            return None, f"the reply is not valid JSON: {e}{cut}"
        problem = schema_problem(value, output.schema)
        return value, (f"the reply does not match the output schema: {problem}" if problem else None)
    if output.kind == "code":
        code, error = _code(text, cut)
        if error is None and output.lang in ("python", "py", "python3"):
            error = python_problem(code)
        return code, error
    return text, None


def _code(text: str, cut: str) -> tuple[str, str | None]:
    m = _FENCE.search(text)
    if m:
        return m.group(1), None
    m = _OPEN.search(text)
    if m:
        return m.group(1), f"the code block is not closed{cut}"
    # No fence at all (a reply that was not constrained): the whole reply is the code.
    return text.strip(), None


def python_problem(code: str) -> str | None:
    """None when `code` parses as Python, else "code does not parse: line N: what"."""
    try:
        ast.parse(code)
    except SyntaxError as e:
        return f"code does not parse: line {e.lineno}: {e.msg}"
    except ValueError as e:  # a null byte
        return f"code does not parse: {e}"
    return None


def schema_problem(value, schema: dict | None) -> str | None:
    """Why `value` does not validate against `schema` (jsonschema), or None. Without jsonschema
    installed, JSON that constrained decoding produced is taken as valid."""
    if not schema:
        return None
    try:
        import jsonschema
    except ImportError:
        return None
    try:
        cls = jsonschema.validators.validator_for(schema)
        cls(schema).validate(value)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        return f"{where + ': ' if where else ''}{e.message}"
    except jsonschema.SchemaError as e:
        return f"the schema itself is invalid: {e.message}"
    return None
