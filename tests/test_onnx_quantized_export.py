"""export_onnx of a checkpoint llmos quantized (llmos.quantize / `llmos quantize`) or of a model
quantized at load: the README's two commands work, and the graph computes with llmos's own blocks.

The exported weights are the core's blocks, dequantized exactly: test_blocks_dequantize_as_the_core_does
holds the export's dequantization to the core's, bit for bit, for every format and group.

Bounds (max |logits difference|):
  fp32, int4 level 0   1e-4 absolute against the core computing in float32 on the export's own
                       weights (convert_onnx): MatMulNBits holds each llmos block as it is (4-bit
                       layers, 8-bit LM head, float zero points for int4-asym) and, at level 0,
                       computes in float32; nothing is quantized twice. The core running the
                       quantized checkpoint itself is not the reference here: which of its kernels
                       prefill (float GEMM on dequantized rows, int8 GEMM, bf16 tiles) depends on
                       the CPU, and only the first computes in float32.
  int4, level 4        0.15 x max|logits|, the bound test_onnx_export.py gives the default
                       accuracy_level (MatMulNBits quantizes the activations to int8 inside the
                       kernel; the weights are still exactly llmos's).
Every export is also held to llmos running the quantized checkpoint at that 0.15 x max|logits|.
An int8 checkpoint exported as int4 has its layers quantized to 4 bits, so its weights are the
export's own, like any int4 export.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from llmos import _core
from llmos.onnx.blocks import make_blocks
from test_onnx_export import FP32_BOUND, INT4_REL_BOUND, PROMPT

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_commands(verb: str) -> list[str]:
    """The `llmos <verb> ...` lines of the README's code blocks, comments removed."""
    lines = [line.split("#", 1)[0].strip() for line in README.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if re.match(rf"llmos {verb}\b", line)]


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
def test_fp32_export_dequantizes_exactly(quant, quantized, llmos, load_llmos, tmp_path):
    src = quantized(quant)
    folder = str(tmp_path / "out")
    llmos.export_onnx(src, folder)
    got = llmos.load(folder, threads=1).logits(PROMPT)
    assert np.abs(got - own_weights_logits(llmos, load_llmos, folder, tmp_path)).max() <= FP32_BOUND
    assert_near_quantized(got, llmos.load(src, threads=1))


def own_weights_logits(llmos, load_llmos, folder: str, tmp_path) -> np.ndarray:
    """The core in float32 on the export's own weights (read back by convert_onnx)."""
    return load_llmos(llmos.convert_onnx(folder, str(tmp_path / "dequantized"), verify=False)).logits(PROMPT)


def assert_near_quantized(got: np.ndarray, quantized_model) -> None:
    """The export against llmos running the quantized model, on whatever kernels this CPU has."""
    ref = quantized_model.logits(PROMPT)
    assert np.abs(got - ref).max() <= INT4_REL_BOUND * np.abs(ref).max()


@pytest.mark.parametrize("qtype,group", [(q, g) for q in ("Q8", "Q4", "Q4Asym", "Q6") for g in (32, 64, 128)])
def test_blocks_dequantize_as_the_core_does(qtype, group):
    qt = getattr(_core.QuantType, qtype)
    w = np.random.default_rng(group).standard_normal((24, 256)).astype(np.float32)
    codes, scale, mn = _core.quantize_blocks(w, qt, group, 1)
    blocks = make_blocks(qt, group, codes, scale.view(np.float16), None if mn is None else mn.view(np.float16),
                         "test", "w")
    np.testing.assert_array_equal(blocks.dequantize(), _core.quantize_dequantize(w, qt, group))


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
    got = llmos.load(folder, threads=1).logits(PROMPT)
    if accuracy_level == 0:
        assert np.abs(got - own_weights_logits(llmos, load_llmos, folder, tmp_path)).max() <= FP32_BOUND
    if quant != "int8":  # int8 layers went to 4 bits: not the checkpoint's blocks any more
        assert_near_quantized(got, llmos.load(src, threads=1))


@pytest.mark.parametrize("kind", ["gemma3_text", "smollm3", "olmo2", "granite"])
@pytest.mark.parametrize("quant,precision", [("int4", "int4"), ("int8", "fp32")])
def test_newer_dense_families_export_their_blocks(kind, quant, precision, checkpoint, llmos, load_llmos, tmp_path):
    """An llmos-quantized checkpoint of each newer dense family: int4 keeps its blocks (level 0,
    float32 compute), fp32 dequantizes an int8 one; both exact on the export's own weights."""
    src = str(tmp_path / "q")
    llmos.quantize(str(checkpoint(kind)), src, quant)
    folder = str(tmp_path / "out")
    llmos.export_onnx(src, folder, precision=precision, accuracy_level=0)
    got = llmos.load(folder, threads=1).logits(PROMPT)
    assert np.abs(got - own_weights_logits(llmos, load_llmos, folder, tmp_path)).max() <= FP32_BOUND
    assert_near_quantized(got, llmos.load(src, threads=1))
    if precision == "int4":
        assert {v["bits"] for k, v in _nbits(folder).items() if k.startswith("layers.")} == {4}


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
    got = llmos.load(folder, threads=1).logits(PROMPT)
    assert np.abs(got - own_weights_logits(llmos, load_llmos, folder, tmp_path)).max() <= FP32_BOUND
    if quant != "int8":  # int8 layers went to 4 bits: not the model's blocks any more
        assert_near_quantized(got, model)
    assert _nbits(folder)["lm_head.q8"]["bits"] == 8
