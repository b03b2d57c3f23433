"""A hostile config.json is refused before anything is allocated, with a ConfigError naming the field.

Every case from the hostile-input probe runs against a tiny checkpoint of every supported
family, in a child process limited to a few GB of address space and a timeout: a regression
(an allocation sized by the config, a hang) then fails the test instead of taking the host
down. Metric: the exception class and its ``field`` per (case, family); "ok" where the field
does not apply to the family (GPT-2 has no RoPE).

Also here: side files that are not regular files (a FIFO) or are too large, and a direct
``_core`` caller that claims huge dimensions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from child_env import child_env

FAMILY_KINDS = {"gpt2": "gpt2", "llama": "llama", "mistral": "mistral_swa", "qwen2": "qwen2", "qwen3": "qwen3",
                "phi3": "phi3", "gemma": "gemma", "gemma2": "gemma2"}
GPT2_KEYS = {"num_hidden_layers": "n_layer", "hidden_size": "n_embd", "intermediate_size": "n_inner"}
ADDRESS_SPACE = 4 << 30
TIMEOUT = 240

LEGACY = "legacy"  # marker: rewrite the config to the transformers-4 layout (rope_theta + rope_scaling) first
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
            "original_max_position_embeddings": 64}

# name -> (config edits, field named by the ConfigError; "{rope}" = where the rope settings live)
CASES = {
    "layers_1e9": ({"num_hidden_layers": 10**9}, "num_hidden_layers"),
    "hidden_1e9": ({"hidden_size": 10**9}, "hidden_size"),
    "vocab_1e9": ({"vocab_size": 10**9}, "vocab_size"),
    "intermediate_1e9": ({"intermediate_size": 10**9}, "intermediate_size"),
    # Under the static bounds: the tensors in the checkpoint refute them.
    "hidden_1e6": ({"hidden_size": 10**6}, "hidden_size"),
    "vocab_1e6": ({"vocab_size": 10**6}, "vocab_size"),
    "layers_too_many": ({"num_hidden_layers": 4000}, "num_hidden_layers"),
    "layers_too_few": ({"num_hidden_layers": 1}, "num_hidden_layers"),
    "model_type_list": ({"model_type": ["llama"]}, "model_type"),
    "rope_scaling_list": ({LEGACY: True, "rope_scaling": ["linear", 2.0]}, "rope_scaling"),
    "beta_fast_str": ({LEGACY: True, "rope_scaling": {**YARN, "beta_fast": "x"}}, "rope_scaling.beta_fast"),
    "rope_theta_0": ({LEGACY: True, "rope_theta": 0}, "rope_theta"),
    "rope_theta_negative": ({LEGACY: True, "rope_theta": -10000}, "rope_theta"),
    "yarn_factor_0": ({LEGACY: True, "rope_scaling": {**YARN, "factor": 0}}, "rope_scaling.factor"),
    "longrope_factor_0": ({LEGACY: True, "rope_scaling": {**LONGROPE, "factor": 0}}, "rope_scaling.factor"),
    "yarn_original_0": ({LEGACY: True, "rope_scaling": {**YARN, "original_max_position_embeddings": 0}},
                        "rope_scaling.original_max_position_embeddings"),
    "longrope_original_0": ({LEGACY: True, "rope_scaling": {**LONGROPE, "original_max_position_embeddings": 0}},
                            "rope_scaling.original_max_position_embeddings"),
}

# Runs in the child: loads every (family, config) given and reports what each gave.
CHILD = r"""
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import llmos
out = {}
for family, folder in json.loads(sys.argv[2]).items():
    try:
        m = llmos.load(folder, threads=1)
        g = m.generate("hello world", max_new_tokens=2)
        out[family] = ["ok", None, g.text]
    except llmos.errors.LlmosError as e:
        out[family] = [type(e).__name__, e.field, str(e)]
    except BaseException as e:
        out[family] = [type(e).__name__, None, str(e)[:500]]
print(json.dumps(out))
"""


def run_child(code: str, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    env = child_env()
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def _edit(cfg: dict, edits: dict, family: str) -> dict:
    cfg = json.loads(json.dumps(cfg))
    edits = dict(edits)
    if edits.pop(LEGACY, False) and "rope_parameters" in cfg:
        rp = cfg.pop("rope_parameters")
        cfg["rope_theta"] = rp.get("rope_theta", 10000.0)
        cfg["rope_scaling"] = None
    for k, v in edits.items():
        cfg[GPT2_KEYS.get(k, k) if family == "gpt2" else k] = v
    return cfg


def _folder(src: Path, dst: Path, cfg: dict) -> str:
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            os.symlink(f, dst / f.name)
    (dst / "config.json").write_text(json.dumps(cfg))
    return str(dst)


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_config_is_refused_naming_the_field(case, checkpoint, tmp_path):
    edits, field = CASES[case]
    folders, configs = {}, {}
    for family, kind in FAMILY_KINDS.items():
        src = checkpoint(kind)
        configs[family] = cfg = _edit(json.loads((src / "config.json").read_text()), edits, family)
        folders[family] = _folder(src, tmp_path / family, cfg)
    r = run_child(CHILD, str(ADDRESS_SPACE), json.dumps(folders))
    assert r.returncode == 0, f"the child died ({r.returncode}): {r.stderr[-3000:]}"
    results = json.loads(r.stdout.strip().splitlines()[-1])
    rope_case = edits.get(LEGACY, False)
    for family, (cls, got_field, msg) in results.items():
        if family == "gpt2" and rope_case:
            assert cls == "ok", (family, cls, msg)  # GPT-2 has learned positions: no rope fields are read
            continue
        want = {GPT2_KEYS.get(field, field) if family == "gpt2" else field}
        if field == "num_hidden_layers" and "layer_types" in configs[family]:
            want.add("layer_types")  # the config contradicts itself before the tensors are consulted
        assert cls == "ConfigError" and got_field in want, (family, cls, got_field, msg)
        assert "config.json" in msg, msg


def test_fifo_config_is_refused_not_waited_on(checkpoint, tmp_path):
    """A config.json (or generation_config.json, tokenizer_config.json) that is a FIFO has no
    writer: opening it to read would wait forever."""
    src = checkpoint("llama")
    folders = {}
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        d = tmp_path / name.split(".")[0]
        d.mkdir()
        for f in src.iterdir():
            if f.name != name:
                os.symlink(f, d / f.name)
        os.mkfifo(d / name)
        folders[name] = str(d)
    r = run_child(CHILD, str(ADDRESS_SPACE), json.dumps(folders), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    for name, (cls, _, msg) in json.loads(r.stdout.strip().splitlines()[-1]).items():
        assert cls == "ModelFileError" and name in msg and "not a regular file" in msg, (name, cls, msg)


def test_oversized_side_files_are_refused(llmos, tmp_checkpoint):
    from llmos import limits

    path = tmp_checkpoint("llama")
    cfg = json.loads((path / "config.json").read_text())
    before = limits.current()
    try:
        (path / "config.json").write_text(json.dumps(cfg))
        limits.configure(max_config_bytes=(path / "config.json").stat().st_size)
        llmos.load(str(path), threads=1)  # exactly at the limit: fits
        cfg["padding"] = "x"
        (path / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(llmos.errors.ConfigError, match="max_config_bytes") as e:
            llmos.load(str(path), threads=1)
        assert e.value.file.endswith("config.json")

        limits.configure(max_config_bytes=1 << 20, max_tokenizer_config_bytes=100)
        with pytest.raises(llmos.errors.TokenizerError, match="max_tokenizer_config_bytes") as e:
            llmos.load(str(path), threads=1)
        assert e.value.file.endswith("tokenizer_config.json")
    finally:
        limits.configure(**{f: getattr(before, f) for f in ("max_config_bytes", "max_tokenizer_config_bytes")})


def test_extra_or_odd_tensor_is_the_tensors_fault(llmos, tmp_checkpoint):
    """Where the other tensors confirm the config, the one that disagrees is named (TensorError)."""
    from safetensors.numpy import load_file, save_file

    path = tmp_checkpoint("llama")
    t = load_file(str(path / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    t[name] = t[name][:-1]
    save_file(t, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(llmos.errors.TensorError) as e:
        llmos.load(str(path), threads=1)
    assert e.value.field == name


# A direct caller of the core that claims huge dimensions: refused (or met with a tensor of the
# real shape) before an allocation of that size, under a 2 GB address-space limit.
CORE_CHILD = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
import llmos
from llmos import _core
from llmos.io.checkpoint import float_source, tensor_locations
path = sys.argv[1]
m = llmos.load(path, threads=1)
family, locations = m.backend.family, tensor_locations(path)
sources = [float_source(locations, role, layer, parts, path) for role, layer, parts in family.tensors(m.config)]
out = {}
for field, value in json.loads(sys.argv[2]):
    arch = m.config.to_core(_core)
    setattr(arch, field, value)
    try:
        _core.Model(arch, iter(sources), "float32", 1)
        out[f"{field}={value}"] = ["ok", ""]
    except llmos.errors.LlmosError as e:
        out[f"{field}={value}"] = [type(e).__name__, str(e)]
    except BaseException as e:
        out[f"{field}={value}"] = [type(e).__name__, str(e)[:300]]
print(json.dumps(out))
"""


def test_core_refuses_huge_dimensions_before_allocating(checkpoint):
    cases = [("num_layers", 10**9), ("hidden_size", 10**9), ("vocab_size", 10**9), ("intermediate_size", 10**9),
             ("hidden_size", 2**31 - 64), ("vocab_size", 2**31 - 64), ("head_dim", 2**40), ("num_heads", 2**40),
             ("num_layers", 50000)]
    r = run_child(CORE_CHILD, str(checkpoint("llama")), json.dumps(cases), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for key, (cls, msg) in results.items():
        # Each value is either out of the core's bounds (InvalidInputError naming the field) or
        # refuted by the first tensor it sizes (TensorError), never an allocation of its size.
        assert cls in ("InvalidInputError", "TensorError"), (key, cls, msg)
