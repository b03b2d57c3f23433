"""The output of a batch job: atomic shards, a manifest, and the final files.

    OUTPUT.parts/manifest.json      the input's sha256, the model or app, the options
    OUTPUT.parts/shard-00012.jsonl  finished records, each written whole (temp name, fsync, rename)
    OUTPUT                          the results in input order, written atomically at the end
    OUTPUT.errors.jsonl             the rows that failed, with the reason (also at the end)

A restart reads the finished shards and skips their rows; a row in flight when the job died is in
no shard, so it runs again. Every row is thus in exactly one shard whatever moment the job was
killed at. Row numbers, not ids, key the shards: the manifest pins the input, so they are stable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from llmos.errors import InvalidInputError
from llmos.io.files import atomic_file, write_json_atomic

_MANIFEST = "manifest.json"
_VERSION = 1


class ShardWriter:
    """Collects finished records, writing a shard of `shard_rows` each time that many are in;
    flush() writes the rest. on_row (a progress bar) is told of each record."""

    def __init__(self, store: "Store", shard_rows: int, on_row: Callable[[], None] | None = None):
        self.store, self.shard_rows, self.on_row = store, shard_rows, on_row
        self.buffer: list[dict] = []

    def add(self, record: dict) -> None:
        self.buffer.append(record)
        if self.on_row is not None:
            self.on_row()
        if len(self.buffer) >= self.shard_rows:
            self.store.write_shard(self.buffer[:self.shard_rows])
            del self.buffer[:self.shard_rows]

    def flush(self) -> None:
        self.store.write_shard(self.buffer)
        self.buffer = []


class Store:
    def __init__(self, output: str, manifest: dict):
        self.output = Path(output)
        self.parts = Path(f"{output}.parts")
        self.errors = Path(f"{output}.errors.jsonl")
        self.manifest = {"llmos_batch": _VERSION, **manifest}
        self.done: set[int] = set()
        self._next = 0

    def open(self) -> "Store":
        """Checks the manifest against this job (refusing another input or config), removes the
        temp files of a killed job and reads which rows are finished."""
        path = self.parts / _MANIFEST
        if path.is_file():
            try:
                found = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise InvalidInputError(f"{path}: unreadable manifest ({e}); remove {self.parts} to start over",
                                        file=str(path), field="output") from None
            if found != self.manifest:
                diff = sorted(k for k in set(found) | set(self.manifest) if found.get(k) != self.manifest.get(k))
                raise InvalidInputError(
                    f"{self.output}: was written from a different input or configuration (differs in: "
                    f"{', '.join(diff)}); use another --output, or remove {self.output} and {self.parts} to "
                    "start over", file=str(self.output), field="output")
        else:
            if self.output.exists():
                raise InvalidInputError(f"{self.output}: exists and was not written by llmos batch (no "
                                        f"{path}); use another --output or remove it", file=str(self.output),
                                        field="output")
            self.parts.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, self.manifest)
        for p in self.parts.glob(".*.tmp"):
            p.unlink()
        for p in self._shards():
            self._next = max(self._next, int(p.stem.split("-")[1]) + 1)
            for rec in _read(p):
                self.done.add(rec["row"])
        return self

    def write_shard(self, records: list[dict]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        with atomic_file(self.parts / f"shard-{self._next:05d}.jsonl") as f:
            f.write(data)
        self._next += 1
        self.done.update(r["row"] for r in records)

    def finish(self) -> tuple[int, int]:
        """Writes OUTPUT and OUTPUT.errors.jsonl from the shards, in input order; returns the
        numbers of results and errors."""
        records = sorted((r for p in self._shards() for r in _read(p)), key=lambda r: r["row"])
        n_ok = n_err = 0
        with atomic_file(self.output) as out, atomic_file(self.errors) as err:
            for r in records:
                if "error" in r:
                    err.write(_line({"id": r["id"], "row": r["row"], "reason": r["error"]}))
                    n_err += 1
                else:
                    out.write(_line(r["result"]))
                    n_ok += 1
        return n_ok, n_err

    def _shards(self) -> list[Path]:
        return sorted(self.parts.glob("shard-*.jsonl"))


def _read(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _line(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
