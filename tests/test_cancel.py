"""Stopping a running call: Ctrl-C (SIGINT) and CancelToken.cancel() end a long generate, a long
prefill, beam search or a stream within milliseconds, not when the C++ call would have ended, and
the model gives the same tokens afterwards as a freshly loaded one.

Method: each call is sized to run for many seconds if nothing stops it (so a regression fails the
latency bound instead of hanging: the call still ends by itself, and subprocesses have a
timeout). The stop comes from a timer thread or, for SIGINT, from the parent of a child process
that runs the call on its main thread (the only thread Python delivers signals to). The bound,
STOP_BOUND_S, is generous for a loaded CI machine; the measured latency is printed (run with -s).
The core checks every ~10 ms of work per thread (cpp/model/decoder.cc kCheckWork) and polls
Python's signal handlers every 20 ms (cpp/bindings/bind_model.cc kSignalPoll): expect tens of ms.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

STOP_BOUND_S = 1.0
# Long enough that, unstopped, every call below runs for many seconds.
WIDE = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=8, max_position_embeddings=4096)
LONG_PROMPT = 4000  # tokens: a prefill of several seconds on the wide model
PROBE = dict(max_new_tokens=12, do_sample=False)

# The calls, by name; each is `call(model, **extra)` and never ends on its own within seconds.
CALLS = {
    # 800 sequences decoding together until the context is full.
    "batch": lambda m, **kw: m.generate([[5 + i % 300, 6, 7] for i in range(800)], max_new_tokens=240,
                                        do_sample=True, eos_token_id=[], **kw),
    # One prompt that fills most of a 4096-token context: the prefill alone takes seconds.
    "prefill": lambda m, **kw: m.generate([(i * 37) % 380 + 4 for i in range(LONG_PROMPT)], max_new_tokens=1, **kw),
    "beam": lambda m, **kw: m.generate([[5, 6, 7]] * 200, num_beams=16, max_new_tokens=240, eos_token_id=[], **kw),
}
MODEL_OF = {"batch": "small", "prefill": "wide", "beam": "small", "stream": "wide"}


@pytest.fixture(scope="module")
def paths(checkpoint):
    return {"small": checkpoint("llama"), "wide": checkpoint("llama", **WIDE)}


@pytest.fixture(scope="module")
def models(paths, llmos):
    return {name: llmos.load(str(p), threads=1) for name, p in paths.items()}


def _stop_during(call, stop, delay: float = 0.3):
    """Runs call() here and stop() from a timer after `delay` s; returns (seconds from stop() to the
    exception, the exception). Fails if the call returns instead."""
    stopped_at = []

    def fire():
        stopped_at.append(time.perf_counter())
        stop()

    timer = threading.Timer(delay, fire)
    timer.start()
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the caller checks the class
        assert stopped_at, f"the call raised before it was stopped: {e!r}"
        return time.perf_counter() - stopped_at[0], e
    finally:
        timer.cancel()
    pytest.fail("the call ran to its end: cancel() did not stop it")


@pytest.mark.parametrize("case", list(CALLS))
def test_cancel_token_stops_a_long_call_promptly(models, llmos, case):
    model = models[MODEL_OF[case]]
    before = model.generate([11, 12, 13], **PROBE).token_ids
    token = llmos.CancelToken()
    latency, exc = _stop_during(lambda: CALLS[case](model, cancel=token), token.cancel)
    print(f"\n{case}: CancelToken.cancel() -> {type(exc).__name__} in {latency * 1e3:.1f} ms")
    assert isinstance(exc, llmos.errors.CancelledError), exc
    assert exc.field == "cancel"
    assert latency < STOP_BOUND_S, f"{case}: stopped {latency:.2f} s after cancel()"
    assert token.cancelled()
    # The model is as it was: same greedy tokens as before the cancelled call.
    assert model.generate([11, 12, 13], **PROBE).token_ids == before


def test_after_a_cancelled_prefill_the_model_matches_a_fresh_one(models, paths, llmos):
    """Cancelled mid-prefill, the model then gives bit-identical logits and the same greedy tokens
    as a model loaded afresh (a KV cache or scratch left half-written would show here)."""
    model = models["wide"]
    token = llmos.CancelToken()
    _, exc = _stop_during(lambda: CALLS["prefill"](model, cancel=token), token.cancel, delay=0.5)
    assert isinstance(exc, llmos.errors.CancelledError), exc
    fresh = llmos.load(str(paths["wide"]), threads=1)
    prompt = [(i * 11) % 380 + 4 for i in range(300)]  # over one 256-token piece: two pieces
    np.testing.assert_array_equal(model.logits(prompt), fresh.logits(prompt))
    assert model.generate(prompt, **PROBE).token_ids == fresh.generate(prompt, **PROBE).token_ids


def test_a_token_is_cancelled_with_its_parent(llmos):
    parent = llmos.CancelToken()
    child = llmos.CancelToken(parent)
    other = llmos.CancelToken(parent)
    assert not child.cancelled()
    other.cancel()
    assert other.cancelled() and not child.cancelled() and not parent.cancelled()
    parent.cancel()
    assert child.cancelled()


def test_a_cancelled_token_stops_the_next_call_at_once(models, llmos):
    token = llmos.CancelToken()
    token.cancel()
    t = time.perf_counter()
    with pytest.raises(llmos.errors.CancelledError):
        CALLS["batch"](models["small"], cancel=token)
    assert time.perf_counter() - t < STOP_BOUND_S


def test_cancel_must_be_a_token(models, llmos):
    for bad in ("yes", threading.Event(), 1):
        with pytest.raises(llmos.errors.InvalidInputError, match="cancel"):
            models["small"].generate([5, 6], max_new_tokens=2, cancel=bad)


def test_cancel_token_stops_a_stream_in_its_prefill(models, llmos):
    """The stream's worker is mid-prefill when the caller's token is cancelled: the waiting
    consumer gets CancelledError promptly, and the worker thread is gone."""
    model = models["wide"]
    token = llmos.CancelToken()
    prompt = [(i * 37) % 380 + 4 for i in range(LONG_PROMPT)]
    stream = model.stream(prompt, max_new_tokens=5, cancel=token)
    latency, exc = _stop_during(lambda: next(stream), token.cancel)
    print(f"\nstream: CancelToken.cancel() -> {type(exc).__name__} in {latency * 1e3:.1f} ms")
    assert isinstance(exc, llmos.errors.CancelledError), exc
    assert latency < STOP_BOUND_S
    assert not [t for t in threading.enumerate() if t.name == "llmos-stream"]


def test_closing_a_stream_stops_its_worker(models):
    model = models["small"]
    stream = model.stream([5, 6, 7], max_new_tokens=240, eos_token_id=[])
    next(stream)
    t = time.perf_counter()
    stream.close()
    assert time.perf_counter() - t < STOP_BOUND_S
    assert not [t for t in threading.enumerate() if t.name == "llmos-stream"]


def test_cancel_token_stops_an_onnx_model(checkpoint, llmos, tmp_path_factory):
    """The ONNX backend's decode loop (Python around onnxruntime) checks the token every step."""
    out = tmp_path_factory.mktemp("onnx")
    llmos.export_onnx(str(checkpoint("llama")), str(out))
    model = llmos.load(str(out), threads=1)
    assert model.backend.name == "onnx"
    before = model.generate([11, 12, 13], **PROBE).token_ids
    token = llmos.CancelToken()
    latency, exc = _stop_during(lambda: CALLS["batch"](model, cancel=token), token.cancel)
    print(f"\nonnx batch: CancelToken.cancel() -> {type(exc).__name__} in {latency * 1e3:.1f} ms")
    assert isinstance(exc, llmos.errors.CancelledError), exc
    assert latency < STOP_BOUND_S
    assert model.generate([11, 12, 13], **PROBE).token_ids == before


# ---- SIGINT -------------------------------------------------------------------------------------

_CHILD = r"""
import json, sys, time
import llmos
path, case = sys.argv[1], sys.argv[2]
model = llmos.load(path, threads=1)
probe = dict(max_new_tokens=12, do_sample=False)
before = model.generate([11, 12, 13], **probe).token_ids
calls = {
    "batch": lambda: model.generate([[5 + i % 300, 6, 7] for i in range(800)], max_new_tokens=240,
                                    do_sample=True, eos_token_id=[]),
    "prefill": lambda: model.generate([(i * 37) % 380 + 4 for i in range(LONG_PROMPT)], max_new_tokens=1),
    "beam": lambda: model.generate([[5, 6, 7]] * 200, num_beams=16, max_new_tokens=240, eos_token_id=[]),
    # The main thread waits in the stream's queue while the worker runs the prefill.
    "stream": lambda: next(model.stream([(i * 37) % 380 + 4 for i in range(LONG_PROMPT)], max_new_tokens=5)),
}
print("ready", flush=True)
t = time.perf_counter()
try:
    calls[case]()
    print(json.dumps({"finished": time.perf_counter() - t}), flush=True)
except KeyboardInterrupt:
    print(json.dumps({"interrupted": time.perf_counter() - t}), flush=True)
    import threading
    workers = [th.name for th in threading.enumerate() if th.name == "llmos-stream"]
    print(json.dumps({"same_after": model.generate([11, 12, 13], **probe).token_ids == before,
                      "workers": workers}), flush=True)
""".replace("LONG_PROMPT", str(LONG_PROMPT))


def _read_line(proc, timeout: float) -> tuple[str, float]:
    """The child's next stdout line and when it arrived; fails after `timeout` s."""
    box: list = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        proc.kill()
        pytest.fail(f"no output from the child within {timeout} s: {proc.stderr.read()[-2000:]}")
    return box[0].strip(), time.perf_counter()


@pytest.mark.parametrize("case", [*CALLS, "stream"])
def test_sigint_interrupts_a_long_call_promptly(paths, case):
    """Ctrl-C raises KeyboardInterrupt within STOP_BOUND_S even while the main thread is inside
    the C++ decode loop or prefill (or waits on a stream's worker), and the model still works."""
    with subprocess.Popen([sys.executable, "-c", _CHILD, str(paths[MODEL_OF[case]]), case],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        _interrupt(proc, case)


def _interrupt(proc, case):
    try:
        line, _ = _read_line(proc, 120)
        assert line == "ready", line
        time.sleep(0.5)  # well inside the call, which runs for many seconds
        sent = time.perf_counter()
        os.kill(proc.pid, signal.SIGINT)
        line, arrived = _read_line(proc, 60)
        report = json.loads(line)
        assert "interrupted" in report, f"{case}: the call ran to its end ({report['finished']:.1f} s)"
        latency = arrived - sent
        print(f"\n{case}: SIGINT -> KeyboardInterrupt in {latency * 1e3:.1f} ms")
        assert latency < STOP_BOUND_S, f"{case}: KeyboardInterrupt came {latency:.2f} s after SIGINT"
        after = json.loads(_read_line(proc, 60)[0])
        assert after == {"same_after": True, "workers": []}, after
        assert proc.wait(timeout=60) == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- the sliced forward -------------------------------------------------------------------------

@pytest.mark.parametrize("quant", [None, "int8"])
def test_sliced_forward_keeps_every_result(paths, llmos, quant):
    """On the wide model a 256-token piece's matmuls and attention exceed kCheckWork, so they run in
    slices (of output rows for float weights, of tokens for quantized ones). A position's logits
    must not depend on how its call was cut: a prefix's logits equal the full call's rows,
    bit for bit (the calls are cut differently: 300 tokens in two pieces of 150, 200 in one)."""
    model = llmos.load(str(paths["wide"]), threads=1, quant=quant)
    prompt = [(i * 13) % 380 + 4 for i in range(300)]
    full = model.logits(prompt)
    np.testing.assert_array_equal(model.logits(prompt[:200]), full[:200])


def test_sliced_forward_matches_transformers(paths, llmos, reference_model):
    """The sliced float forward against transformers: max |llmos - transformers| <= 1e-3 (the
    parity bound of test_reference_agreement) over 300 positions of the wide model."""
    import torch

    model = llmos.load(str(paths["wide"]), threads=1)
    prompt = [(i * 13) % 380 + 4 for i in range(300)]
    with torch.no_grad():
        ref = reference_model(paths["wide"])(torch.tensor([prompt])).logits[0].numpy()
    diff = float(np.abs(model.logits(prompt) - ref).max())
    print(f"\nmax |llmos - transformers| = {diff:.2e}")
    assert diff <= 1e-3
