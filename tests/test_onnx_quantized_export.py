"""export_onnx of a checkpoint llmos quantized (llmos.quantize / `llmos quantize`) or of a model
quantized at load: the README's two commands work, and the graph computes with llmos's own blocks.

Bounds (max |logits difference| against llmos running the quantized checkpoint in float32, on the
blocks' exact values: the core does so where its quantized prefill dequantizes, the avx2 level;
the levels above round the activations (int8 GEMM, bf16 tiles), so the reference runs in a child
process at avx2 whatever this CPU's best is, and the bounds mean the same on every x86 CPU):
  fp32              1e-4 absolute: the blocks dequantized exactly as the core does.
  int4, level 0     1e-4 absolute: MatMulNBits holds each llmos block as it is (4-bit layers,
                    8-bit LM head, float zero points for int4-asym) and computes in float32,
                    as the core does; nothing is quantized twice.
  int4, level 4     0.15 x max|logits|, the bound test_onnx_export.py gives the default
                    accuracy_level (MatMulNBits quantizes the activations to int8 inside the
                    kernel; the weights are still exactly llmos's).
An int8 checkpoint exported as int4 has its layers quantized to 4 bits, so it is held to the
core running the export's own dequantized weights (convert_onnx) instead, like any int4 export.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from child_env import child_env
from isa_levels import RUNNABLE
from test_onnx_export import FP32_BOUND, INT4_REL_BOUND, PROMPT

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_commands(verb: str) -> list[str]:
    """The `llmos <verb> ...` lines of the README's code blocks, comments removed."""
    lines = [line.split("#", 1)[0].strip() for line in README.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if re.match(rf"llmos {verb}\b", line)]


# The kernel level whose quantized prefill computes in float32 on the dequantized blocks
# (cpp/kernels/quantized_matmul.cc).
FLOAT_LEVEL = "avx2"


def float_logits(path: str, quant: str | None = None) -> np.ndarray:
    """Logits of llmos.load(path, quant=quant) over PROMPT, computed at FLOAT_LEVEL in a child."""
    if FLOAT_LEVEL not in RUNNABLE:
        pytest.skip(f"the float32 reference runs at kernel level {FLOAT_LEVEL}, which this CPU cannot run")
    code = ("import sys, numpy as np, llmos\n"
            "m = llmos.load(sys.argv[1], threads=1, quant=sys.argv[2] or None)\n"
            f"np.save(sys.argv[3], m.logits({list(PROMPT)!r}))\n")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.npy"
        run = subprocess.run([sys.executable, "-c", code, path, quant or "", str(out)], capture_output=True,
                             text=True, timeout=300, env=child_env(LLMOS_CPU_ISA=FLOAT_LEVEL))
        assert run.returncode == 0, run.stderr
        return np.load(out)


def _nbits(folder) -> dict[str, dict]:
    m = onnx.load(os.path.join(folder, "model.onnx"))
    out = {}
    for n in m.graph.node:
        if n.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            out[n.input[1]] = {"bits": attrs["bits"], "block_size": attrs["block_size"],
                               "zero_points": len(n.input) > 3 and bool(n.input[3])}
    return out


def test_readme_quantize_then_export_onnx(checkpoint, llmos, tmp_path, monkeypatch):
    quantize = _readme_commands("quantize")
    export = _readme_commands("export-onnx")
    assert quantize == ["llmos quantize qwen --to int4 --group 32"], quantize
    assert export == ["llmos export-onnx qwen:int4 ./qwen-onnx --precision int4"], export
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))
    # The README pulls Qwen2.5; a tiny random Qwen2 (tied head, qkv bias, GQA) stands in.
    steps = [["import", str(checkpoint("qwen2")), "--name", "qwen"]] + \
        [shlex.split(c)[1:] for c in quantize + export]
    for argv in steps:
        out = subprocess.run([sys.executable, "-m", "llmos", *argv], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, f"llmos {' '.join(argv)}:\n{out.stderr}"
    folder = tmp_path / "qwen-onnx"
    ref = llmos.load("qwen:int4", threads=1).logits(PROMPT)
    got = llmos.load(str(folder), threads=1).logits(PROMPT)
    assert np.abs(got - ref).max() <= INT4_REL_BOUND * np.abs(ref).max()
    layers = {k: v for k, v in _nbits(folder).items() if k.startswith("layers.")}
    assert layers and all(v == {"bits": 4, "block_size": 32, "zero_points": False} for v in layers.values())
    assert _nbits(folder)["lm_head.q8"]["bits"] == 8  # llmos's int8 head of its int4 models
    with open(folder / "llmos_onnx.json") as f:
        meta = json.load(f)
    assert meta["source_quantization"] == {"Q4": 4 * 2, "Q8": 1}  # qkv, o, up, down x 2 layers; tied head


@pytest.fixture(scope="module")
def quantized(checkpoint, llmos, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")

    def get(quant: str) -> str:
        out = root / quant
        if not out.exists():
            llmos.quantize(str(checkpoint("llama")), str(out), quant)
        return str(out)

    return get


QUANTS = ["int4", "int4-g64", "int4-asym", "int4-h6", "int8"]


@pytest.mark.parametrize("quant", QUANTS)
def test_fp32_export_dequantizes_exactly(quant, quantized, llmos, tmp_path):
    src = quantized(quant)
    llmos.export_onnx(src, str(tmp_path / "out"))
    ref = float_logits(src)
    assert np.abs(llmos.load(str(tmp_path / "out"), threads=1).logits(PROMPT) - ref).max() <= FP32_BOUND


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_int4_export_computes_with_llmos_blocks(quant, accuracy_level, quantized, llmos, load_llmos, tmp_path):
    src = quantized(quant)
    folder = str(tmp_path / "out")
    llmos.export_onnx(src, folder, precision="int4", accuracy_level=accuracy_level)
    nbits = _nbits(folder)
    group = 64 if quant == "int4-g64" else 32
    assert all(v["block_size"] == group for k, v in nbits.items() if k.startswith("layers."))
    assert nbits["lm_head.q8"]["bits"] == 8  # int8 or int6 head, kept at 8 bits
    assert all(v["zero_points"] == (quant == "int4-asym") for k, v in nbits.items() if k.startswith("layers."))
    if quant == "int8":
        ref = load_llmos(llmos.convert_onnx(folder, str(tmp_path / "dequantized"), verify=False)).logits(PROMPT)
    elif accuracy_level == 0:
        ref = float_logits(src)
    else:
        ref = llmos.load(src, threads=1).logits(PROMPT)
    got = llmos.load(folder, threads=1).logits(PROMPT)
    bound = FP32_BOUND if accuracy_level == 0 else INT4_REL_BOUND * np.abs(ref).max()
    assert np.abs(got - ref).max() <= bound


def test_other_block_size_quantizes_again(quantized, llmos, load_llmos, tmp_path):
    """--block-size unlike the checkpoint's group: the layers are quantized again at that size."""
    folder = str(tmp_path / "out")
    llmos.export_onnx(quantized("int4"), folder, precision="int4", block_size=64, accuracy_level=0)
    assert {v["block_size"] for k, v in _nbits(folder).items() if k.startswith("layers.")} == {64}
    ref = load_llmos(llmos.convert_onnx(folder, str(tmp_path / "dequantized"), verify=False)).logits(PROMPT)
    assert np.abs(llmos.load(folder, threads=1).logits(PROMPT) - ref).max() <= FP32_BOUND


def test_malformed_blocks_name_the_tensor(quantized, llmos, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    src = Path(quantized("int4"))
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (bad / f.name).write_bytes(f.read_bytes())
    with safe_open(str(src / "model.safetensors"), "np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["llmos.down.weight.1.scale"] = tensors["llmos.down.weight.1.scale"][:, :1].copy()
    save_file(tensors, str(bad / "model.safetensors"), metadata=meta)
    with pytest.raises(llmos.errors.TensorError, match=r"model\.safetensors: tensor 'llmos\.down\.weight\.1\.scale'"):
        llmos.export_onnx(str(bad), str(tmp_path / "out"), precision="int4")


@pytest.mark.parametrize("quant", ["int4", "int4-asym", "int8"])
def test_model_quantized_at_load_exports_its_blocks(quant, checkpoint, llmos, load_llmos, tmp_path):
    """llmos.load(..., quant=...) then export_onnx(model): the graph holds the model's blocks."""
    model = llmos.load(str(checkpoint("llama")), threads=1, quant=quant)
    folder = str(tmp_path / "out")
    llmos.export_onnx(model, folder, precision="int4", accuracy_level=0)
    if quant == "int8":  # layers quantized to 4 bits: held to the export's own weights
        ref = load_llmos(llmos.convert_onnx(folder, str(tmp_path / "dequantized"), verify=False)).logits(PROMPT)
    else:
        ref = float_logits(str(checkpoint("llama")), quant)
    assert np.abs(llmos.load(folder, threads=1).logits(PROMPT) - ref).max() <= FP32_BOUND
    assert _nbits(folder)["lm_head.q8"]["bits"] == 8
