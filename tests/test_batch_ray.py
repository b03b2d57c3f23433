"""`llmos batch --ray --actors 2` on a local Ray that the command starts on 127.0.0.1 and stops.

Reference: the same job run locally (greedy): the Ray pipeline, resuming that job with half its
shards gone, must give the same results, every id once, and the same errors file. Skipped, loudly, without Ray; LLMOS_REQUIRE_RAY=1 makes a
missing Ray a failure (CI installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from child_env import child_env

if importlib.util.find_spec("ray") is None:
    if os.environ.get("LLMOS_REQUIRE_RAY") == "1":
        raise RuntimeError("LLMOS_REQUIRE_RAY=1 but ray is not installed (pip install 'llmos[ray]')")
    pytest.skip("SKIPPED: ray is not installed; `llmos batch --ray` is untested here (pip install 'llmos[ray]')",
                allow_module_level=True)

TIMEOUT = 150


def batch(*args):
    r = subprocess.run([sys.executable, "-m", "llmos", "batch", *map(str, args)], capture_output=True, text=True,
                       timeout=TIMEOUT, env=child_env(LLMOS_PROGRESS="0", RAY_USAGE_STATS_ENABLED="0"))
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ray_pipeline_gives_the_local_results(tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"Row {i}: once upon a time"} for i in range(12)]
    rows += [{"id": "bad", "prompt": 7}, {"id": "chat", "messages": [{"role": "user", "content": "Hi"}]}]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--input", inp, "--max-new-tokens", 6, "--temperature", 0, "--shard-rows", 4]
    batch("default", *common, "--output", tmp_path / "local.jsonl")
    # The Ray job resumes one that died after writing two of its four shards: it must run only the
    # rows of the other two, and end with every row in exactly one shard.
    shutil.copytree(tmp_path / "local.jsonl.parts", tmp_path / "ray.jsonl.parts")
    for shard in sorted((tmp_path / "ray.jsonl.parts").glob("shard-*.jsonl"))[1::2]:
        shard.unlink()
    start = time.monotonic()
    r = batch("default", *common, "--output", tmp_path / "ray.jsonl", "--ray", "--actors", 2, "--in-flight", 3)
    assert time.monotonic() - start < 120
    assert "13 results, 1 errors" in r.stdout and " 6 rows run" in r.stdout, r.stdout
    assert read_jsonl(tmp_path / "ray.jsonl") == read_jsonl(tmp_path / "local.jsonl")
    assert read_jsonl(tmp_path / "ray.jsonl.errors.jsonl") == read_jsonl(tmp_path / "local.jsonl.errors.jsonl")
    recorded = sorted(json.loads(line)["row"] for p in (tmp_path / "ray.jsonl.parts").glob("shard-*.jsonl")
                      for line in p.read_text().splitlines())
    assert recorded == list(range(len(rows)))
