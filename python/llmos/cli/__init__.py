"""The `llmos` command (`main`); `python -m llmos` runs the same."""

from llmos.cli.main import main

__all__ = ["main"]
