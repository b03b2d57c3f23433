"""The `llmos` command line: one parser, one module per command group, and one place where
llmos errors become exit code 2. Thin: every verb calls the public Python API."""

from __future__ import annotations

import argparse
import os
import sys

from llmos.cli.app import add_app_commands
from llmos.cli.batch import add_batch_command
from llmos.cli.bench import add_bench_commands
from llmos.cli.chat import add_chat_command
from llmos.cli.evaluate import add_evaluate_commands
from llmos.cli.generate import add_generate_commands
from llmos.cli.onnx import add_onnx_commands
from llmos.cli.parser import HintingParser
from llmos.cli.registry import add_registry_commands
from llmos.cli.serve import add_serve_commands
from llmos.cli.train import add_train_commands
from llmos.errors import LlmosError
from llmos.version import __version__


def _parser() -> argparse.ArgumentParser:
    p = HintingParser(prog="llmos", description="Embedded LLM runtime")
    p.add_argument("--version", action="version", version=f"llmos {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    add_generate_commands(sub)
    add_chat_command(sub)
    add_app_commands(sub)
    add_registry_commands(sub)
    add_onnx_commands(sub)
    add_train_commands(sub)
    add_evaluate_commands(sub)
    add_serve_commands(sub)
    add_batch_command(sub)
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
