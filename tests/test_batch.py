"""`llmos batch` on this machine, as a user runs it (subprocesses), on the bundled default model.

References: with greedy decoding every row's result must equal `Model.generate` / `Model.chat` /
`App.run` of that row alone (exact text, token count and finish reason), whatever rows it decoded
alongside; a job SIGKILLed mid-way and restarted must give every id exactly once, the same
results as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from child_env import child_env

TIMEOUT = 180
TOKENS = 8


def batch(*args, check=True, cwd=None):
    r = subprocess.run([sys.executable, "-m", "llmos", "batch", *map(str, args)], capture_output=True, text=True,
                       timeout=TIMEOUT, env=child_env(LLMOS_PROGRESS="0"), cwd=cwd)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


PROMPTS = ["Once upon a time", "The garden was", "She opened the letter and", "In the morning the",
           "It was a dark", "He said that", "The old house", "Dear Sir,"]


@pytest.fixture(scope="module")
def model():
    import llmos
    from llmos.runtime.default_model import default_model_path

    return llmos.load(default_model_path())


def test_model_rows_equal_generate_row_by_row(tmp_path, model):
    rows = [{"id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    rows.append({"prompt": "Without an id"})                                  # id = its row number, 8
    rows.append({"id": "chat", "messages": [{"role": "user", "content": "Hello there"}]})
    rows.append({"id": "short", "prompt": "The end", "params": {"max_new_tokens": 3}})
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    r = batch("default", "--input", inp, "--output", out, "--max-new-tokens", TOKENS, "--temperature", 0,
              "--in-flight", 4, "--shard-rows", 3)
    assert "11 results, 0 errors" in r.stdout
    got = read_jsonl(out)
    assert [g["id"] for g in got] == [f"p{i}" for i in range(len(PROMPTS))] + [8, "chat", "short"]
    assert len(list((tmp_path / "out.jsonl.parts").glob("shard-*.jsonl"))) == 4   # ceil(11 / 3)
    for row, g in zip(rows, got):
        n = row.get("params", {}).get("max_new_tokens", TOKENS)
        if "prompt" in row:
            ref = model.generate(row["prompt"], max_new_tokens=n, do_sample=False)
        else:
            ref = model.chat(row["messages"], max_new_tokens=n, do_sample=False)
        assert (g["text"], g["tokens"], g["finish_reason"]) == (ref.text, len(ref.token_ids), ref.finish_reason), row
    assert read_jsonl(tmp_path / "out.jsonl.errors.jsonl") == []


def test_bad_rows_go_to_the_errors_file_and_the_job_goes_on(tmp_path):
    rows = [{"id": "ok1", "prompt": "Hello"},
            {"id": "missing"},                                             # neither prompt nor messages
            {"id": "type", "prompt": 42},                                  # wrong type
            {"id": "long", "prompt": "word " * 5000},                      # over the 1,024-token context
            "not json at all",                                             # row 4
            "[1, 2]",                                                      # row 5: not an object
            {"id": "ok1", "prompt": "repeated id"},
            {"id": "badparam", "prompt": "Hi", "params": {"temperature": -1}},
            {"id": "beams", "prompt": "Hi", "params": {"num_return_sequences": 2}},
            {"id": "msgs", "messages": [{"role": "user"}]},
            {"id": "ok2", "prompt": "Goodbye"}]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    r = batch("default", "--input", inp, "--output", out, "--max-new-tokens", 4, "--temperature", 0)
    assert "2 results, 9 errors" in r.stdout
    assert [g["id"] for g in read_jsonl(out)] == ["ok1", "ok2"]
    errors = {(e["id"], e["row"]): e["reason"] for e in read_jsonl(tmp_path / "out.jsonl.errors.jsonl")}
    assert list(errors) == [("missing", 1), ("type", 2), ("long", 3), (4, 4), (5, 5), ("ok1", 6), ("badparam", 7),
                            ("beams", 8), ("msgs", 9)]
    assert "prompt" in errors[("missing", 1)] and "messages" in errors[("missing", 1)]
    assert "expected a string" in errors[("type", 2)]
    assert "context" in errors[("long", 3)]
    assert "JSON" in errors[(4, 4)]
    assert "object" in errors[(5, 5)]
    assert "repeats the id of row 0" in errors[("ok1", 6)]
    assert "temperature" in errors[("badparam", 7)]
    assert "num_return_sequences" in errors[("beams", 8)]
    assert "messages[0]" in errors[("msgs", 9)]


def test_app_rows_equal_app_run(tmp_path):
    from llmos.apps import App
    from llmos.apps.templates import new_app

    app_file = new_app("writer", "writer", tmp_path)
    rows = [{"id": "tea", "topic": "tea", "tone": "formal"},
            {"id": "sea", "topic": "the sea", "length": 40},
            {"id": "bad", "topic": "x", "tone": "angry"},                  # not one of the choices
            {"id": "chatty", "topic": "x", "message": "hi"}]               # a generate app takes no message
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    r = batch(app_file, "--input", inp, "--output", out, "--max-new-tokens", TOKENS, "--temperature", 0)
    assert "2 results, 2 errors" in r.stdout
    got = read_jsonl(out)
    app = App.load(app_file)
    for row, g in zip(rows, got):
        inputs = {k: v for k, v in row.items() if k != "id"}
        ref = app.run(params={"max_new_tokens": TOKENS, "do_sample": False}, **inputs)
        assert g["id"] == row["id"]
        assert (g["text"], g["output"], g["tokens"], g["finish_reason"]) == (
            ref.text, ref.output, ref.usage["completion_tokens"], ref.finish_reason)
    errors = {e["id"]: e["reason"] for e in read_jsonl(tmp_path / "out.jsonl.errors.jsonl")}
    assert "tone" in errors["bad"] and "message" in errors["chatty"]


CHAT_APP = """\
---
app: terse
kind: chat
params: {max_new_tokens: 6}
---
You answer in one short sentence.
"""


def test_chat_app_rows_take_a_message(tmp_path):
    from llmos.apps import App

    app_file = tmp_path / "terse.app.md"
    app_file.write_text(CHAT_APP)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "hi", "message": "Hello there"}, {"id": "none"},
                                              {"id": "n", "message": 5}])
    out = tmp_path / "out.jsonl"
    r = batch(app_file, "--input", inp, "--output", out, "--temperature", 0)
    assert "1 results, 2 errors" in r.stdout
    (got,) = read_jsonl(out)
    ref = App.load(app_file).run(message="Hello there", params={"do_sample": False})
    assert (got["id"], got["text"], got["tokens"]) == ("hi", ref.text, ref.usage["completion_tokens"])
    errors = {e["id"]: e["reason"] for e in read_jsonl(tmp_path / "out.jsonl.errors.jsonl")}
    assert "message" in errors["none"] and "message" in errors["n"]


def test_parquet_without_pyarrow_names_the_extra(tmp_path):
    (tmp_path / "in.parquet").write_bytes(b"PAR1")
    code = ("import sys; sys.modules['pyarrow'] = None; from llmos.cli.main import main; "
            f"sys.exit(main(['batch', 'default', '--input', {str(tmp_path / 'in.parquet')!r}, '--output', "
            f"{str(tmp_path / 'o.jsonl')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, env=child_env())
    assert r.returncode == 2 and "llmos[parquet]" in r.stderr, r.stderr


def test_parquet_input_gives_the_jsonl_results(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [{"id": f"r{i}", "prompt": p} for i, p in enumerate(PROMPTS[:4])]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    write_jsonl(tmp_path / "in.jsonl", rows)
    for name in ("in.parquet", "in.jsonl"):
        batch("default", "--input", tmp_path / name, "--output", tmp_path / f"{name}.out", "--max-new-tokens", 4,
              "--temperature", 0)
    assert read_jsonl(tmp_path / "in.parquet.out") == read_jsonl(tmp_path / "in.jsonl.out")


def _shards(parts: Path) -> list[Path]:
    return sorted(parts.glob("shard-*.jsonl"))


def test_killed_job_resumes_without_losing_or_repeating_a_row(tmp_path):
    rows = [{"id": f"k{i}", "prompt": f"{PROMPTS[i % len(PROMPTS)]} {i}"} for i in range(48)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["--input", inp, "--max-new-tokens", 16, "--temperature", 0, "--in-flight", 3, "--shard-rows", 2]
    ref = tmp_path / "ref.jsonl"
    batch("default", *args, "--output", ref)

    out = tmp_path / "out.jsonl"
    parts = tmp_path / "out.jsonl.parts"
    cmd = [sys.executable, "-m", "llmos", "batch", "default", *map(str, args), "--output", str(out)]
    kills = 0
    for wanted in (2, 9):  # SIGKILL twice: early, and again after the restart has written more
        proc = subprocess.Popen(cmd, env=child_env(LLMOS_PROGRESS="0"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT
        try:
            while len(_shards(parts)) < wanted and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        if proc.returncode == -signal.SIGKILL and not out.exists():
            kills += 1
    assert kills >= 1, "the job finished before it could be killed: give it more rows"
    n_before = len(_shards(parts))
    assert 0 < n_before < 24
    batch("default", *args, "--output", out)

    recorded = [json.loads(line)["row"] for p in _shards(parts) for line in p.read_text().splitlines()]
    assert sorted(recorded) == list(range(48))                             # each row in exactly one shard
    got = read_jsonl(out)
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    assert got == read_jsonl(ref)
    assert not list(parts.glob(".*.tmp"))


def test_an_output_from_another_input_or_config_is_refused(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Hello"}])
    out = tmp_path / "out.jsonl"
    batch("default", "--input", inp, "--output", out, "--max-new-tokens", 2)
    first = out.read_text()
    r = batch("default", "--input", inp, "--output", out, "--max-new-tokens", 2)   # the same job: nothing to do
    assert "nothing left to run" in r.stdout and out.read_text() == first

    write_jsonl(inp, [{"prompt": "Hello"}, {"prompt": "more"}])
    r = batch("default", "--input", inp, "--output", out, "--max-new-tokens", 2, check=False)
    assert r.returncode == 2
    assert "different input or configuration" in r.stderr and "input_sha256" in r.stderr
    r = batch("default", "--input", inp, "--output", tmp_path / "o2.jsonl", "--max-new-tokens", 2)
    r = batch("default", "--input", inp, "--output", tmp_path / "o2.jsonl", "--max-new-tokens", 3, check=False)
    assert r.returncode == 2 and "options" in r.stderr
    assert out.read_text() == first

    other = tmp_path / "mine.jsonl"
    other.write_text("my own file\n")
    r = batch("default", "--input", inp, "--output", other, check=False)
    assert r.returncode == 2 and "not written by llmos batch" in r.stderr
    assert other.read_text() == "my own file\n"


def test_progress_bar_counts_rows_on_stderr_only(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in PROMPTS[:3]])
    env = child_env(LLMOS_PROGRESS="1")
    cmd = [sys.executable, "-m", "llmos", "batch", "default", "--input", str(inp), "--max-new-tokens", "2"]
    r = subprocess.run([*cmd, "--output", str(tmp_path / "a.jsonl")], capture_output=True, text=True,
                       timeout=TIMEOUT, env=env)
    assert r.returncode == 0 and "3/3" in r.stderr and "row/s" in r.stderr and "row/s" not in r.stdout
    r = subprocess.run([*cmd, "--output", str(tmp_path / "b.jsonl"), "--quiet"], capture_output=True, text=True,
                       timeout=TIMEOUT, env=env)
    assert r.returncode == 0 and "row/s" not in r.stderr


def test_bad_arguments_are_clear_errors(tmp_path):
    r = batch("default", "--input", tmp_path / "in.csv", "--output", tmp_path / "o", check=False)
    assert r.returncode == 2 and ".jsonl or .parquet" in r.stderr
    r = batch("default", "--input", tmp_path / "nope.jsonl", "--output", tmp_path / "o", check=False)
    assert r.returncode == 2 and "no such input file" in r.stderr
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Hello"}])
    r = batch("default", "--input", inp, "--output", tmp_path / "o", "--in-flight", 0, check=False)
    assert r.returncode == 2 and "--in-flight" in r.stderr
    r = batch("default", "--input", inp, "--output", tmp_path / "o", "--shard-rows", 10**9, check=False)
    assert r.returncode == 2 and "max_batch_shard_rows" in r.stderr
