"""ONNX decoders made by other tools, run by llmos.load and converted for the core.

The onnxruntime-genai model builder (`onnxruntime-genai` from PyPI) exports random-weight
checkpoints here, offline; its graphs use onnxruntime's fused ops (GroupQueryAttention with
its own rope caches, SkipSimplifiedLayerNormalization, MatMulNBits) and write the KV cache
in place (past_present_share_buffer), so they exercise the loader differently from our own
exports. Greedy tokens must be identical to transformers'. optimum's export needs
transformers < 4.58 and is checked by tools/check_optimum_export.sh instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import warnings

import numpy as np
import pytest


PROMPT = [(11 * i + 5) % 300 + 5 for i in range(24)]
GENAI_KINDS = ["llama", "qwen2", "qwen3", "gemma2", "granite"]


@pytest.fixture(scope="session")
def genai_export(checkpoint, tmp_path_factory):
    """genai_export(kind, precision) -> folder written by the onnxruntime-genai builder."""
    # The builder is part of the test extra (with onnx_ir, which it needs but does not
    # declare): a failure to import or export is a failure, not a skip.
    from onnxruntime_genai.models import builder

    root = tmp_path_factory.mktemp("genai")
    cache: dict = {}

    def get(kind: str, precision: str = "fp32") -> str:
        key = (kind, precision)
        if key not in cache:
            src = str(checkpoint(kind))
            out = root / f"{kind}-{precision}"
            sink = io.StringIO()
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                    warnings.simplefilter("ignore")
                    args = (src, src, str(out), precision, "cpu", str(root / "cache"))
                    extra = builder.parse_extra_options(*args, []) if hasattr(builder, "parse_extra_options") else {}
                    builder.create_model(*args, **extra)
            except Exception as e:
                pytest.fail(f"the onnxruntime-genai builder failed to export {kind}: {type(e).__name__}: {e}\n"
                            f"{sink.getvalue()[-2000:]}")
            cache[key] = str(out)
        return cache[key]

    return get


def _reference_greedy(reference_model, path, ids, n):
    import torch

    model = reference_model(path)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0, attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        logits = model(torch.tensor([ids])).logits[0].numpy()
    return out[0, len(ids):].tolist(), logits


@pytest.mark.parametrize("kind", GENAI_KINDS)
def test_genai_builder_export_is_token_identical_to_transformers(kind, genai_export, checkpoint, reference_model,
                                                                 llmos):
    folder = genai_export(kind)
    model = llmos.load(folder, threads=1)
    assert model.backend.name == "onnx"
    tokens, logits = _reference_greedy(reference_model, checkpoint(kind), PROMPT, 24)
    assert np.abs(model.logits(PROMPT) - logits).max() <= 1e-4
    got = model.generate(PROMPT, max_new_tokens=24, eos_token_id=[])
    assert got.token_ids == tokens
    # The same decoding options behave as in the core: sampling with a seed, stop strings.
    core = llmos.load(str(checkpoint(kind)), threads=1)
    opts = dict(max_new_tokens=12, do_sample=True, temperature=0.7, top_k=40, top_p=0.9, seed=11, eos_token_id=[])
    assert model.generate(PROMPT, **opts).token_ids == core.generate(PROMPT, **opts).token_ids
    assert "".join(model.stream(PROMPT, max_new_tokens=8)) == core.generate(PROMPT, max_new_tokens=8).text


def test_genai_builder_int4_runs(genai_export, llmos, checkpoint):
    folder = genai_export("llama", "int4")
    model = llmos.load(folder, threads=1)
    g = model.generate("The quick brown fox", max_new_tokens=10, eos_token_id=[])
    assert len(g.token_ids) == 10 and g.finish_reason == "length"
    # Converted for the core (4-bit weights dequantized), the model computes the same logits
    # up to the int8 activations of MatMulNBits accuracy_level 4.
    out = llmos.convert_onnx(folder, os.path.join(os.path.dirname(folder), "llama-int4-converted"))
    a, b = model.logits(PROMPT), llmos.load(out, threads=1).logits(PROMPT)
    assert np.abs(a - b).max() <= 0.15 * np.abs(a).max()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gemma2"])
def test_convert_genai_builder_export_for_the_core(kind, genai_export, llmos, tmp_path):
    folder = genai_export(kind)
    out = llmos.convert_onnx(folder, str(tmp_path / "ckpt"))
    core = llmos.load(out, threads=1)
    assert type(core).__name__ == "Model"
    onnx_model = llmos.load(folder, threads=1)
    assert np.abs(core.logits(PROMPT) - onnx_model.logits(PROMPT)).max() <= 1e-4
    assert core.generate(PROMPT, max_new_tokens=16, eos_token_id=[]).token_ids == \
        onnx_model.generate(PROMPT, max_new_tokens=16, eos_token_id=[]).token_ids


@pytest.mark.parametrize("kind", ["gpt2", "llama_gqa", "mistral_swa", "qwen2", "qwen3", "phi3", "phi3_longrope",
                                  "gemma", "gemma2", "gemma3_text", "smollm3", "olmo2", "granite"])
def test_convert_our_export_round_trips(kind, checkpoint, load_llmos, llmos, tmp_path):
    onnx_dir = tmp_path / "onnx"
    llmos.export_onnx(str(checkpoint(kind)), str(onnx_dir))
    out = llmos.convert_onnx(str(onnx_dir), str(tmp_path / "ckpt"))
    original = load_llmos(checkpoint(kind))
    back = llmos.load(out, threads=1)
    assert np.array_equal(back.logits(PROMPT), original.logits(PROMPT))


def test_convert_fp16_export(checkpoint, load_llmos, llmos, tmp_path):
    llmos.export_onnx(str(checkpoint("llama_gqa")), str(tmp_path / "onnx"), precision="fp16")
    out = llmos.convert_onnx(str(tmp_path / "onnx"), str(tmp_path / "ckpt"))
    a = llmos.load(out, threads=1).logits(PROMPT)
    b = load_llmos(checkpoint("llama_gqa")).logits(PROMPT)
    assert np.abs(a - b).max() <= 2e-2 * np.abs(b).max()


def test_load_prefers_safetensors_when_both_are_present(checkpoint, llmos, tmp_path):
    src = tmp_path / "both"
    shutil.copytree(checkpoint("llama"), src)
    llmos.export_onnx(str(checkpoint("llama")), str(tmp_path / "onnx"))
    shutil.copyfile(tmp_path / "onnx" / "model.onnx", src / "model.onnx")
    assert type(llmos.load(str(src), threads=1)).__name__ == "Model"


def test_import_llmos_does_not_import_onnx():
    import subprocess
    import sys

    code = "import sys, llmos; llmos.load; print('onnx' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False False"
