"""The input of a batch job: rows of a JSONL or Parquet file, each with a stable row number.

A row that cannot be read (bad JSON, not an object, over the size limit, a bad or repeated id)
comes out as an error record instead of stopping the job. Row numbers count from 0; a row
without an `id` takes its row number as its id.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterator

from llmos import extras, limits
from llmos.errors import InvalidInputError

FORMATS = (".jsonl", ".parquet")


@dataclass
class Row:
    row: int            # 0-based position in the input
    id: object          # the row's `id`, or its row number
    data: dict | None   # the row's fields (None when it could not be read)
    error: str | None = None


def input_format(path: str) -> str:
    for ext in FORMATS:
        if path.endswith(ext):
            return ext
    raise InvalidInputError(f"{path}: --input must be a .jsonl or .parquet file", file=path, field="input")


def read_rows(path: str) -> Iterator[Row]:
    """Every row of the input, in order, with ids checked (a string or an integer, unique)."""
    if not os.path.isfile(path):
        raise InvalidInputError(f"{path}: no such input file", file=path, field="input")
    raw = _jsonl(path) if input_format(path) == ".jsonl" else _parquet(path)
    seen: dict = {}
    for n, (data, error) in enumerate(raw):
        rid = n
        if error is None:
            rid = data.get("id", n)
            if isinstance(rid, bool) or not isinstance(rid, (str, int)):
                error, rid = f"id: expected a string or an integer, got {type(rid).__name__}", n
            elif rid in seen:
                error = f"id: {rid!r} repeats the id of row {seen[rid]}"
            else:
                seen[rid] = n
        yield Row(n, rid, data if error is None else None, error)


def _jsonl(path: str):
    cap = limits.current().max_batch_row_bytes
    with open(path, "rb") as f:
        while True:
            line = f.readline(cap + 1)
            if not line:
                return
            if len(line) > cap and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # skip the rest of the over-long line
                    line = f.readline(1 << 20)
                yield None, (f"row is over {cap} bytes (llmos.limits.max_batch_row_bytes; raise it with "
                             "LLMOS_LIMIT_MAX_BATCH_ROW_BYTES)")
                continue
            if not line.strip():
                continue  # blank lines (a trailing newline) are not rows
            try:
                data = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield None, f"not valid JSON: {e}"
                continue
            if not isinstance(data, dict):
                yield None, f"expected a JSON object, got {type(data).__name__}"
                continue
            yield data, None


def _parquet(path: str):
    extras.require("parquet", "llmos batch on a .parquet input")
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for data in batch.to_pylist():
            yield {k: v for k, v in data.items() if v is not None}, None  # a missing column is null
