"""The `llmos` command line: one parser, one module per command group, and one place where
llmos errors become exit code 2. Thin: every verb calls the public Python API."""

from __future__ import annotations

import argparse
import difflib
import os
import sys

from llmos.cli.bench import add_bench_commands
from llmos.cli.evaluate import add_evaluate_commands
from llmos.cli.generate import add_generate_commands
from llmos.cli.onnx import add_onnx_commands
from llmos.cli.registry import add_registry_commands
from llmos.cli.serve import add_serve_commands
from llmos.cli.train import add_train_commands
from llmos.errors import LlmosError
from llmos.version import __version__


class _Parser(argparse.ArgumentParser):
    """argparse, with a hint for a mistyped or foreign flag (`--max-tokens`, OpenAI's name)."""

    def error(self, message: str):
        unknown = message.partition("unrecognized arguments: ")[2].split()
        parsers = [self] + [p for a in self._actions if isinstance(a, argparse._SubParsersAction)
                            for p in a.choices.values()]
        flags = sorted({o for p in parsers for a in p._actions for o in a.option_strings if o.startswith("--")})
        hints = []
        for arg in unknown:
            if arg.startswith("--"):
                close = difflib.get_close_matches(arg.split("=", 1)[0], flags, n=1, cutoff=0.6)
                if close:
                    hints.append(f"{arg}: did you mean {close[0]}?")
        super().error("; ".join([message] + hints))


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llmos", description="Embedded LLM runtime")
    p.add_argument("--version", action="version", version=f"llmos {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    add_generate_commands(sub)
    add_registry_commands(sub)
    add_onnx_commands(sub)
    add_train_commands(sub)
    add_evaluate_commands(sub)
    add_serve_commands(sub)
    add_bench_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except LlmosError as e:
        print(f"llmos: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`llmos ls | head`): stop quietly, as shell tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        if getattr(args, "command", None) == "train":
            print("\nllmos: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
