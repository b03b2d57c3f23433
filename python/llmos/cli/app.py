"""`llmos app new|run|chat|test|serve` (and `llmos new`, the alias of `app new`): one-file apps
(NAME.app.md, llmos.apps) from the terminal.

`run` and `chat` parse in two steps: APP first, then a parser made from that app's inputs, so
that each input is a flag of its own (`--tone formal`) and `llmos app run APP --help` lists them.
llmos.apps is imported only when an app command runs, so the other verbs start as fast as before.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from llmos.cli import explain
from llmos.cli.chat_repl import ChatLoop, parse_params
from llmos.cli.parser import HintingParser
from llmos.cli.progress import indexing
from llmos.cli.serve import _COUNT, _POSITIVE_INT
from llmos.errors import InvalidInputError
from llmos.extras import require


def _load(path: str, *, index: bool = True):
    """The app; with index, its knowledge is indexed here, under a progress bar, rather than
    silently inside the first request."""
    from llmos.apps import App

    app = App.load(path)
    if index and app.spec.knowledge:
        with indexing() as progress:
            app.index(progress=progress)
    return app


# ---- the per-app parser ------------------------------------------------------------------

def _input_dest(name: str) -> str:
    return f"input__{name}"


def _input_help(spec) -> str:
    facts = [spec.type if spec.type != "choice" else "one of " + ", ".join(map(str, spec.choices))]
    if spec.min is not None or spec.max is not None:
        facts.append(f"{'length ' if spec.type in ('string', 'text') else ''}"
                     f"{spec.min if spec.min is not None else ''}..{spec.max if spec.max is not None else ''}")
    if spec.default is not None:
        facts.append(f"default {json.dumps(spec.default, ensure_ascii=False)}")
    elif spec.required:
        facts.append("required")
    return (f"{spec.description} " if spec.description else "") + f"({'; '.join(facts)})"


def app_parser(app, command: str) -> argparse.ArgumentParser:
    """The parser of the words after APP: the common options, then one flag per input."""
    p = HintingParser(prog=f"llmos app {command} {app.path.name}",
                      description=f"{app.name}: a {app.kind} app" + (f". {app.description}" if app.description else ""),
                      epilog="Every input can also be given as -i NAME=VALUE.")
    p.add_argument("-i", "--input", action="append", default=[], metavar="NAME=VALUE",
                   help="an input of the app (repeatable)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a decoding option over the app's params (max_new_tokens=40, temperature=0, seed=1; "
                        "repeatable)")
    if command == "run":
        if app.kind == "chat":
            p.add_argument("-m", "--message", default=None, help="the user's message (a chat app needs one)")
        p.add_argument("--explain", action="store_true",
                       help="also print the rendered prompt, retrieved chunks, each token with its logprob and "
                            "the top alternatives, and the timings")
        p.add_argument("--json", action="store_true", help="print the whole result as JSON instead")
    taken = {o for a in p._actions for o in a.option_strings}
    group = p.add_argument_group(f"inputs of {app.name}")
    for spec in app.input_specs():
        flags = [f for f in dict.fromkeys([f"--{spec.name}", f"--{spec.name.replace('_', '-')}"]) if f not in taken]
        if not flags:  # the name of a common option: -i NAME=VALUE still gives it
            continue
        extra = {"nargs": "?", "const": "true"} if spec.type == "boolean" else {}  # `--draft` alone is true
        metavar = "{" + ",".join(map(str, spec.choices)) + "}" if spec.type == "choice" else spec.type.upper()
        group.add_argument(*flags, dest=_input_dest(spec.name), default=None, help=_input_help(spec),
                           metavar=metavar, **extra)
    return p


def app_inputs(app, opts) -> tuple[dict, str | None]:
    """The checked inputs (from -i and the input flags; a flag wins) and the chat message."""
    raw: dict[str, str] = {}
    for item in opts.input:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InvalidInputError(f"-i: expected NAME=VALUE, got {item!r}", field="input")
        raw[key.strip()] = value
    for spec in app.input_specs():
        value = getattr(opts, _input_dest(spec.name), None)
        if value is not None:
            raw[spec.name] = value
    message = raw.pop("message", None) if app.kind == "chat" else None
    if getattr(opts, "message", None) is not None:
        message = opts.message
    return app.coerce_inputs(raw, from_strings=True), message


def _params(opts) -> dict:
    """The -p KEY=VALUE decoding options (an empty VALUE, which /params reads as "clear", sets nothing)."""
    return {k: v for k, v in parse_params(opts.param, what="--param").items() if v is not None}


# ---- app run -----------------------------------------------------------------------------

def _run(args) -> int:
    app = _load(args.app)
    opts = app_parser(app, "run").parse_args(args.rest)
    inputs, message = app_inputs(app, opts)
    params = _params(opts)
    if app.kind == "chat" and not message:
        raise InvalidInputError(f"{app.name}: a chat app needs a message: --message TEXT (or llmos app chat "
                                f"{shlex.quote(args.app)})", field="message")
    call = dict(message=message, explain=opts.explain, params=params or None, **inputs)
    if opts.json:
        print(json.dumps(app.run(**call).to_dict(), ensure_ascii=False, indent=2))
        return 0
    result, shown_prompt = _stream(app.stream(**call), opts.explain)
    details = result.get("explain") or {}
    if opts.explain and not shown_prompt and details:
        _lines(explain.prompt_section(details))
    if result.get("citations") and not opts.explain:  # explained, they are the prompt's retrieved chunks
        _lines(["Sources:"] + [explain.citation_line(c) for c in result["citations"]])
    if opts.explain:
        _lines(explain.tokens_section(details) +
               explain.timings_section(result.get("timings") or details.get("timings") or {}, result.get("usage")))
    if result.get("output_error"):
        print(f"llmos: warning: {app.name}: {result['output_error']}", file=sys.stderr)
    return 0


def _stream(events, explaining: bool) -> tuple[dict, bool]:
    """Prints the reply as it streams (the prompt first when explaining and the app sends it
    ahead); returns the result dict and whether the prompt was printed."""
    result, shown_prompt, started = {}, False, False
    try:
        for event in events:
            if event.type == "meta" and explaining and (event.data or {}).get("prompt") is not None:
                _lines(explain.prompt_section(event.data) + [explain.heading("reply")])
                shown_prompt = True
            elif event.type == "text":
                text = event.text if started else event.text.lstrip()  # the model's leading blank lines
                started = started or bool(text)
                sys.stdout.write(text)
                sys.stdout.flush()
            elif event.type == "tool":
                print(_tool_line(event.data or {}), file=sys.stderr)
            elif event.type == "done":
                result = event.data or {}
    finally:
        events.close()
    sys.stdout.write("\n")
    return result, shown_prompt


def _tool_line(call: dict) -> str:
    args = json.dumps(call.get("arguments"), ensure_ascii=False)
    outcome = f"error: {call['error']}" if call.get("error") else json.dumps(call.get("result"), ensure_ascii=False)
    return f"[tool] {call.get('name')}({args}) -> {explain.cut(outcome, 200)}"


def _lines(lines: list[str]) -> None:
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


# ---- app chat ----------------------------------------------------------------------------

class AppPartner:
    """An app in the terminal chat (llmos.cli.chat_repl): App.stream with the history, the
    message and the app's inputs; tool calls and citations are shown after the reply."""

    def __init__(self, app, inputs: dict):
        self.app = app
        self.inputs = inputs
        self.label = f"{app.name} ({app.kind} app, model {app.model_ref})"

    def _params(self, overrides: dict) -> dict:
        return {**(self.app.spec.params or {}), **overrides}

    def effective_params(self, overrides: dict) -> dict:
        from llmos.runtime.generation import GenerationConfig

        merged = self.app.model.generation_config.merged(GenerationConfig.from_dict(self._params(overrides)))
        return {k: v for k, v in vars(merged).items() if v is not None and k != "eos_token_id"}

    def check_params(self, overrides: dict) -> None:
        # as ModelPartner: stream() checks the options when called; nothing runs until iterated
        self.app.model.stream("check", **self._params(overrides)).close()

    def reply(self, history, message, params, cancel):
        events = self.app.stream(history=list(history), message=message, cancel=cancel, params=params or None,
                                 **self.inputs)
        try:
            for event in events:
                if event.type == "text":
                    yield "text", event.text
                elif event.type == "tool":
                    yield "note", _tool_line(event.data or {})
                elif event.type == "done":
                    citations = (event.data or {}).get("citations") or []
                    for line in (["Sources:"] if citations else []) + [explain.citation_line(c) for c in citations]:
                        yield "note", line
        finally:
            events.close()


def _chat(args) -> int:
    app = _load(args.app)
    if app.kind != "chat":
        raise InvalidInputError(f"{app.name}: a {app.kind} app answers one request at a time: llmos app run "
                                f"{shlex.quote(args.app)} (llmos app chat is for kind: chat)", field="kind")
    opts = app_parser(app, "chat").parse_args(args.rest)
    inputs, _ = app_inputs(app, opts)
    partner = AppPartner(app, inputs)
    loop = ChatLoop(partner, params=_params(opts),
                    meta={"app": app.name, "file": str(app.path), "inputs": inputs})
    partner.check_params(loop.params)
    return loop.run()


# ---- app test ----------------------------------------------------------------------------

def _test(args) -> int:
    failed = 0
    for path in args.apps:
        report = _load(path).test()
        print(report)
        failed += not report.ok
    if len(args.apps) > 1:
        print(f"{len(args.apps) - failed} of {len(args.apps)} apps passed")
    return 1 if failed else 0


# ---- app new -----------------------------------------------------------------------------

def _example(app) -> dict:
    """The flags of an example `app run`: the inputs (and message) of the app's first test,
    which its template made to work, else "..." for each required input."""
    test = app.spec.tests[0] if app.spec.tests else None
    values = dict(test.inputs) if test is not None else {}
    if app.kind == "chat":
        values["message"] = test.message if test is not None and test.message else "Hello!"
    for s in app.input_specs():
        if s.required and s.default is None and s.name not in values:
            values[s.name] = "..."
    return values


def _new(args) -> int:
    from llmos.apps.templates import TEMPLATES, new_app

    directory = Path(args.dir)
    path = new_app(args.template, args.name, directory, force=args.force)
    written = sorted(p for p in path.parent.iterdir() if p.name.startswith((f"{args.name}.", f"{args.name}_")))
    print(f"Wrote a {args.template} app ({TEMPLATES[args.template]}):")
    for p in written:
        files = sum(1 for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0
        print(f"  {_shown(p)}{os.sep + f'  ({files} files)' if p.is_dir() else ''}")
    app = _load(str(path), index=False)
    shown = shlex.quote(_shown(path))
    example = _example(app)
    print("Try:")
    if app.kind == "chat":
        print(f"  llmos app chat {shown}")
    flags = "".join(f" --{k} {shlex.quote(str(v))}" for k, v in example.items())
    print(f"  llmos app run {shown}{flags}")
    print(f"  llmos app test {shown}")
    print(f"  llmos app serve {shown}    # then open http://127.0.0.1:8000/apps/{app.name}")
    return 0


def _shown(p: Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


# ---- app serve ---------------------------------------------------------------------------

def _serve(args) -> int:
    require("serve", "llmos app serve")
    from llmos.serve.run import read_api_keys, serve

    keys = read_api_keys(args.api_keys) if args.api_keys else None
    load_options = {k: v for k, v in (("threads", args.threads), ("quant", args.quant)) if v is not None}
    return serve([], host=args.host, port=args.port, api_keys=keys, load_options=load_options,
                 max_concurrency=args.max_concurrency, apps=list(args.apps), allow_tools=args.allow_tools)


# ---- the parsers -------------------------------------------------------------------------

def _add_new(p) -> None:
    p.add_argument("template", metavar="TEMPLATE",
                   help="support-bot, writer, coder, tutor, translator or doc-qa")
    p.add_argument("name", metavar="NAME", help="the app's name (lowercase letters, digits, '-'); writes NAME.app.md")
    p.add_argument("--dir", default=".", metavar="D", help="the folder to write into (default: here)")
    p.add_argument("--force", action="store_true", help="overwrite the files if they exist")
    p.set_defaults(run=_new)


def add_app_commands(subparsers) -> None:
    """Adds `app` (new, run, chat, test, serve) and `new` to the `llmos` parser's subparsers."""
    group = subparsers.add_parser(
        "app", help="one-file apps (NAME.app.md): new, run, chat, test, serve",
        description="An app is one file, NAME.app.md: YAML front matter (kind, model, params, inputs, "
                    "knowledge, tools, output, tests) and a system prompt. `llmos app new` writes one.")
    sub = group.add_subparsers(dest="app_command", required=True, metavar="{new,run,chat,test,serve}")
    _add_new(sub.add_parser("new", help="write a new app from a template",
                            description="Writes NAME.app.md (and its tools module or knowledge folder)."))

    for name, run, text in (
            ("run", _run, "run an app once, streaming the reply"),
            ("chat", _chat, "chat with a chat app in the terminal")):
        p = sub.add_parser(name, help=text, usage=f"llmos app {name} APP [options and inputs of the app]",
                           description=f"{text[0].upper()}{text[1:]}. The app's inputs become flags: "
                                       f"`llmos app {name} APP --help` lists them.")
        p.add_argument("app", metavar="APP", help="the app file (NAME.app.md)")
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(run=run)

    t = sub.add_parser("test", help="run the tests of apps; exit 1 if one fails",
                       description="Runs each app's `tests:` offline on its model and prints a report.")
    t.add_argument("apps", nargs="+", metavar="APP")
    t.set_defaults(run=_test)

    s = sub.add_parser("serve", help="serve apps over HTTP, with a web page each",
                       description="Serves GET /v1/apps, POST /v1/apps/NAME (JSON or SSE) and a page at /apps/NAME, "
                                   "plus the OpenAI-compatible API for the models the apps name.")
    s.add_argument("apps", nargs="+", metavar="APP")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs "
                                                       "--api-keys)")
    s.add_argument("--port", type=_COUNT, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    s.add_argument("--api-keys", "--api-key-file", dest="api_keys", metavar="FILE", default=None,
                   help="file of API keys, one a line; requests then need Authorization: Bearer <key>")
    s.add_argument("--allow-tools", action="store_true",
                   help="let the apps run their tools' Python functions (off: a tool call is refused and logged)")
    s.add_argument("--max-concurrency", type=_POSITIVE_INT, default=64, metavar="N")
    s.add_argument("--threads", type=_POSITIVE_INT, default=None)
    s.add_argument("--quant", default=None, help="quantize the models at load: int8, int4, int4-asym")
    s.set_defaults(run=_serve)

    _add_new(subparsers.add_parser("new", help="write a new app from a template (llmos app new)",
                                   description="The same as `llmos app new`."))
