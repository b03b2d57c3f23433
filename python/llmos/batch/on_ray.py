"""A batch job as a Ray Data pipeline: rows -> map_batches over an actor pool of engines -> shards.

Each actor loads the model (or app) once and runs a batch's rows through the same row function
as a local job (work.Target), `in_flight` at a time on its own engine, so they decode together.
The driver writes the shards with the local rule (store.Store), after skipping the rows finished
before: a killed Ray job resumes exactly as a local one does.

The rows come from the driver's own reading of the file (rows.py) rather than
ray.data.read_json / read_parquet: a bad row (invalid JSON, a prompt of the wrong type in one row
of many) must become an error record, which Arrow's readers, inferring one schema for all rows,
cannot give; and the finished rows must be known before the dataset is built. Each row travels as
one JSON string, so rows of different shapes share the dataset's one string column.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

from llmos import extras
from llmos.batch.rows import Row
from llmos.batch.store import ShardWriter, Store
from llmos.batch.work import Target

# Share of an actor's CPUs reserved for it: the rest is left to Ray Data's own tasks (reading,
# splitting blocks), which would otherwise wait for a free CPU behind the engines.
_ACTOR_CPU_SHARE = 0.75


class _EngineActor:
    """One engine in the pool (a Ray Data callable class: made once per actor)."""

    def __init__(self, target: str, options: dict, threads: int, in_flight: int):
        self.target = Target(target, options=options, threads=threads)
        self.pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="llmos-batch")

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        rows = [Row(**json.loads(s)) for s in batch["row"]]
        records = list(self.pool.map(self.target.process, rows))
        return {"record": np.array([json.dumps(r, ensure_ascii=False) for r in records], dtype=object)}


def _local_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_ray(target: str, options: dict, rows: Iterable[Row], store: Store, *, actors: int = 1, in_flight: int = 16,
            shard_rows: int = 64, address: str | None = None, threads: int | None = None,
            on_row: Callable[[], None] | None = None) -> None:
    """Runs every row not yet in `store` on Ray: the cluster at `address`, or a local one on
    127.0.0.1 started (and stopped) here."""
    extras.require("ray", "llmos batch --ray", modules=("ray",))
    import ray

    out = ShardWriter(store, shard_rows, on_row)
    finished = out.add

    items = []
    for row in rows:
        if row.row in store.done:
            continue
        if row.error is not None:  # unreadable: no engine needed
            finished({"row": row.row, "id": row.id, "error": row.error})
        else:
            items.append({"row": json.dumps({"row": row.row, "id": row.id, "data": row.data}, ensure_ascii=False)})
    started = False
    try:
        if items:
            if not ray.is_initialized():
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                if address:
                    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
                else:
                    ray.init(num_cpus=_local_cpus(), include_dashboard=False, _node_ip_address="127.0.0.1",
                             log_to_driver=False, logging_level=logging.WARNING)
                started = True
            cpus = ray.cluster_resources().get("CPU", 1.0)
            per_actor = cpus / actors
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # llmos draws its own bar, counting rows
            logging.getLogger("ray.data").setLevel(logging.ERROR)  # its start/finish notes would cut through the bar
            ds = ray.data.from_items(items).map_batches(
                _EngineActor, batch_size=in_flight, compute=ray.data.ActorPoolStrategy(size=actors),
                fn_constructor_kwargs={"target": target, "options": options, "in_flight": in_flight,
                                       "threads": threads or max(1, int(per_actor))},
                num_cpus=per_actor * _ACTOR_CPU_SHARE)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for s in batch["record"]:
                    finished(json.loads(s))
        out.flush()
    finally:
        if started:
            ray.shutdown()
