"""`llmos import`, `quantize`, `verify` and `export-onnx` show a progress bar on stderr while they work
(on a terminal, or with LLMOS_PROGRESS=1 as here, where stderr is a pipe), never with --quiet
and never on stdout, which keeps only the result."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _llmos(*args, env):
    out = subprocess.run([sys.executable, "-m", "llmos", *args], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    return out


def _bar_done(stderr: str, desc: str) -> bool:
    """tqdm redraws the line with '\\r': the last drawing of the bar shows it full."""
    frames = [f for f in stderr.replace("\r", "\n").split("\n") if f.startswith(desc)]
    return bool(frames) and "100%" in frames[-1]


def test_long_verbs_show_progress_on_stderr_only(checkpoint, tmp_path):
    base = str(checkpoint("llama"))
    env = dict(os.environ, LLMOS_HOME=str(tmp_path / "home"), LLMOS_PROGRESS="1")

    out = _llmos("import", base, "--name", "tiny", env=env)
    assert out.stdout.startswith("imported ") and out.stdout.count("\n") == 1
    assert _bar_done(out.stderr, "importing"), out.stderr

    out = _llmos("quantize", "tiny", "--to", "int8", env=env)
    assert out.stdout.startswith("wrote tiny:int8 ") and out.stdout.count("\n") == 1
    assert _bar_done(out.stderr, "quantizing to int8"), out.stderr

    out = _llmos("verify", "tiny", env=env)
    assert out.stdout.startswith("tiny:latest: ok, ") and out.stdout.count("\n") == 1
    assert _bar_done(out.stderr, "verifying"), out.stderr

    out = _llmos("export-onnx", "tiny", str(tmp_path / "onnx"), env=env)
    assert out.stdout == str(tmp_path / "onnx" / "model.onnx") + "\n"
    assert _bar_done(out.stderr, "exporting"), out.stderr

    # --quiet wins over LLMOS_PROGRESS; without either, a pipe gets no bar.
    out = _llmos("quantize", "tiny", "--to", "int4", "--quiet", env=env)
    assert out.stdout.startswith("wrote tiny:int4 ") and out.stderr == ""
    plain = {k: v for k, v in env.items() if k != "LLMOS_PROGRESS"}
    out = _llmos("import", base, "--name", "again", env=plain)
    assert out.stdout.startswith("imported ") and out.stderr == ""


def test_the_library_reports_progress_up_to_the_total(checkpoint, tmp_path, monkeypatch):
    from llmos import quantize, registry

    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))
    base = checkpoint("llama")
    calls = []
    entry = registry.import_model(str(base), name="tiny", progress=lambda done, total: calls.append((done, total)))
    size = sum(p.stat().st_size for p in base.iterdir() if p.is_file())
    assert calls[-1] == (size, size) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert entry.size >= size

    calls.clear()
    quantize(str(base), str(tmp_path / "q"), "int4", progress=lambda done, total: calls.append((done, total)))
    total = calls[-1][1]
    assert calls[-1] == (total, total) and total > 2
    assert [d for d, _ in calls] == list(range(1, total + 1))  # one report per role, then the write


def test_eval_follows_the_same_rule(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "Once upon a time", "reference": "there was a robot"}\n', encoding="utf-8")
    args = ("eval", "default", "--metric", "chrf", "--data", str(data), "--max-new-tokens", "3")
    env = dict(os.environ, LLMOS_HOME=str(tmp_path / "home"))
    shown = _llmos(*args, env={**env, "LLMOS_PROGRESS": "1"})
    assert _bar_done(shown.stderr, "generating"), shown.stderr
    plain = _llmos(*args, env={k: v for k, v in env.items() if k != "LLMOS_PROGRESS"})
    assert plain.stderr == "" and plain.stdout == shown.stdout  # a pipe gets no bar, the same result


def _frames(stderr: str, desc: str) -> list[str]:
    return [f for f in stderr.replace("\r", "\n").split("\n") if f.startswith(desc)]


def test_the_indexing_bar_follows_the_same_rule(monkeypatch, capsys):
    """cli.progress.indexing is the bar the app verbs wrap KnowledgeIndex.build in: one step per
    file, drawn with LLMOS_PROGRESS=1, not with --quiet or LLMOS_PROGRESS=0."""
    from llmos.cli.progress import indexing

    monkeypatch.setenv("LLMOS_PROGRESS", "1")
    with indexing() as progress:
        for done in range(1, 4):
            progress(done, 3)
    frames = _frames(capsys.readouterr().err, "indexing knowledge")
    assert frames and "100%" in frames[-1] and "3/3" in frames[-1], frames
    with indexing(quiet=True) as progress:
        assert progress is None
    monkeypatch.setenv("LLMOS_PROGRESS", "0")
    with indexing() as progress:
        assert progress is None
    assert capsys.readouterr().err == ""


def test_indexing_knowledge_reports_to_the_bar(monkeypatch, capsys, tmp_path):
    knowledge = pytest.importorskip("llmos.apps.knowledge", reason="the app knowledge index is not in this tree yet")
    pytest.importorskip("bm25s")
    from llmos.cli.progress import indexing

    for i in range(3):
        (tmp_path / f"doc{i}.md").write_text(f"# Part {i}\n\nThe lighthouse keeper counts ships, {i}.\n")
    monkeypatch.setenv("LLMOS_PROGRESS", "1")
    with indexing() as progress:
        index = knowledge.KnowledgeIndex.build([tmp_path], base=tmp_path, progress=progress)
    assert index.chunks
    frames = _frames(capsys.readouterr().err, "indexing knowledge")
    assert frames and "3/3" in frames[-1], frames
