"""`llmos bench`: prefill / decode tokens/s and peak memory of a model, as a user runs it, and the
measuring code it shares with tools/bench.py. No timing is asserted (CI machines vary), only that
every figure is there, positive and for the sizes asked."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _llmos(*args, env=None):
    return subprocess.run([sys.executable, "-m", "llmos", "bench", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_json_has_every_figure_for_the_sizes_asked():
    out = _llmos("default", "--prompt", "16", "--gen", "8", "--reps", "2", "--threads", "1", "--json")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    r = json.loads(out.stdout)
    assert (r["prompt_tokens"], r["gen_tokens"], r["reps"], r["threads"]) == (16, 8, 2, 1)
    for key in ("prefill_tps", "decode_tps", "peak_rss_mb"):
        assert r[key] > 0, key
    assert len(r["prefill_s"]) == len(r["decode_s"]) == 2 and min(r["prefill_s"] + r["decode_s"]) > 0
    assert r["context"] > 0 and r["dtype"] and r["isa"]


def test_int4_and_the_default_sizes_fit_the_context():
    out = _llmos("default", "--quant", "int4", "--reps", "1", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["quant"] == "int4" and r["prefill_tps"] > 0 and r["decode_tps"] > 0
    if r["context"] >= 512 + 128:
        assert (r["prompt_tokens"], r["gen_tokens"]) == (512, 128) and out.stderr == ""
    else:  # scaled down, and said so
        assert r["prompt_tokens"] + r["gen_tokens"] <= r["context"]
        assert f"context is {r['context']} tokens" in out.stderr


def test_the_table_and_a_progress_bar_on_stderr():
    out = _llmos("default", "--prompt", "16", "--gen", "8", "--reps", "2", env={"LLMOS_PROGRESS": "1"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("| model |") and "| pp16 |" in lines[2] and "| tg8 |" in lines[3]
    assert lines[4].startswith("peak memory (RSS): ")
    frames = [f for f in out.stderr.replace("\r", "\n").split("\n") if f.startswith("benchmarking")]
    assert frames and "100%" in frames[-1], out.stderr
    assert "benchmarking" not in out.stdout


@pytest.mark.parametrize("args, field", [
    (("--prompt", "0"), "--prompt"),
    (("--gen", "-3"), "--gen"),
    (("--reps", "0"), "--reps"),
    (("--prompt", "100000"), "prompt: 100000 tokens"),
    (("--gen", "100000"), "gen: 100000 tokens"),
])
def test_bad_sizes_are_clear_errors(args, field):
    out = _llmos("default", *args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("llmos: error: ") and field in out.stderr and "Traceback" not in out.stderr


def test_plan_sizes_halves_the_defaults_to_fit():
    from llmos.errors import InvalidInputError
    from llmos.runtime.benchmark import bench, plan_sizes

    assert plan_sizes(1024) == (512, 128, None)
    p, g, note = plan_sizes(256)
    assert (p, g) == (128, 32) and "256" in note
    assert plan_sizes(256, prompt=255, gen=254)[:2] == (255, 254)
    with pytest.raises(InvalidInputError, match="at most 254"):
        plan_sizes(256, gen=255)
    with pytest.raises(InvalidInputError, match="reps"):
        bench(None, 8, 8, reps=0)  # refused before the model is touched


def test_tools_bench_times_llmos_with_the_same_code(checkpoint, monkeypatch):
    spec = importlib.util.spec_from_file_location("tools_bench", ROOT / "tools" / "bench.py")
    tools_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tools_bench)
    tiny = checkpoint("llama")
    monkeypatch.setattr(tools_bench, "checkpoint", lambda shape: tiny)
    monkeypatch.setattr(tools_bench, "PREFILL", 16)
    monkeypatch.setattr(tools_bench, "DECODE", 8)
    calls = []
    from llmos.runtime import benchmark

    real = benchmark.time_model
    monkeypatch.setattr(benchmark, "time_model", lambda *a: calls.append(a[2]) or real(*a))
    r = tools_bench.measure("llmos-fp32", "tiny", 1)
    assert calls == [8] and r["prefill_tps"] > 0 and r["decode_tps"] > 0 and r["rss_mb"] > 0
