"""export_onnx of head sizes onnxruntime's GroupQueryAttention refuses: every precision writes a
graph that runs and matches the core.

onnxruntime (1.32, CPU) refuses a GroupQueryAttention head size that is not a multiple of 8,
and with rotary one that is not a multiple of 16, only when the graph runs; such layers must
use the standard-op attention. Bounds as in test_onnx_export.py: fp32 1e-4 absolute, fp16
2e-2 x max|logits|, int4 against the core running the export's dequantized weights
(convert_onnx): 1e-4 at accuracy_level 0 (float32 compute), 0.15 x max|logits| at 4.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from test_onnx_export import FP16_REL_BOUND, FP32_BOUND, INT4_REL_BOUND, PROMPT, _runner

# (kind, overrides, head size): rope with head sizes 8 and 24 (multiples of 8, not of 16) and
# GPT-2's learned positions (no rope) with head size 4 (not even a multiple of 8).
SHAPES = {"rope_hd8": ("llama_gqa", {"head_dim": 8}, 8),
          "rope_hd24": ("llama_gqa", {"head_dim": 24}, 24),
          "norope_hd4": ("gpt2", {"n_head": 16}, 4)}


def _run(folder, core, dtype=np.float32):
    run = _runner(folder, core, dtype)
    return np.concatenate([run(PROMPT[:30])] + [run([t]) for t in PROMPT[30:]])


@pytest.fixture(scope="module")
def export_shape(checkpoint, llmos, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_head_sizes")

    def get(shape: str, precision: str, **kw):
        kind, overrides, head = SHAPES[shape]
        ckpt = checkpoint(kind, **overrides)
        out = root / f"{shape}-{precision}-{'-'.join(f'{k}{v}' for k, v in kw.items())}"
        if not out.exists():
            llmos.export_onnx(str(ckpt), str(out), precision=precision, **kw)
        return ckpt, str(out), head

    return get


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_float_exports_run_and_match_the_core(shape, precision, export_shape, load_llmos):
    ckpt, folder, head = export_shape(shape, precision)
    core = load_llmos(ckpt)
    assert core.config.head_dim == head
    ref = core.logits(PROMPT)
    got = _run(folder, core, np.float16 if precision == "fp16" else np.float32)
    bound = FP32_BOUND if precision == "fp32" else FP16_REL_BOUND * np.abs(ref).max()
    assert np.abs(got - ref).max() <= bound


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_int4_runs_with_standard_attention_and_matches_its_weights(shape, accuracy_level, export_shape, load_llmos,
                                                                   llmos, tmp_path):
    ckpt, folder, head = export_shape(shape, "int4", accuracy_level=accuracy_level)
    m = onnx.load(os.path.join(folder, "model.onnx"))
    assert not [n for n in m.graph.node if n.op_type == "GroupQueryAttention"]
    assert [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    ref = load_llmos(llmos.convert_onnx(folder, str(tmp_path / "dequantized"), verify=False)).logits(PROMPT)
    got = _run(folder, load_llmos(ckpt))
    bound = FP32_BOUND if accuracy_level == 0 else INT4_REL_BOUND * np.abs(ref).max()
    assert np.abs(got - ref).max() <= bound
    # The greedy loop through llmos's onnxruntime backend runs too (it feeds the cache itself).
    out = llmos.load(folder, threads=1).generate(PROMPT[:8], max_new_tokens=4, eos_token_id=[])
    assert len(out.token_ids) == 4


def test_gqa_is_kept_where_onnxruntime_runs_it(export_shape, checkpoint, llmos, tmp_path):
    """Head size 16 with rope and 8 without: the fused kernel stays (and runs)."""
    for kind, overrides in (("llama_gqa", {}), ("gpt2", {"n_head": 8})):
        out = tmp_path / kind
        llmos.export_onnx(str(checkpoint(kind, **overrides)), str(out), precision="int4")
        m = onnx.load(str(out / "model.onnx"))
        assert len([n for n in m.graph.node if n.op_type == "GroupQueryAttention"]) == 2
        assert np.isfinite(llmos.load(str(out), threads=1).logits(PROMPT[:8])).all()
