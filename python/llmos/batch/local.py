"""A batch job on this machine: up to `in_flight` rows at once on the model's engine.

Each row runs in a worker thread as an ordinary Model.generate / Model.chat / App.run call; they
all submit to the model's one continuous-batching engine, so the rows in flight decode together
(one forward per step for all of them) while each gives exactly what it gives alone.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Iterable

from llmos.batch.rows import Row
from llmos.batch.store import ShardWriter, Store
from llmos.batch.work import Target


def run_local(target: Target, rows: Iterable[Row], store: Store, *, in_flight: int = 16, shard_rows: int = 64,
              on_row: Callable[[], None] | None = None) -> None:
    """Runs every row not yet in `store`, writing a shard each `shard_rows` finished rows."""
    out = ShardWriter(store, shard_rows, on_row)
    finished = out.add

    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="llmos-batch")
    pending: set = set()
    try:
        for row in rows:
            if row.row in store.done:
                continue
            if row.error is not None:  # unreadable: no model needed
                finished(target.process(row))
                continue
            pending.add(pool.submit(target.process, row))
            if len(pending) >= in_flight:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    finished(f.result())
        for f in pending:
            finished(f.result())
        pending = set()
        out.flush()
    finally:
        pool.shutdown(wait=not pending, cancel_futures=True)
