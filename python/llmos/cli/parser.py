"""The CLI's argparse parser class: a mistyped or foreign flag (`--max-tokens`, OpenAI's name; an
app input spelled wrong) gets a did-you-mean hint from the flags the command knows."""

from __future__ import annotations

import argparse
import difflib


class HintingParser(argparse.ArgumentParser):
    """argparse, with a hint for each unrecognized --flag that is close to a known one."""

    def error(self, message: str):
        unknown = message.partition("unrecognized arguments: ")[2].split()
        flags = sorted(_flags(self))
        hints = []
        for arg in unknown:
            if arg.startswith("--"):
                close = difflib.get_close_matches(arg.split("=", 1)[0], flags, n=1, cutoff=0.6)
                if close:
                    hints.append(f"{arg}: did you mean {close[0]}?")
        super().error("; ".join([message] + hints))


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    """The --flags of a parser and of its subcommands, at every depth (`llmos app run`)."""
    out = set()
    for action in parser._actions:
        out.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _flags(sub)
    return out
