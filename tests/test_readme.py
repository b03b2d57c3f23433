"""Every command the README prints runs, exactly as printed, as a user would type it.

The README's code blocks are read from the file, so a command added there is run here too.
The user's world is built around them: a working folder holding the files the commands name
(`path/to/checkpoint`, `./my-checkpoint`, a GGUF file written from it, `chats.jsonl`, `heldout.jsonl`,
`prompts.jsonl`: tiny random-weight
checkpoints, chat data and text), an empty $LLMOS_HOME, and a local stand-in for the Hugging Face Hub
(tests/test_hub_pull.py's FakeHub on 127.0.0.1) serving a tiny Qwen2 as the repository the
README pulls. `llmos` on PATH runs the package under test.

The two `pip install` lines are not run here (installing inside the suite would test another
copy): the first one's command after `&&` is, and `.ci/run` runs the second one's test command.

`llmos serve --ray` needs ray (the test extra has it): without it that one line is not run and the
test ends skipped, naming it, after every other check; with LLMOS_REQUIRE_RAY=1 (.ci/run) it fails.

`llmos serve` runs in the background, as a reader would leave it: once it answers /health, the
README's `openai` client block runs against it, then SIGTERM stops it (exit 0). Its port, 8000
in the README, becomes a free one in the command and the client alike, so that runs side by side
do not collide.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from test_hub_pull import FakeHub, _repo_files

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PULLED_REPO = "Qwen/Qwen2.5-0.5B-Instruct"


def _code_blocks() -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def _python_blocks() -> list[str]:
    return [b for b in _code_blocks() if re.search(r"^import llmos$", b, flags=re.M)]


def _client_blocks() -> list[str]:
    """The blocks that talk to `llmos serve` with the openai client."""
    return [b for b in _code_blocks() if re.search(r"^from openai import OpenAI$", b, flags=re.M)]


def _embed_blocks() -> list[str]:
    """The blocks that mount app routes in a FastAPI service."""
    return [b for b in _code_blocks() if re.search(r"^from fastapi import FastAPI$", b, flags=re.M)]


def _shell_lines() -> list[str]:
    python = _python_blocks() + _client_blocks() + _embed_blocks()
    return [line.strip() for b in _code_blocks() if b not in python for line in b.splitlines() if line.strip()]


CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."}]


@pytest.fixture
def user_world(checkpoint, tmp_path, llmos):
    """The working folder, the environment and the hub a README reader would have."""
    work = tmp_path / "work"
    (work / "path" / "to").mkdir(parents=True)
    shutil.copytree(checkpoint("llama"), work / "path" / "to" / "checkpoint")
    shutil.copytree(checkpoint("qwen2"), work / "my-checkpoint")
    if importlib.util.find_spec("gguf") is not None:  # else the README's GGUF import fails, loudly
        from gguf_files import write_gguf

        write_gguf(work / "my-checkpoint", work / "qwen2.5-0.5b-instruct-q8_0.gguf", "Q8_0")
    (work / "chats.jsonl").write_text("".join(json.dumps({"messages": CHAT}) + "\n" for _ in range(4)))
    (work / "prompts.jsonl").write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n"
                                                for i, p in enumerate(("Once upon a time", "Dear Sir,", "The garden"))))
    (work / "heldout.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ("Blue is a colour.", "So is red.")))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "llmos"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m llmos "$@"\n')
    shim.chmod(0o755)
    package_root = str(Path(llmos.__file__).resolve().parent.parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
           "LLMOS_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
           "HF_TOKEN": "hf_test_token_not_real", "LLMOS_PROGRESS": "0"}
    with FakeHub({PULLED_REPO: _repo_files(checkpoint("qwen2"))}) as hub:
        env["HF_ENDPOINT"] = hub.url
        yield work, env


def _run(command: str, work: Path, env: dict) -> subprocess.CompletedProcess:
    # stdin is closed, as when a reader pipes nothing in: `llmos chat` then ends at end of input.
    out = subprocess.run(["bash", "-c", f"set -e; {command}"], cwd=work, env=env, capture_output=True, text=True,
                         timeout=600, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"README command failed: {command}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert "Traceback" not in out.stderr, f"{command}\n{out.stderr}"
    return out


def test_the_install_lines_are_what_ci_runs():
    pip_lines = [line for line in _shell_lines() if line.startswith("pip install")]
    assert pip_lines == ['pip install . && llmos run "Once upon a time"',
                         'pip install ".[test]" && python -m pytest'], pip_lines
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r'pip install .*"\$wheel\[test\]"', ci) and re.search(r"^python3 -m pytest -q$", ci, flags=re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_run_clients(command: str, work: Path, env: dict) -> str:
    """Starts the README's `llmos serve` line, runs the client blocks against it, stops it."""
    port = str(_free_port())
    assert "--port 8000" in command and all("127.0.0.1:8000" in b for b in _client_blocks()), command
    server = subprocess.Popen(["bash", "-c", "exec " + command.replace("--port 8000", f"--port {port}")], cwd=work,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"{command} exited with {server.returncode}: {server.stderr.read()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{command}: no answer on /health within 60 s"
            time.sleep(0.1)
        out = ""
        for block in _client_blocks():
            script = work / "client.py"
            script.write_text(block.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
            ran = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                                 timeout=120)
            assert ran.returncode == 0, f"README client block failed:\n{block}\n{ran.stderr}"
            out += ran.stdout
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, server.stderr.read()
        return out
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate(timeout=60)


def test_every_readme_command_runs_as_printed(user_world):
    work, env = user_world
    lines = _shell_lines()
    assert any(line.startswith("llmos pull") for line in lines)  # the walk below needs the README's order
    assert any(line.startswith("llmos serve") for line in lines) and _client_blocks()
    outputs = {}
    not_run = []
    for line in lines:
        command = line.split(" && ", 1)[1] if line.startswith("pip install") else line
        if command.startswith("python -m pytest"):
            continue  # the README's test command: .ci/run runs it (test_the_install_lines_are_what_ci_runs)
        if " --ray" in command and not _ray_importable():
            not_run.append(command)
            continue
        if command.startswith("llmos serve"):
            outputs[command] = _serve_and_run_clients(command, work, env)
            continue
        outputs[command] = _run(command, work, env).stdout
    by_verb = {c.split()[1]: out for c, out in outputs.items()}
    assert (work / "helpdesk.app.md").is_file() and "helpdesk" in by_verb["new"]
    assert " 0 failed" in by_verb["app"], by_verb["app"]  # `llmos app test`, the last `llmos app` line
    assert by_verb["run"].strip() and by_verb["generate"].strip() and by_verb["serve"].strip()
    assert "mine" in by_verb["import"] and "<|im_start|>" in by_verb["import"]  # ls, then show --template
    assert "qwen-gguf" in by_verb["import"] or importlib.util.find_spec("gguf") is None  # the GGUF one, listed
    assert (work / "qwen-onnx" / "model.onnx").is_file()
    result = json.loads(by_verb["eval"].strip().splitlines()[-1])
    assert math.isfinite(result["perplexity"]) and result["perplexity"] > 1
    for name in ("results.jsonl", "results-ray.jsonl"):  # `llmos batch`, locally and on Ray
        assert [json.loads(line)["id"] for line in (work / name).read_text().splitlines()] == [0, 1, 2], name
    home = Path(env["LLMOS_HOME"]) / "models"
    assert {p.name for p in home.iterdir() if p.is_dir()} >= {"qwen", "mine", "mine-tuned"}
    if not_run:
        pytest.skip(f"every other README line ran; not run, ray is not importable: {not_run}")


def _ray_importable() -> bool:
    import importlib.util

    if importlib.util.find_spec("ray") is not None:
        return True
    assert os.environ.get("LLMOS_REQUIRE_RAY") != "1", "LLMOS_REQUIRE_RAY=1: the README's --ray line must run here"
    return False


def test_the_python_example_runs_as_printed(user_world):
    (block,) = _python_blocks()
    work, env = user_world
    script = work / "example.py"
    script.write_text(block + "\nimport json\nprint()\nprint(json.dumps([reply.text, len(beams), len(batch), "
                              "list(logits.shape), m.config.vocab_size]))\n")
    out = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    reply, n_beams, n_batch, shape, vocab = json.loads(out.stdout.strip().splitlines()[-1])
    assert isinstance(reply, str) and n_beams == 2 and n_batch == 3
    assert len(shape) == 2 and shape[0] >= 1 and shape[1] == vocab


def test_the_fastapi_embedding_runs_as_printed(user_world):
    """The README's three lines mount an app made by the README's `llmos new` line; the service
    then lists the app and answers a call (starlette's TestClient, no socket)."""
    (block,) = _embed_blocks()
    work, env = user_world
    new = next(line for line in _shell_lines() if line.startswith("llmos new "))
    _run(new, work, env)
    script = work / "service.py"
    script.write_text(block + textwrap.dedent("""
        from fastapi.testclient import TestClient
        import json
        with TestClient(service) as client:
            listed = client.get("/v1/apps").json()
            reply = client.post("/v1/apps/helpdesk", json={"message": "How do I get a refund?",
                                                           "params": {"max_new_tokens": 8}}).json()
        print(json.dumps([[a["name"] for a in listed["data"]], reply]))
    """))
    out = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    names, reply = json.loads(out.stdout.strip().splitlines()[-1])
    assert names == ["helpdesk"] and isinstance(reply["text"], str) and reply["citations"], reply
