"""JSON Lines input: one object per line, errors naming the file and line."""

from __future__ import annotations

import json
from typing import Iterator

from llmos.errors import DatasetError


def read_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object raises
    DatasetError naming ``path:line``."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})", file=path) from None
    with f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start})",
                                   file=path, line=n) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})",
                                   file=path, line=n) from None
            except RecursionError:
                raise DatasetError(f"{path}:{n}: JSON nested too deeply", file=path, line=n) from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}",
                                   file=path, line=n)
            yield n, obj
