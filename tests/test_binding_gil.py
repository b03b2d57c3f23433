"""The bindings release the GIL while the core computes: another Python thread keeps running
during a model load, a forward pass, a decode loop, a quantization and a sampler step.

Method: a second thread records perf_counter() about once a millisecond while the call runs
in this thread. A call that held the GIL would leave no record in the middle half of its
duration (the recorder cannot run Python at all then); one that releases it leaves many.
The switch interval is lowered so the recorder gets the GIL as soon as it is free.
"""

import sys
import threading
import time

import numpy as np
import pytest

from llmos import _core
from llmos.io.checkpoint import float_source, tensor_locations
from llmos.io.config import ConfigReader, read_json
from llmos.arch.families import family_for

MIN_CALL_S = 0.05  # the middle half (>= 12 ms) then dwarfs a 0.1 ms switch interval


def ticks_in_middle(call) -> tuple[float, int]:
    """(duration of call(), records another thread made in the middle half of it)."""
    ticks: list[float] = []
    stop = threading.Event()

    def record():
        last = 0.0
        while not stop.is_set():
            t = time.perf_counter()
            if t - last >= 1e-3:
                ticks.append(t)
                last = t

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    recorder = threading.Thread(target=record)
    recorder.start()
    try:
        while not ticks:  # the recorder is running
            time.sleep(1e-3)
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
    finally:
        stop.set()
        recorder.join()
        sys.setswitchinterval(interval)
    q = (t1 - t0) / 4
    return t1 - t0, sum(t0 + q <= t <= t1 - q for t in ticks)


def assert_releases_gil(make, n: int, limit: int):
    """make(n) builds a call; n doubles (up to limit) until the call lasts twice MIN_CALL_S, so the
    check means the same on a slow machine and a fast one, and the timed run, which may be a
    little faster than the sizing one, still lasts MIN_CALL_S."""
    while True:
        call = make(n)
        t0 = time.perf_counter()
        call()
        if time.perf_counter() - t0 >= 2 * MIN_CALL_S or 2 * n > limit:
            break
        n *= 2
    duration, middle = ticks_in_middle(call)
    assert duration >= MIN_CALL_S, f"the call took {duration * 1e3:.1f} ms: too short to tell"
    assert middle > 0, f"no other Python thread ran during {duration * 1e3:.0f} ms of the call"


def test_a_call_that_holds_the_gil_is_caught():
    """The method itself: sorted() of a list of floats runs in C and keeps the GIL throughout."""
    n = 100_000
    while True:
        data = np.random.default_rng(0).random(n).tolist()
        duration, middle = ticks_in_middle(lambda: sorted(data))
        if duration >= MIN_CALL_S or n >= 1 << 23:
            break
        n *= 2
    assert duration >= MIN_CALL_S and middle == 0


@pytest.fixture(scope="module")
def model_parts(checkpoint):
    """(core Architecture, sources) of a small checkpoint with a long context."""
    path = checkpoint("llama", hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                      max_position_embeddings=4096)
    cfg = ConfigReader(read_json(str(path / "config.json")), str(path / "config.json"))
    family = family_for(cfg)
    arch = family.architecture(cfg)
    locations = tensor_locations(str(path))
    sources = [float_source(locations, role, layer, parts, str(path)) for role, layer, parts in family.tensors(arch)]
    return arch, sources


@pytest.fixture(scope="module")
def core_model(model_parts):
    arch, sources = model_parts
    return _core.Model(arch.to_core(_core), sources, "float32", 1)


def test_model_load_releases_the_gil(model_parts):
    arch, sources = model_parts

    def load(n_layers):  # the checkpoint's layers repeated, each read from its file again
        core = arch.to_core(_core)
        core.num_layers, core.sliding_window = n_layers, [0] * n_layers
        stacked = [s for s in sources if s[1] < 0]
        stacked += [(role, i, parts, q, g) for role, layer, parts, q, g in sources if layer >= 0
                    for i in range(layer, n_layers, arch.num_layers)]
        q8 = _core.QuantType.Q8
        return lambda: _core.Model(core, stacked, "float32", 1, q8, 32, q8)

    assert_releases_gil(load, 4, 256)


def test_logits_release_the_gil(core_model):
    assert_releases_gil(lambda n: lambda: core_model.logits(np.arange(n) % 384), 64, 4000)


def test_generate_releases_the_gil(core_model):
    def make(n):
        o = _core.DecodeOptions()
        o.max_new_tokens = n
        return lambda: core_model.generate([[5, 6, 7]], o)

    assert_releases_gil(make, 32, 4000)


def test_quantize_dequantize_releases_the_gil():
    w = np.random.default_rng(0).standard_normal((1 << 13, 1024)).astype(np.float32)
    assert_releases_gil(lambda rows: lambda: _core.quantize_dequantize(w[:rows], _core.QuantType.Q4, 32),
                        128, 1 << 13)


def test_sampler_next_releases_the_gil():
    o = _core.DecodeOptions()
    o.do_sample, o.top_p, o.repetition_penalty = True, 0.9, 1.3

    def make(vocab):
        logits = np.random.default_rng(1).standard_normal(vocab).astype(np.float32)
        s = _core.Sampler(o, list(range(0, vocab, 7)), vocab)
        return lambda: s.next(logits)

    assert_releases_gil(make, 1 << 14, 1 << 23)
