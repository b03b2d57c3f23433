"""The `llmos` command line: one parser, one module per command group, and one place where
llmos errors become exit code 2. Thin: every verb calls the public Python API."""

from __future__ import annotations

import argparse
import sys

from llmos.cli.evaluate import add_evaluate_commands
from llmos.cli.generate import add_generate_commands
from llmos.cli.onnx import add_onnx_commands
from llmos.cli.registry import add_registry_commands
from llmos.cli.train import add_train_commands
from llmos.errors import LlmosError
from llmos.version import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmos", description="Embedded LLM runtime")
    p.add_argument("--version", action="version", version=f"llmos {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    add_generate_commands(sub)
    add_registry_commands(sub)
    add_onnx_commands(sub)
    add_train_commands(sub)
    add_evaluate_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except LlmosError as e:
        print(f"llmos: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if getattr(args, "command", None) == "train":
            print("\nllmos: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
