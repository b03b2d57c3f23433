"""The terminal chat of `llmos chat MODEL` and `llmos app chat APP`: one loop over plain input()
(with readline's line editing when Python has it), streaming each reply as it is generated.

What talks to the model is a `Partner` (a plain model, or an app); the loop owns the
history, the decoding options the user set with /params, and the keys:
- Ctrl-C during a reply cancels the generation (its CancelToken, and closing the stream, which
  takes the request out of the engine's batch) and returns to the prompt; the part already
  shown stays in the history, since the user read it.
- Ctrl-C or Ctrl-D at the prompt leaves (a Ctrl-C with text typed only clears the line, when
  readline can tell).
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from pathlib import Path
from typing import Iterator, Protocol

from llmos.errors import InvalidInputError, LlmosError
from llmos.io.files import write_json_atomic
from llmos.runtime.model import CancelToken

try:  # line editing and history for input(); absent on some builds (Windows, minimal images)
    import readline
except ImportError:  # pragma: no cover - depends on the Python build
    readline = None

PROMPT = ">>> "

HELP = """\
Type a message and press Enter. Commands:
  /reset             forget the conversation
  /save [FILE]       write the conversation as JSON (default: chat-YYYYmmdd-HHMMSS.json)
  /params [k=v ...]  show the decoding options, or set some (temperature=0.2 max_new_tokens=40;
                     k= clears one; temperature=0 is greedy); values are JSON (numbers, true/false, ["a","b"]) or text
  /help              this text
  /quit              leave (also Ctrl-D, or Ctrl-C at an empty prompt)
Ctrl-C while a reply streams stops it and keeps you in the chat."""

COMMANDS = ("/reset", "/save", "/params", "/help", "/quit", "/exit")


class Partner(Protocol):
    """What the loop talks to: the model itself, or an app (llmos.cli.app)."""

    label: str  # shown in the banner and saved with the conversation

    def effective_params(self, overrides: dict) -> dict:
        """The decoding options a reply would use with `overrides` on top (set fields only)."""

    def check_params(self, overrides: dict) -> None:
        """Raises InvalidInputError naming the option when `overrides` would be refused."""

    def reply(self, history: list[dict], message: str, params: dict,
              cancel: CancelToken) -> Iterator[tuple[str, str]]:
        """Yields ("text", piece) as the reply streams, then ("note", line) for what to show
        after it (citations, tool calls). Checks its arguments before the first yield."""


class ModelPartner:
    """A plain model through Model.chat: the history is the message list, with an optional
    system message first; the oldest turns are dropped when the context is full."""

    def __init__(self, model, label: str, system: str | None = None):
        self.model = model
        self.label = label
        self.system = system

    def effective_params(self, overrides: dict) -> dict:
        from llmos.runtime.generation import GenerationConfig

        merged = self.model.generation_config.merged(GenerationConfig.from_dict(overrides))
        return {k: v for k, v in vars(merged).items() if v is not None and k != "eos_token_id"}

    def check_params(self, overrides: dict) -> None:
        # stream() checks every option against the model when called; its generator has not
        # started, so nothing is submitted to the engine.
        self.model.stream("check", **overrides).close()

    def reply(self, history, message, params, cancel):
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + history + [
            {"role": "user", "content": message}]
        pieces = self.model.chat(messages, stream=True, truncate="oldest", cancel=cancel, **params)
        return (("text", p) for p in pieces)


def parse_params(items: list[str], *, what: str) -> dict:
    """`k=v` decoding options, the names checked here so that a typo gets a short hint;
    temperature=0 means greedy, as the CLI's --temperature 0 does."""
    from llmos.runtime.generation import GenerationConfig

    params = parse_assignments(items, what=what)
    names = GenerationConfig.field_names()
    for key in params:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else " (the names of llmos.GenerationConfig)"
            raise InvalidInputError(f"{what}: unknown decoding option {key!r}{hint}", field=key)
    if params.get("temperature") == 0 and not isinstance(params["temperature"], bool):
        params.update(temperature=None, do_sample=False)
    return params


def parse_assignments(items: list[str], *, what: str) -> dict:
    """`key=value` words into a dict; a value is JSON when it parses as JSON, else text; an
    empty value is None (which /params takes as "clear")."""
    out = {}
    for item in items:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise InvalidInputError(f"{what}: expected key=value, got {item!r}", field=what)
        if raw == "":
            out[key] = None
            continue
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


class ChatLoop:
    """The REPL. `run()` returns the exit status (0)."""

    def __init__(self, partner: Partner, *, params: dict | None = None, out=None, meta: dict | None = None):
        self.partner = partner
        self.params = dict(params or {})
        self.history: list[dict] = []
        self.out = out or sys.stdout
        self.meta = meta or {}  # saved with the conversation (model, app, inputs)

    # ---- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        self._say(f"Chatting with {self.partner.label}. /help for commands; Ctrl-D or /quit to leave.")
        while True:
            try:
                line = input(PROMPT)
            except EOFError:
                self._say("")
                return 0
            except KeyboardInterrupt:
                typed = readline.get_line_buffer() if readline is not None else ""
                self._say("")
                if typed.strip():
                    continue
                return 0
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if self._command(line) == "quit":
                    return 0
                continue
            self._turn(line)

    def _turn(self, message: str) -> None:
        cancel = CancelToken()
        shown: list[str] = []
        notes: list[str] = []
        stopped = False
        pieces = None
        started = False  # the model's leading blank lines are not shown (the prompt line ends the line)
        try:
            pieces = self.partner.reply(self.history, message, self.params, cancel)
            for kind, text in pieces:
                if kind == "text":
                    if not started:
                        text = text.lstrip()
                        started = bool(text)
                    shown.append(text)
                    self.out.write(text)
                    self.out.flush()
                else:
                    notes.append(text)
        except KeyboardInterrupt:
            cancel.cancel()
            stopped = True
        except LlmosError as e:
            self._say(("\n" if shown else "") + f"error: {e}")
            return
        finally:
            if pieces is not None:
                pieces.close()
        self._say("")
        if stopped:
            self._say("[stopped]")
        for note in notes:
            self._say(note)
        reply = "".join(shown)
        if reply or not stopped:
            self.history += [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]

    # ---- commands ---------------------------------------------------------------------

    def _command(self, line: str) -> str | None:
        name, *args = line.split()
        if name in ("/quit", "/exit"):
            return "quit"
        if name == "/help":
            self._say(HELP)
        elif name == "/reset":
            self.history = []
            self._say("(conversation cleared)")
        elif name == "/save":
            self._save(" ".join(args) or None)
        elif name == "/params":
            self._params(args)
        else:
            close = difflib.get_close_matches(name, COMMANDS, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else "; /help lists them"
            self._say(f"unknown command {name}{hint}")
        return None

    def _save(self, file: str | None) -> None:
        path = Path(file or time.strftime("chat-%Y%m%d-%H%M%S.json")).expanduser()
        doc = {**self.meta, "params": self.params, "messages": self.history}
        try:
            write_json_atomic(path, doc)
        except OSError as e:
            self._say(f"error: could not write {path}: {e.strerror or e}")
            return
        self._say(f"saved {len(self.history) // 2} turn(s) to {path}")

    def _params(self, args: list[str]) -> None:
        if args:
            try:
                changes = parse_params(args, what="/params")
                wanted = {k: v for k, v in {**self.params, **changes}.items() if v is not None}
                self.partner.check_params(wanted)
            except LlmosError as e:
                self._say(f"error: {e} (nothing changed)")
                return
            self.params = wanted
        try:
            shown = self.partner.effective_params(self.params)
        except LlmosError as e:
            self._say(f"error: {e}")
            return
        for key in sorted(shown):
            mark = "*" if key in self.params else " "
            self._say(f"{mark} {key} = {json.dumps(shown[key], ensure_ascii=False)}")
        self._say("(* set in this chat)")

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()
