"""`llmos app ...` as a user runs it (subprocesses, exit codes, what is printed), on small app
files written here and the bundled default model.

The reference for what `app run` prints is the Python API: with greedy decoding the streamed
reply must equal `App.run(...).text` exactly (less the leading blank line the CLI does not show),
and --json must be AppResult.to_dict() of the same request.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx

import pexpect
import pytest

from child_env import child_env
from serve_server import serve_process

TIMEOUT = 120  # seconds for one command; each loads the bundled model (well under a second)

WRITER = """\
---
app: writer
kind: generate
description: Writes a short text
params: {max_new_tokens: 16, temperature: 0.7, seed: 1}
inputs:
  tone: {type: choice, choices: [formal, friendly], default: friendly, description: how it sounds}
  length: {type: integer, default: 50, min: 10, max: 400}
  topic: {type: string, description: what to write about}
  draft_only: {type: boolean, default: false}
tests:
  - name: writes words
    inputs: {topic: tea}
    expect: {regex: "[a-z]+"}
---
Write a {{ tone }} text of about {{ length }} words about {{ topic }}.{% if draft_only %} A draft.{% endif %}
"""

HELPDESK = """\
---
app: helpdesk
kind: chat
params: {max_new_tokens: 16, seed: 2}
knowledge: [docs/]
inputs:
  company: {type: string, default: Acme}
---
You answer questions about {{ company }}'s kettles.
"""

FAQ = """\
# Kettles

The Acme kettle boils one litre of water in three minutes.

# Warranty

Every kettle has a warranty of two years; keep the receipt.
"""


def llmos(*args: str, cwd, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos", *args], cwd=cwd, env=child_env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def apps(tmp_path):
    (tmp_path / "writer.app.md").write_text(WRITER, encoding="utf-8")
    (tmp_path / "helpdesk.app.md").write_text(HELPDESK, encoding="utf-8")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "faq.md").write_text(FAQ, encoding="utf-8")
    return tmp_path


def _reference(path, **kw):
    from llmos.apps import App

    return App.load(path).run(**kw)


GREEDY = {"do_sample": False, "max_new_tokens": 12}


def test_run_streams_what_the_python_api_returns(apps):
    out = llmos("app", "run", "writer.app.md", "--topic", "the sea", "--tone", "formal", "-p", "temperature=0",
                "-p", "max_new_tokens=12", cwd=apps)
    assert out.returncode == 0, out.stderr
    ref = _reference(apps / "writer.app.md", params=GREEDY, topic="the sea", tone="formal")
    assert ref.text.strip(), "the reference reply is empty: the comparison would prove nothing"
    assert out.stdout == ref.text.lstrip() + "\n"


def test_inputs_from_i_and_flags_are_the_same_request(apps):
    a = llmos("app", "run", "writer.app.md", "-i", "topic=tea", "-i", "length=20", "-i", "draft_only=yes",
              "-p", "temperature=0", cwd=apps)
    b = llmos("app", "run", "writer.app.md", "--topic", "tea", "--length", "20", "--draft-only", "-p",
              "temperature=0", cwd=apps)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout and a.stdout.strip()


def test_json_is_the_result_dict(apps):
    out = llmos("app", "run", "writer.app.md", "--topic", "the sea", "-p", "temperature=0", "-p", "max_new_tokens=12",
                "--json", cwd=apps)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    ref = _reference(apps / "writer.app.md", params=GREEDY, topic="the sea").to_dict()
    for key in ("text", "output", "output_error", "citations", "tool_calls", "finish_reason", "usage"):
        assert got[key] == ref[key], key
    assert got["usage"]["completion_tokens"] == 12 and got["explain"] is None


def test_explain_prints_prompt_tokens_and_timings(apps):
    out = llmos("app", "run", "writer.app.md", "--topic", "the sea", "--tone", "formal", "-p", "temperature=0",
                "-p", "max_new_tokens=6", "--explain", cwd=apps)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for section in ("── prompt (", "── reply", "── tokens (6)", "── timings"):
        assert section in text, section
    assert "Write a formal text of about 50 words about the sea." in text  # the rendered prompt
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("── tokens (6)"))
    end = next(i for i, line in enumerate(lines) if line.startswith("── timings"))
    table = lines[start + 1:end]
    assert table[0].split() == ["#", "token", "logprob", "top", "alternatives"]
    rows = table[1:]
    assert [r.split()[0] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    # greedy: each chosen token is at least as likely as every alternative shown
    for row in rows[1:]:
        numbers = [float(w) for w in row.split() if _is_number(w)]
        chosen, alternatives = numbers[1], numbers[2:]
        assert all(chosen >= a - 1e-6 for a in alternatives), row
    assert "time to first token" in text and "tokens/s" in text


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def test_knowledge_app_prints_its_sources(apps):
    out = llmos("app", "run", "helpdesk.app.md", "--message", "How long is the kettle warranty?", cwd=apps)
    assert out.returncode == 0, out.stderr
    assert "Sources:" in out.stdout and "docs/faq.md:" in out.stdout and "warranty of two years" in out.stdout
    out = llmos("app", "run", "helpdesk.app.md", "--message", "How long is the kettle warranty?", "--explain",
                cwd=apps)
    assert out.returncode == 0, out.stderr
    chunks = out.stdout.split("── retrieved chunks (")[1].split("── reply")[0]
    assert "[1] docs/faq.md:" in chunks and "warranty of two years" in chunks


def test_help_after_the_app_lists_its_inputs(apps):
    out = llmos("app", "run", "writer.app.md", "--help", cwd=apps)
    assert out.returncode == 0, out.stderr
    assert "inputs of writer" in out.stdout
    assert "--tone {formal,friendly}" in out.stdout and "how it sounds" in out.stdout
    assert "--length INTEGER" in out.stdout and "10..400" in out.stdout and "what to write about" in out.stdout


@pytest.mark.parametrize("args, says", [
    (["-i", "topic=tea", "-i", "lenght=20"], ["unknown input 'lenght'", "did you mean 'length'"]),
    (["--topic", "tea", "--tonee", "formal"], ["--tonee", "did you mean --tone?"]),
    (["--topic", "tea", "--length", "5"], ["input length", "minimum of 10"]),
    (["--topic", "tea", "--tone", "rude"], ["input tone", "formal, friendly"]),
    (["--tone", "formal"], ["input topic is required"]),
    (["--topic", "tea", "-i", "oops"], ["expected NAME=VALUE"]),
    (["--topic", "tea", "-p", "temprature=1"], ["did you mean temperature?"]),
    (["--topic", "tea", "-p", "top_p=7"], ["top_p"]),
])
def test_bad_input_exits_2_naming_it(apps, args, says):
    out = llmos("app", "run", "writer.app.md", *args, cwd=apps)
    assert out.returncode == 2, out.stdout
    for s in says:
        assert s in out.stderr, (s, out.stderr)
    assert "Traceback" not in out.stderr


def test_chat_app_run_needs_a_message_and_app_chat_needs_a_chat_app(apps):
    out = llmos("app", "run", "helpdesk.app.md", cwd=apps)
    assert out.returncode == 2 and "--message" in out.stderr
    out = llmos("app", "chat", "writer.app.md", cwd=apps)
    assert out.returncode == 2 and "llmos app run writer.app.md" in out.stderr


def test_broken_app_file_names_file_and_line(apps):
    (apps / "bad.app.md").write_text("---\napp: bad\nkind: chatt\n---\nHi\n", encoding="utf-8")
    out = llmos("app", "run", "bad.app.md", cwd=apps)
    assert out.returncode == 2 and "bad.app.md:3" in out.stderr and "Traceback" not in out.stderr
    out = llmos("app", "run", "missing.app.md", cwd=apps)
    assert out.returncode == 2 and "missing.app.md" in out.stderr and "Traceback" not in out.stderr


def test_app_chat_two_turns_with_citations_and_params(apps):
    child = pexpect.spawn(sys.executable, ["-m", "llmos", "app", "chat", "helpdesk.app.md", "--company", "Acme"],
                          cwd=str(apps), env=child_env(), encoding="utf-8", timeout=60, dimensions=(40, 200))
    try:
        child.expect("helpdesk")
        child.expect_exact(">>> ")
        child.sendline("/params")
        child.expect_exact(">>> ")
        assert "  max_new_tokens = 16" in child.before and "  seed = 2" in child.before  # the app's, not set here
        for question in ("How long is the warranty?", "How fast does the kettle boil?"):
            child.sendline(question)
            child.expect_exact(">>> ")
            assert "[1] docs/faq.md:" in child.before, child.before
        child.sendline("/save talk.json")
        child.expect_exact(">>> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.terminate(force=True)
    saved = json.loads((apps / "talk.json").read_text(encoding="utf-8"))
    assert saved["app"] == "helpdesk" and saved["inputs"] == {"company": "Acme"}
    assert [m["content"] for m in saved["messages"][::2]] == ["How long is the warranty?",
                                                              "How fast does the kettle boil?"]


def test_serve_passes_the_apps_and_flags_to_the_server(apps, monkeypatch, capsys):
    """The server itself is tested with the web pages; here, that the command hands it the right call."""
    import llmos.serve.run as run
    from llmos.cli import main

    calls = []
    monkeypatch.setattr(run, "serve", lambda models, **kw: calls.append((models, kw)) or 0)
    keys = apps / "keys.txt"
    keys.write_text("a-long-enough-secret-key\n", encoding="utf-8")
    assert main(["app", "serve", str(apps / "writer.app.md"), str(apps / "helpdesk.app.md"), "--host", "0.0.0.0",
                 "--port", "0", "--allow-tools", "--api-key-file", str(keys)]) == 0
    (models, kw), = calls
    assert models == [] and kw["apps"] == [str(apps / "writer.app.md"), str(apps / "helpdesk.app.md")]
    assert kw["allow_tools"] is True and kw["host"] == "0.0.0.0" and kw["port"] == 0
    assert kw["api_keys"] == run.read_api_keys(str(keys))
    assert main(["app", "serve", str(apps / "writer.app.md")]) == 0
    assert calls[1][1]["allow_tools"] is False and calls[1][1]["api_keys"] is None


def test_serve_refuses_bad_flags(apps):
    out = llmos("app", "serve", "writer.app.md", "--port", "-1", cwd=apps)
    assert out.returncode == 2 and "--port" in out.stderr
    out = llmos("app", "serve", cwd=apps)
    assert out.returncode == 2 and "APP" in out.stderr


def test_app_test_reports_and_exits_1_on_a_failure(apps):
    out = llmos("app", "test", "writer.app.md", cwd=apps)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 0 failed" in out.stdout and "PASS writes words" in out.stdout

    strict = WRITER.replace("app: writer", "app: strict").replace('regex: "[a-z]+"', "contains: zebra-unicorn")
    (apps / "strict.app.md").write_text(strict, encoding="utf-8")
    out = llmos("app", "test", "writer.app.md", "strict.app.md", cwd=apps)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL writes words" in out.stdout and "contains 'zebra-unicorn': not in the reply" in out.stdout
    assert "1 of 2 apps passed" in out.stdout


def test_serve_answers_the_apps_over_http(apps):
    with serve_process("writer.app.md", "helpdesk.app.md", command=("app", "serve"), cwd=apps) as (proc, base):
        listed = httpx.get(base + "/v1/apps", timeout=TIMEOUT).json()
        assert sorted(a["name"] for a in listed["data"]) == ["helpdesk", "writer"]
        got = httpx.post(base + "/v1/apps/writer", timeout=TIMEOUT,
                         json={"inputs": {"topic": "the sea"}, "params": GREEDY}).json()
        assert got["text"] == _reference(apps / "writer.app.md", params=GREEDY, topic="the sea").text
        page = httpx.get(base + "/apps/writer", timeout=TIMEOUT)
        assert page.status_code == 200 and "<html" in page.text.lower()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0


TEMPLATES = ["support-bot", "writer", "coder", "tutor", "translator", "doc-qa"]


def _bundled_context() -> int:
    from llmos.runtime.default_model import default_model_path

    config = json.loads((Path(default_model_path()) / "config.json").read_text(encoding="utf-8"))
    return config["max_position_embeddings"]


# The templates are made for the bundled model with 1,024 tokens of context: at 256 the tutor's
# max_new_tokens does not fit, nor the retrieved chunks of support-bot and doc-qa.
NEEDS_LONG_CONTEXT = {"tutor", "support-bot", "doc-qa"}


def _skip_below_1024(why: str) -> None:
    if _bundled_context() < 1024:
        pytest.skip(f"{why}: needs the bundled model retrained with 1,024 tokens of context "
                    f"(this one has {_bundled_context()})")


@pytest.mark.parametrize("template", TEMPLATES)
def test_new_writes_an_app_whose_printed_commands_work(tmp_path, template):
    _new_and_its_commands(tmp_path, template, folder=".", run=template not in NEEDS_LONG_CONTEXT or
                          _bundled_context() >= 1024)


@pytest.mark.parametrize("template", TEMPLATES)
def test_new_app_passes_its_own_tests(tmp_path, template):
    if template in NEEDS_LONG_CONTEXT:
        _skip_below_1024(f"the {template} template's tests")
    assert llmos("new", template, "mine", cwd=tmp_path).returncode == 0
    out = llmos("app", "test", "mine.app.md", cwd=tmp_path)
    assert out.returncode == 0 and " 0 failed" in out.stdout, out.stdout + out.stderr


def test_knowledge_app_in_another_folder(apps):
    (apps / "sub").mkdir()
    for name in ("helpdesk.app.md", "docs"):
        (apps / name).rename(apps / "sub" / name)
    out = llmos("app", "run", "sub/helpdesk.app.md", "--message", "How long is the kettle warranty?", cwd=apps)
    assert out.returncode == 0, out.stderr
    assert "sub/docs/faq.md" not in out.stdout and "docs/faq.md:" in out.stdout  # relative to the app file


def test_new_into_another_folder(tmp_path):
    _new_and_its_commands(tmp_path, "writer", folder="apps")


def _new_and_its_commands(tmp_path, template: str, folder: str, run: bool = True) -> None:
    """`llmos app new`, then every command it prints but `test` (test_new_app_passes_its_own_tests)
    and `serve` (test_serve_answers_the_apps_over_http serves apps the same way)."""
    out = llmos("app", "new", template, "my-app", "--dir", folder, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    app_file = str(Path(folder) / "my-app.app.md")
    assert (tmp_path / app_file).is_file() and app_file in out.stdout
    commands = [shlex.split(line, comments=True) for line in out.stdout.split("Try:\n")[1].splitlines()]
    verbs = [c[2] for c in commands]
    assert verbs[-2:] == ["test", "serve"] and "run" in verbs, verbs
    if not run:
        _skip_below_1024(f"running the {template} template")
    for command in commands:
        assert command[:2] == ["llmos", "app"] and app_file in command, command
        if command[2] in ("test", "serve"):
            continue
        run = subprocess.run([sys.executable, "-m", "llmos", *command[1:]], cwd=tmp_path, env=child_env(),
                             input="", capture_output=True, text=True, timeout=TIMEOUT)  # chat: EOF leaves
        assert run.returncode == 0, (command, run.stdout, run.stderr)
        if command[2] == "run":
            assert run.stdout.strip(), command


def test_new_refuses_to_overwrite_without_force(tmp_path):
    assert llmos("new", "writer", "blog", cwd=tmp_path).returncode == 0
    before = (tmp_path / "blog.app.md").read_text(encoding="utf-8")
    (tmp_path / "blog.app.md").write_text("mine", encoding="utf-8")
    out = llmos("new", "writer", "blog", cwd=tmp_path)
    assert out.returncode == 2 and "already exists" in out.stderr and "--force" in out.stderr
    assert (tmp_path / "blog.app.md").read_text(encoding="utf-8") == "mine"
    assert llmos("new", "writer", "blog", "--force", cwd=tmp_path).returncode == 0
    assert (tmp_path / "blog.app.md").read_text(encoding="utf-8") == before
    out = llmos("new", "writr", "x", cwd=tmp_path)
    assert out.returncode == 2 and "did you mean 'writer'" in out.stderr
    out = llmos("new", "writer", "Bad Name", cwd=tmp_path)
    assert out.returncode == 2 and "not an app name" in out.stderr
