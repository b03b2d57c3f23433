"""Generation requests are bounded before any work is spent (llmos.limits), bytes are not
token ids, and max_length meets generation_config.json's max_new_tokens as in transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from checkpoints import KINDS
from child_env import child_env

KIND = "llama"
THREADS = int(os.environ.get("LLMOS_TEST_THREADS", "1"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each request would take minutes or gigabytes if it were started. One subprocess tries them all,
# so that a regression fails on the timeout instead of hanging the suite.
HUGE = {
    "num_beams": ("'hi'", "num_beams=100000", "max_beams"),
    "num_return_sequences": ("'hi'", "num_return_sequences=100000, do_sample=True", "max_return_sequences"),
    "stop_chars": ("'hi'", "stop=['x' * 3_000_000]", "max_stop_chars"),
    "stop_count": ("'hi'", "stop=[str(i) for i in range(100000)]", "max_stop_strings"),
    "batch": ("['hi'] * 100000", "max_new_tokens=1", "max_batch"),
    "sequences": ("['hi'] * 1000", "num_return_sequences=100, do_sample=True, max_new_tokens=1", "max_sequences"),
}


@pytest.fixture(scope="module")
def huge_results(checkpoint):
    path = checkpoint(KIND)
    script = textwrap.dedent(f"""
        import json, time, llmos
        m = llmos.load({str(path)!r}, threads={THREADS})
        out = {{}}
        for name, (prompt, opts) in {json.dumps({k: v[:2] for k, v in HUGE.items()})}.items():
            t = time.monotonic()
            try:
                eval(f"m.generate({{prompt}}, {{opts}})")
                out[name] = ["no error", "", time.monotonic() - t]
            except Exception as e:
                out[name] = [type(e).__name__, str(e), time.monotonic() - t]
        print(json.dumps(out))
    """)
    env = child_env()
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(HUGE))
def test_huge_request_is_refused_up_front(case, huge_results):
    kind, message, seconds = huge_results[case]
    limit = HUGE[case][2]
    assert kind == "InvalidInputError", f"{case}: {kind}: {message[:300]}"
    assert f"llmos.limits.{limit}" in message and f"LLMOS_LIMIT_{limit.upper()}" in message, message[:300]
    assert seconds < 5.0, f"{case}: refused only after {seconds:.1f} s"


def test_limits_are_adjustable(checkpoint, load_llmos, llmos):
    m = load_llmos(checkpoint(KIND))
    m.generate("hi", num_beams=3, max_new_tokens=2)
    before = llmos.limits.current()
    try:
        llmos.limits.configure(max_beams=2)
        with pytest.raises(llmos.errors.InvalidInputError, match="num_beams=3 is over the limit of 2"):
            m.generate("hi", num_beams=3, max_new_tokens=2)
    finally:
        llmos.limits.configure(max_beams=before.max_beams)


@pytest.mark.parametrize("data", [b"hello", bytearray(b"hello"), memoryview(b"hello")])
def test_bytes_are_not_token_ids(data, checkpoint, load_llmos, llmos):
    m = load_llmos(checkpoint(KIND))
    for call in (lambda: m.generate(data, max_new_tokens=1), lambda: m.stream(data, max_new_tokens=1),
                 lambda: m.logits(data)):
        with pytest.raises(llmos.errors.InvalidInputError, match="bytes are not accepted"):
            call()


@pytest.mark.parametrize("json_max_new", [None, 5])
def test_max_length_against_generation_config_as_transformers(json_max_new, tmp_checkpoint, llmos, reference_model):
    """transformers 5 lets generation_config.json's max_new_tokens win over a caller's max_length
    (with a warning); without it, max_length counts the prompt. The new-token counts must agree."""
    from conftest import reference_model_uncached

    path = tmp_checkpoint(KIND)
    gc_file = path / "generation_config.json"
    gc = json.loads(gc_file.read_text())
    if json_max_new is not None:
        gc["max_new_tokens"] = json_max_new
    gc_file.write_text(json.dumps(gc))
    prompt = [int(i) for i in np.arange(3, 10)]
    max_length = len(prompt) + 11

    ref = reference_model_uncached(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ref.generate(torch.tensor([prompt]), max_length=max_length, do_sample=False)
    ref_new = out[0, len(prompt):].tolist()

    m = llmos.load(str(path), threads=THREADS)
    if json_max_new is None:
        g = m.generate(prompt, max_length=max_length)
    else:
        with pytest.warns(UserWarning, match="max_new_tokens=5 .*generation_config.json.* takes precedence"):
            g = m.generate(prompt, max_length=max_length)
    # Token counts only: greedy ties on random weights may pick different ids.
    assert len(g.token_ids) == len(ref_new) == (json_max_new or 11)
