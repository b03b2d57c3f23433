"""`llmos batch`: one request per row of a JSONL or Parquet file, written resumably.

rows.py reads and hashes the input; work.py turns one row into one result (a model's prompt or
messages, or an app's inputs); store.py keeps the output as atomic shards plus a manifest, so a
job killed at any moment restarts where it stopped; local.py feeds the model's continuous-batching
engine with many rows in flight; on_ray.py runs the same row function as a Ray Data pipeline.
"""

from llmos.batch.local import run_local
from llmos.batch.store import Store

__all__ = ["Store", "run_local"]
