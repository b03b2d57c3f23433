"""`llmos chat MODEL` as a person uses it: in a pseudo-terminal (pexpect), typing lines, pressing
Ctrl-C while a reply streams and Ctrl-D to leave. Every wait is bounded, so a hang fails the test.

Replies come from the bundled default model. The Ctrl-C test makes the reply fill the model's
context (min_new_tokens), so that the key lands while it streams, and checks through /save that
the kept reply is shorter than what was asked: the generation really stopped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pexpect
import pytest

from child_env import child_env

PROMPT = ">>> "
TIMEOUT = 60  # seconds for any one expected output; the model answers in well under a second


def _spawn(*args: str, cwd) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "llmos", *args], cwd=str(cwd), env=child_env(),
                          encoding="utf-8", timeout=TIMEOUT, dimensions=(40, 200))
    child.expect("/help for commands")
    child.expect_exact(PROMPT)
    return child


def _say(child: pexpect.spawn, line: str) -> str:
    """Types a line, returns what came back before the next prompt."""
    child.sendline(line)
    child.expect_exact(PROMPT)
    return child.before


def _leave(child: pexpect.spawn) -> None:
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def readline_available() -> bool:
    try:
        import readline  # noqa: F401
    except ImportError:
        return False
    return True


def _context() -> int:
    from llmos.runtime.default_model import default_model_path

    config = Path(default_model_path()) / "config.json"
    return json.loads(config.read_text(encoding="utf-8"))["max_position_embeddings"]


def test_two_turns_params_reset_save(tmp_path):
    child = _spawn("chat", "default", cwd=tmp_path)
    try:
        shown = _say(child, "/params max_new_tokens=12 seed=3")
        assert "* max_new_tokens = 12" in shown and "* seed = 3" in shown and "temperature = " in shown
        # a refused option names itself and changes nothing
        shown = _say(child, "/params top_p=7")
        assert "error: top_p" in shown and "nothing changed" in shown
        shown = _say(child, "/params temprature=0.5")
        assert "did you mean temperature?" in shown
        assert "* max_new_tokens = 12" in _say(child, "/params")

        first = _say(child, "Hello, who are you?")
        second = _say(child, "Tell me about the weather.")
        assert first.strip() and second.strip()

        _say(child, "/save two.json")
        saved = json.loads((tmp_path / "two.json").read_text(encoding="utf-8"))
        assert [m["role"] for m in saved["messages"]] == ["user", "assistant", "user", "assistant"]
        assert saved["messages"][0]["content"] == "Hello, who are you?"
        assert saved["messages"][2]["content"] == "Tell me about the weather."
        assert saved["messages"][1]["content"] and saved["messages"][1]["content"] in first
        assert saved["params"] == {"max_new_tokens": 12, "seed": 3} and saved["model"] == "default"

        assert "conversation cleared" in _say(child, "/reset")
        _say(child, "/save after-reset.json")
        assert json.loads((tmp_path / "after-reset.json").read_text(encoding="utf-8"))["messages"] == []
        assert "/params" in _say(child, "/help")
        assert "did you mean /save?" in _say(child, "/sav")
        assert not list(tmp_path.glob(".*.tmp")), "the atomic write left its temporary file"
        _leave(child)
    finally:
        child.terminate(force=True)


def test_save_to_a_missing_folder_is_an_error_not_a_crash(tmp_path):
    child = _spawn("chat", "default", cwd=tmp_path)
    try:
        assert "error: could not write no/such/folder/x.json" in _say(child, "/save no/such/folder/x.json")
        assert "* max_new_tokens = 4" in _say(child, "/params max_new_tokens=4")  # still chatting
        _leave(child)
    finally:
        child.terminate(force=True)


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(tmp_path):
    n = _context() - 40  # the reply would fill the context
    child = _spawn("chat", "default", "--temperature", "0.8", "--seed", "1", cwd=tmp_path)
    try:
        _stop_a_reply(child, n)
    finally:
        child.terminate(force=True)

    messages = json.loads((tmp_path / "stopped.json").read_text(encoding="utf-8"))["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    from llmos.runtime.default_model import load_default

    kept = len(load_default().tokenizer.encode(messages[1]["content"]))
    assert 0 < kept < n, f"the stopped reply kept {kept} tokens of the {n} asked: Ctrl-C did not stop it"


def _stop_a_reply(child: pexpect.spawn, n: int) -> None:
    _say(child, f"/params max_new_tokens={n} min_new_tokens={n}")
    child.sendline("Tell me a very long story.")
    child.expect_exact("story.")  # the terminal's echo of the line
    child.expect(r"\w")  # the reply is streaming
    sent = time.monotonic()
    child.sendintr()
    child.expect_exact("[stopped]", timeout=10)
    child.expect_exact(PROMPT, timeout=10)
    assert time.monotonic() - sent < 10

    # The engine is usable at once: a short next turn answers.
    _say(child, "/params max_new_tokens=8 min_new_tokens=")
    assert _say(child, "Hello?").strip()
    _say(child, "/save stopped.json")
    _leave(child)


def test_ctrl_d_and_ctrl_c_at_an_empty_prompt_leave(tmp_path):
    _leave(_spawn("chat", "default", cwd=tmp_path))

    child = _spawn("chat", "default", cwd=tmp_path)
    if readline_available():  # with readline, Ctrl-C on a typed line clears it, as a shell does
        child.send("half a line")
        child.expect_exact("line")
        child.sendintr()
        child.expect_exact(PROMPT)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    child = _spawn("chat", "default", cwd=tmp_path)
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("args, message", [
    (["chat", "no-such-model"], "no-such-model"),
    (["chat", "default", "--temperature", "-1"], "temperature"),
])
def test_bad_arguments_fail_before_the_prompt(tmp_path, args, message):
    import subprocess

    out = subprocess.run([sys.executable, "-m", "llmos", *args], cwd=tmp_path, env=child_env(), input="",
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
