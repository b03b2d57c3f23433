"""Fuzz targets over what strangers hand llmos: config.json contents and generation options.

Both targets assert one property: every outcome is a success or an ``llmos.errors`` exception
- never TypeError, ZeroDivisionError, MemoryError, a hang or a crash of the process.

``fuzz_config(folders, ...)``       mutates a checkpoint's config.json (wrong types, zeros,
                                    negatives, huge values, NaN, missing and extra fields,
                                    rope parameters), loads it and generates two tokens.
``fuzz_generation(folder, ...)``    calls ``Model.generate`` with hostile keyword arguments.
``run_guarded(target, ...)``        runs a target in a child process under an address-space
                                    limit and a timeout (a crash or a hang fails the caller,
                                    it does not take the host down); what tests and
                                    tools/fuzz_inputs.py call.

Hypothesis drives both; ``examples`` and ``derandomize`` make a suite run fixed and short,
``seconds`` lets tools/fuzz_inputs.py search for longer. Run as a module in the child:
``python tests/fuzz_inputs.py TARGET JSON_ARGS``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from child_env import child_env

# What the fuzz may ask of one example: far more than a tiny model needs, far less than the host has.
ADDRESS_SPACE_BYTES = 6 << 30

# Generation options whose sizes runtime/generation.py bounds with llmos.limits (max_beams,
# max_return_sequences, max_stop_*): sized modestly unless wild_sizes. The suite's run asks for
# wild sizes (the limits refuse the huge ones up front); modest sizes spend a long search on
# the other options instead.
SIZE_OPTIONS = ("num_beams", "num_return_sequences", "stop")

# Config fields worth mutating beyond those the base config has.
EXTRA_CONFIG_KEYS = [
    "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor", "head_dim", "sliding_window",
    "layer_types", "use_sliding_window", "max_window_layers", "original_max_position_embeddings",
    "tie_word_embeddings", "hidden_act", "hidden_activation", "torch_dtype", "quantization_config",
    "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "attention_bias",
    "mlp_bias", "rms_norm_eps", "layer_norm_epsilon", "n_inner", "eos_token_id", "model_type",
    "scale_attn_weights", "activation_function", "num_key_value_heads", "max_position_embeddings",
]
ROPE_KEYS = ["rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
             "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
             "attention_factor", "truncate", "short_factor", "long_factor", "partial_rotary_factor"]
ROPE_TYPES = ["default", "linear", "dynamic", "llama3", "yarn", "longrope", "ntk", 7, None]


def _strategies():
    from hypothesis import strategies as st

    huge_int = st.sampled_from([10**9, 2**31, 2**32 + 1, 2**62, 2**63, 2**64, 10**30, -(2**63) - 1])
    ints = st.one_of(st.sampled_from([0, -1, 1, 2, 3, -10000]), st.integers(-5, 70000), huge_int)
    floats = st.one_of(st.sampled_from([0.0, -0.0, -1.0, 0.5, 1.0, 1e-320, 1e-45, 1e38, 3.5e38, 1e308]),
                       st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 10))
    scalars = st.one_of(ints, floats, st.booleans(), st.none(),
                        st.sampled_from(["", "x", "llama", "silu", "gelu", "yarn", "longrope", "1e4", "NaN"]))
    values = st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(ROPE_KEYS + ["x"]), inner, max_size=4)),
        max_leaves=8)
    return st, ints, floats, scalars, values


def config_mutations():
    """A hypothesis strategy: a list of (path, value) edits, value DELETE to remove the field."""
    st, ints, floats, scalars, values = _strategies()
    rope_params = st.fixed_dictionaries(
        {"rope_type": st.sampled_from(ROPE_TYPES)},
        optional={k: st.one_of(floats, ints, scalars, st.lists(st.one_of(floats, ints), max_size=40))
                  for k in ROPE_KEYS[1:]})
    key = st.sampled_from(EXTRA_CONFIG_KEYS)
    edit = st.one_of(
        st.tuples(st.tuples(key), st.one_of(values, st.just("<DELETE>"))),
        st.tuples(st.sampled_from([("rope_parameters",), ("rope_scaling",)]), rope_params),
        st.tuples(st.tuples(st.sampled_from(["rope_parameters", "rope_scaling"]), st.sampled_from(ROPE_KEYS)),
                  st.one_of(values, floats, ints)),
        st.tuples(st.tuples(st.just("<EXISTING>")), st.one_of(values, floats, ints, st.just("<DELETE>"))),
    )
    return st.lists(edit, min_size=1, max_size=4)


def apply_mutations(cfg: dict, edits, choose_existing) -> dict:
    cfg = json.loads(json.dumps(cfg))
    for path, value in edits:
        if path == ("<EXISTING>",):
            keys = sorted(cfg)
            path = (keys[choose_existing(len(keys))],)
        parent = cfg
        for p in path[:-1]:
            if not isinstance(parent.get(p), dict):
                parent[p] = {}
            parent = parent[p]
        if value == "<DELETE>":
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = value
    return cfg


def generation_options(wild_sizes: bool = False):
    """A hypothesis strategy: keyword arguments for Model.generate."""
    st, ints, floats, scalars, values = _strategies()
    from llmos.runtime.generation import GenerationConfig

    names = [n for n in GenerationConfig.field_names() if wild_sizes or n not in SIZE_OPTIONS]
    token_lists = st.lists(st.one_of(st.integers(-2, 400), ints), max_size=4)
    value = st.one_of(values, floats, ints, token_lists, st.lists(token_lists, max_size=3),
                      st.dictionaries(st.one_of(st.integers(-2, 400), st.sampled_from(["5", "-1", "x"])),
                                      st.one_of(floats, ints), max_size=3),
                      st.tuples(ints, floats))
    opts = st.dictionaries(st.sampled_from(names + ["unknown_option", "guidance_scale"]), value, max_size=5)
    if not wild_sizes:
        sized = st.fixed_dictionaries({}, optional={
            "num_beams": st.integers(-1, 4), "num_return_sequences": st.integers(-1, 4),
            "stop": st.one_of(st.text(max_size=4), st.lists(st.text(max_size=4), max_size=3), ints)})
        opts = st.builds(lambda a, b: {**a, **b}, opts, sized)
    return opts


def _settings(examples: int | None, derandomize: bool):
    from hypothesis import HealthCheck, settings

    return settings(max_examples=examples or 100, deadline=None, derandomize=derandomize, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


def _run(body, strategies: dict, examples: int | None, seconds: float | None, derandomize: bool) -> None:
    """Runs `body` on `strategies` for `examples` examples, or in batches until `seconds`
    pass (each batch a fresh random search)."""
    from hypothesis import given

    if seconds is None:
        _settings(examples, derandomize)(given(**strategies)(body))()
        return
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _settings(examples or 200, False)(given(**strategies)(body))()


# Outcome -> count over the run (printed by the child: shows what the search reached).
OUTCOMES: dict[str, int] = {}


def _expect_llmos_error(fn, what: str):
    from llmos.errors import LlmosError

    if os.environ.get("LLMOS_FUZZ_TRACE"):  # a crash kills the child: say first what it was doing
        print(f"trying {what}", file=sys.stderr, flush=True)
    try:
        fn()
        OUTCOMES["ok"] = OUTCOMES.get("ok", 0) + 1
    except LlmosError as e:
        key = f"{type(e).__name__}:{e.field}"
        OUTCOMES[key] = OUTCOMES.get(key, 0) + 1
        if type(e).__name__ == os.environ.get("LLMOS_FUZZ_SHOW"):  # to look at one class of outcome
            print(f"{key} from {what}: {e}", file=sys.stderr, flush=True)
    except BaseException as e:  # noqa: BLE001 - the property under test
        if isinstance(e, KeyboardInterrupt):
            raise
        raise AssertionError(f"{what} raised {type(e).__name__}: {e}") from e


def fuzz_config(folders: list[str], examples: int | None = 50, seconds: float | None = None,
                derandomize: bool = True) -> int:
    """Loads each base checkpoint with mutated config.json; returns the number of examples run."""
    from hypothesis import strategies as st

    import llmos

    bases = {f: json.loads((Path(f) / "config.json").read_text()) for f in folders}
    work = Path(tempfile.mkdtemp(prefix="llmos-fuzz-config-"))
    count = [0]

    def target(folder, edits, data):
        count[0] += 1
        cfg = apply_mutations(bases[folder], edits,
                              lambda n: data.draw(st.integers(0, n - 1), label="existing key"))
        d = work / f"ex{count[0]}"
        d.mkdir()
        for f in Path(folder).iterdir():
            if f.name != "config.json":
                os.symlink(f, d / f.name)
        (d / "config.json").write_text(json.dumps(cfg))

        def load_and_generate():
            m = llmos.load(str(d), threads=1)
            m.generate("hello world", max_new_tokens=2)

        try:
            _expect_llmos_error(load_and_generate, f"config {json.dumps(cfg)[:2000]}")
        finally:
            shutil.rmtree(d, ignore_errors=True)

    try:
        _run(target, dict(folder=st.sampled_from(sorted(folders)), edits=config_mutations(), data=st.data()),
             examples, seconds, derandomize)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return count[0]


def fuzz_generation(folder: str, examples: int | None = 50, seconds: float | None = None,
                    derandomize: bool = True, wild_sizes: bool = False) -> int:
    """Model.generate with hostile options on one loaded model; returns the examples run."""
    import llmos

    model = llmos.load(folder, threads=1)
    count = [0]

    def target(opts):
        count[0] += 1
        opts = dict(opts)
        # A bounded number of new tokens unless the fuzz chose one: the tiny model's whole
        # context (256) at most, which is still quick.
        opts.setdefault("max_new_tokens", 3)
        _expect_llmos_error(lambda: model.generate("hello world", **opts), f"generate(**{opts!r})")

    _run(target, dict(opts=generation_options(wild_sizes)), examples, seconds, derandomize)
    return count[0]


TARGETS = {"config": fuzz_config, "generation": fuzz_generation}


def run_guarded(target: str, kwargs: dict, timeout: float, address_space: int = ADDRESS_SPACE_BYTES
                ) -> subprocess.CompletedProcess:
    """Runs TARGETS[target](**kwargs) in a child process limited to `address_space` bytes and
    killed after `timeout` seconds. Returns the completed process (returncode 0: the property
    held; its stdout ends with the number of examples run)."""
    env = child_env()
    env.setdefault("LLMOS_TEST_THREADS", "1")
    return subprocess.run([sys.executable, __file__, target, json.dumps(kwargs), str(address_space)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _child(target: str, kwargs_json: str, address_space: str) -> None:
    import faulthandler
    import resource

    faulthandler.enable()
    limit = int(address_space)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    n = TARGETS[target](**json.loads(kwargs_json))
    print("outcomes:", json.dumps(dict(sorted(OUTCOMES.items(), key=lambda kv: -kv[1]))))
    print(f"examples: {n}")


if __name__ == "__main__":
    _child(*sys.argv[1:4])
