"""Tool calls parsed out of a model's reply, in the format its family was trained to write.

- hermes (Qwen2.5/3, Hermes, many fine-tunes): `<tool_call>{"name": .., "arguments": {..}}</tool_call>`,
  any number, with free text around them;
- llama3_json (Llama 3.1-3.3): the whole reply is `{"name": .., "parameters": {..}}` (or
  "arguments"), optionally after `<|python_tag|>`, several separated by `;`;
- mistral: `[TOOL_CALLS][{"name": .., "arguments": {..}}, ...]` (v3 tokenizers), or
  `[TOOL_CALLS]name[ARGS]{..}` (v11+). Marker tokens that the detokenizer dropped as special
  leave the bare JSON list, which parses the same.

`format_for(template)` picks the format from the chat template's source; a reply that does not
hold a well-formed call to a declared tool is returned as plain content, never as a half call.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass


@dataclass
class ParsedCall:
    name: str
    arguments: str  # a JSON object, as OpenAI sends it

    def to_openai(self) -> dict:
        return {"id": "call_" + secrets.token_hex(12), "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


FORMATS = ("hermes", "llama3_json", "mistral")


def format_for(template: str | None) -> str:
    """The tool-call format a chat template's model writes (hermes when the template says nothing)."""
    t = template or ""
    if "[TOOL_CALLS]" in t:
        return "mistral"
    if "<tool_call>" in t:
        return "hermes"
    if "<|python_tag|>" in t or ('"parameters"' in t and "<|eot_id|>" in t) or "<|eom_id|>" in t:
        return "llama3_json"
    return "hermes"


def parse(text: str, fmt: str, tool_names: set[str]) -> tuple[str | None, list[ParsedCall]]:
    """(content left outside the calls, or None; the calls) for a reply in format `fmt`."""
    parser = {"hermes": _hermes, "llama3_json": _llama3_json, "mistral": _mistral}[fmt]
    content, calls = parser(text, tool_names)
    if not calls:
        return text, []
    return (content.strip() or None) if content is not None else None, calls


def _call(obj, tool_names: set[str], args_key: tuple[str, ...] = ("arguments", "parameters")) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or obj["name"] not in tool_names:
        return None
    args = next((obj[k] for k in args_key if k in obj), {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedCall(obj["name"], json.dumps(args, ensure_ascii=False))


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def _hermes(text: str, tool_names: set[str]):
    calls = []
    for m in _HERMES.finditer(text):
        try:
            call = _call(json.loads(m.group(1)), tool_names)
        except json.JSONDecodeError:
            return text, []
        if call is None:
            return text, []
        calls.append(call)
    return _HERMES.sub("", text), calls


def _json_values(text: str) -> list | None:
    """The JSON values `text` consists of, separated by whitespace or `;` (None if anything else)."""
    decoder = json.JSONDecoder()
    values, i = [], 0
    while True:
        while i < len(text) and (text[i].isspace() or text[i] == ";"):
            i += 1
        if i == len(text):
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return None
        values.append(value)


def _llama3_json(text: str, tool_names: set[str]):
    body = text.strip()
    if body.startswith("<|python_tag|>"):
        body = body[len("<|python_tag|>"):]
    values = _json_values(body)
    if not values:
        return text, []
    calls = [_call(v, tool_names) for v in values]
    return ("", calls) if all(calls) else (text, [])


_MISTRAL_ARGS = re.compile(r"\s*([A-Za-z0-9_.\-]+)\[ARGS\]", re.S)


def _mistral(text: str, tool_names: set[str]):
    head, marker, body = text.partition("[TOOL_CALLS]")
    if not marker:
        head, body = "", text
        if not body.lstrip().startswith("["):
            return text, []
    calls: list = []
    if "[ARGS]" in body:
        decoder = json.JSONDecoder()
        for part in body.split("[TOOL_CALLS]"):
            m = _MISTRAL_ARGS.match(part)
            if not m:
                return text, []
            try:
                args, _ = decoder.raw_decode(part, m.end())
            except json.JSONDecodeError:
                return text, []
            calls.append(_call({"name": m.group(1), "arguments": args}, tool_names))
    else:
        values = _json_values(body.strip())
        if not values or not all(isinstance(v, list) for v in values):
            return text, []
        calls = [_call(v, tool_names) for group in values for v in group]
    return (head, calls) if calls and all(calls) else (text, [])
