"""GGUF files (llmos.io.gguf): written here from the random checkpoints by tests/gguf_files.py the way
llama.cpp's converter writes them, then loaded by llmos and compared with transformers.

* F32 GGUF: max |llmos - transformers on the original folder| <= 1e-3 over [64, vocab] (the families' bar),
  for every architecture llmos reads from GGUF (ARCH_CASES: gemma, gemma2, gemma3, phi3, Mixtral,
  qwen2moe, qwen3moe...) with greedy tokens identical, and for every checkpoint kind a GGUF can carry
  (the others skip naming what llama.cpp cannot express).
* Q8_0 / Q4_0 / K-quants: llmos on the GGUF against transformers on the GGUF's own weights dequantized
  (what transformers' gguf_file loader computes; it needs accelerate, absent here), rel-L2 of the
  logits and top-1 agreement within the int8 / int4 bounds of tests/test_quant.py.
* The blocks the model runs with (llmos/runtime/gguf_blocks.py), dequantized here from their documented
  layout, against gguf's dequantization of the file: Q8_0 / Q4_0 differ by exactly 0, K-quants stay
  within the error the module states; mixed files load as one checkpoint.
* Tokenizer: the tokenizer rebuilt from the GGUF metadata encodes and decodes as the original tokenizer.json
  (byte-level BPE, and SentencePiece-style: a Llama 2 style tokenizer.json, and SentencePiece itself).
* Hostile files: an llmos error naming the file and field, never a crash.
"""

import json
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="the gguf extra (pip install llmos[gguf]) is not installed")

from checkpoints import CORPUS  # noqa: E402
from child_env import child_env  # noqa: E402
from checkpoints import KINDS  # noqa: E402
from gguf_files import ARCH_CASES, GEMMA3_AS_LLAMA_CPP, GGUF_ARCH, write_gguf  # noqa: E402

from llmos.errors import LlmosError, ModelFormatError, NotAvailableError  # noqa: E402

IDS = np.random.default_rng(0).integers(3, 380, 64).tolist()
TEXTS = ["Hello, world!", "  two  spaces and\ttabs\nnew lines\n\n", "digits 1234567890 and 3.14159",
         "unicode: café, naïve, 日本語, emoji 🙂🚀, Ελληνικά", "<|bos|>special<|endoftext|> tokens", "",
         "The library loads the configuration, the tokenizer and the tensors."]


def _torch_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _reference_with(folder, weights):
    """transformers on `folder` with its matrices replaced by `weights` (the GGUF's, dequantized)."""
    import torch
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, w in weights.items():
            if name in params:
                params[name].copy_(torch.from_numpy(w))
    return model


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_f32_gguf_matches_transformers(kind, checkpoint, reference_model, llmos, tmp_path):
    folder = checkpoint(kind)
    path, _ = write_gguf(folder, tmp_path / f"{kind}.gguf")
    model = llmos.load(str(path), threads=1)
    assert model.quant is None  # an F32 file stays float
    got, want = model.logits(IDS), _torch_logits(reference_model(folder), IDS)
    diff = np.abs(got - want).max()
    assert diff <= 1e-3, f"{kind}: max |llmos(gguf) - transformers| = {diff:.3g}"


@pytest.mark.parametrize("case", sorted(ARCH_CASES))
def test_f32_gguf_of_each_architecture_matches_transformers(case, checkpoint, reference_model, llmos, tmp_path):
    """An F32 GGUF written from the random checkpoint as llama.cpp's converter writes that family:
    llmos on the file against transformers on the folder, logits within 1e-3 and greedy tokens
    identical (up to a genuine tie, test_reference_agreement's rule)."""
    from test_reference_agreement import check_greedy, ref_generate

    kind, overrides = ARCH_CASES[case]
    folder = checkpoint(kind, **overrides)
    path, _ = write_gguf(folder, tmp_path / f"{case}.gguf")
    model = llmos.load(str(path), threads=1)
    assert model.quant is None and model.config.family == json.loads((folder / "config.json").read_text())["model_type"]
    reference = reference_model(folder)
    got, want = model.logits(IDS), _torch_logits(reference, IDS)
    diff = np.abs(got - want).max()
    assert diff <= 1e-3, f"{case}: max |llmos(gguf) - transformers| = {diff:.3g}"
    ref_new, ref_steps = ref_generate(reference, IDS[:16], 24)
    gen = model.generate(IDS[:16], max_new_tokens=24, do_sample=False)
    assert check_greedy(gen.token_ids, ref_new, ref_steps, what=case) >= 1


def test_gemma3_gguf_norms_hold_one_plus_w(checkpoint, tmp_path):
    """llama.cpp's converter stores Gemma's norm weights as 1 + w: the file holds them so and the
    reader gives transformers' w back."""
    from safetensors.numpy import load_file

    from llmos.io.gguf import GgufFile

    folder = checkpoint("gemma3_text", **GEMMA3_AS_LLAMA_CPP)
    path, _ = write_gguf(folder, tmp_path / "g.gguf")
    hf = load_file(str(folder / "model.safetensors"))
    g = GgufFile(path)
    for gname, name in (("blk.0.attn_q_norm.weight", "model.layers.0.self_attn.q_norm.weight"),
                        ("blk.0.post_ffw_norm.weight", "model.layers.0.post_feedforward_layernorm.weight"),
                        ("output_norm.weight", "model.norm.weight")):
        stored = np.asarray(g.tensors[gname].data, np.float32)
        assert np.allclose(stored, hf[name] + 1, atol=1e-6), gname
        assert np.allclose(g.hf_array(name, g.config()), hf[name], atol=1e-6), name
    cfg = g.config()
    assert cfg["layer_types"] == GEMMA3_AS_LLAMA_CPP["layer_types"] and cfg["sliding_window"] == 16
    assert cfg["rope_parameters"]["full_attention"] == {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 2.0}


@pytest.mark.parametrize("kind", sorted(k for k, v in KINDS.items() if v.model_type in GGUF_ARCH))
def test_every_checkpoint_kind_a_gguf_can_carry(kind, checkpoint, reference_model, llmos, tmp_path):
    """Every random checkpoint of a family with a GGUF architecture, as an F32 GGUF, against
    transformers (1e-3); a kind whose settings llama.cpp cannot express is skipped saying which."""
    from gguf_files import Unwritable

    folder = checkpoint(kind)
    try:
        path, _ = write_gguf(folder, tmp_path / f"{kind}.gguf")
    except Unwritable as e:
        pytest.skip(f"{kind}: no faithful GGUF: {e}")
    got, want = llmos.load(str(path), threads=1).logits(IDS), _torch_logits(reference_model(folder), IDS)
    diff = np.abs(got - want).max()
    assert diff <= 1e-3, f"{kind}: max |llmos(gguf) - transformers| = {diff:.3g}"


@pytest.mark.parametrize("kind,overrides,why", [
    ("gemma3_text", {}, r"layer_types .*llama.cpp lays Gemma 3 out as"),
    ("gemma3_text", dict(GEMMA3_AS_LLAMA_CPP, query_pre_attn_scalar=48), r"query_pre_attn_scalar 48"),
    ("gemma2", {}, r"query_pre_attn_scalar 48"),
    ("qwen2_moe", dict(norm_topk_prob=True, tie_word_embeddings=False),
     r"norm_topk_prob True: llama.cpp renormalises .* never"),
    ("qwen2_moe", {}, r"tie_word_embeddings: llama.cpp's qwen2moe requires output.weight"),
])
def test_writer_refuses_what_gguf_cannot_carry(kind, overrides, why, checkpoint, tmp_path):
    """llama.cpp fixes Gemma 2/3's layer pattern and attention scale and each MoE architecture's
    top-k renormalisation instead of reading them: a checkpoint that differs has no faithful GGUF,
    and the test writer says so instead of writing one (those settings are not tested from GGUF)."""
    from gguf_files import Unwritable

    with pytest.raises(Unwritable, match=why):
        write_gguf(checkpoint(kind, **overrides), tmp_path / "x.gguf")


# (GGUF type, llmos format it loads as, max rel-L2, min top-1): test_quant.py's int8 / int4 bounds
QUANT_CASES = [("llama", "Q8_0", "int8", 0.03, 0.95), ("llama", "Q4_0", "int4", 0.15, 0.7),
               ("qwen3", "Q8_0", "int8", 0.03, 0.95), ("qwen3", "Q4_0", "int4", 0.15, 0.7),
               ("qwen3", "Q4_K", "int4", 0.15, 0.7), ("qwen3", "Q5_K", "int8", 0.03, 0.95),
               ("qwen3", "Q6_K", "int8", 0.03, 0.95), ("gemma3", "Q8_0", "int8", 0.05, 0.9),
               ("phi3", "Q4_0", "int4", 0.15, 0.7), ("mixtral", "Q8_0", "int8", 0.03, 0.95),
               ("mixtral", "Q4_0", "int4", 0.15, 0.7), ("qwen2_moe", "Q8_0", "int8", 0.03, 0.95),
               ("qwen3_moe", "Q4_0", "int4", 0.15, 0.7), ("qwen3_moe", "Q4_K", "int4", 0.15, 0.7)]


# gemma3 has test_quant.py's bound for the Gemma-shaped kinds (their embedding scale and norm gains
# amplify rounding), its top-1 lowered for the 6 layers llama.cpp's layout needs: with int8
# activations (avx512_vnni, avx512_bf16, scalar kernels) measured rel-L2 0.0245 and top-1 0.922,
# amx 0.010 / 1.0, float activations (avx2, avx512) 0.


def _case_folder(checkpoint, case, **overrides):
    """The checkpoint of a kind of tests/checkpoints.py or of an ARCH_CASES case."""
    kind, extra = ARCH_CASES.get(case, (case, {}))
    return checkpoint(kind, **{**extra, **overrides})


@pytest.mark.parametrize("kind,qtype,quant,max_rel,min_top1", QUANT_CASES)
def test_quantized_gguf_tracks_its_own_weights(kind, qtype, quant, max_rel, min_top1, checkpoint, llmos, tmp_path):
    # K-quant super-blocks are 256 inputs wide: the matrices need a multiple of 256 inputs
    wide = {"hidden_size": 256, "intermediate_size": 512, "head_dim": 64} if qtype.endswith("_K") else {}
    if wide and kind.endswith("_moe"):
        wide["moe_intermediate_size"] = 256
    folder = _case_folder(checkpoint, kind, weight_scale=0.1, **wide)
    path, weights = write_gguf(folder, tmp_path / f"{kind}-{qtype}.gguf", qtype)
    model = llmos.load(str(path), threads=1)
    assert model.quant.name == quant
    got, want = model.logits(IDS), _torch_logits(_reference_with(folder, weights), IDS)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    top1 = (got.argmax(-1) == want.argmax(-1)).mean()
    print(f"{kind} {qtype} -> {quant}: rel-L2 {rel:.4f}, top-1 {top1:.3f}")
    assert rel < max_rel and top1 >= min_top1, (rel, top1)


def test_q8_0_maps_exactly_onto_int8(checkpoint, llmos, tmp_path):
    """Q8_0 (32 inputs, a scale, codes in [-127, 127]) is llmos's int8 format, so the model runs
    with the file's exact weights: where the kernels prefill with float activations (AVX2 dequantizes
    the blocks into the float GEMM) the logits equal float ones on those values; elsewhere (VNNI,
    AMX, scalar) the int8 activations add their own rounding only."""
    from llmos import _core

    folder = checkpoint("qwen3", weight_scale=0.1)
    path, weights = write_gguf(folder, tmp_path / "q8.gguf", "Q8_0")
    got = llmos.load(str(path), threads=1).logits(IDS)
    want = _torch_logits(_reference_with(folder, weights), IDS)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < (1e-5 if _core.cpu_isa() == "avx2" else 0.01), (_core.cpu_isa(), rel)


# ---- the blocks the model runs with, against the file's own values ----------------------------

def _role_weights(model, held, role, layer):
    """The GGUF's dequantized weights (transformers layout) stacked as the core's role (the
    family's tensor map: q|k|v and gate|up fused along the rows, per expert too)."""
    backend = model.backend
    for r, l, parts in backend.family.tensors(backend.arch):
        if (r, l) == (role, layer):
            return np.concatenate([held[name] for name, _ in parts])
    raise KeyError((role, layer))


def _dequantize_llmos(qtype, codes, scale, mn, cols, group):
    """llmos blocks -> float32, written from cpp/quant/qformat.h: w = d * u + m, with
    m = -zero_point * d for the symmetric formats."""
    from llmos._core import QuantType

    rows = codes.shape[0]
    if qtype == QuantType.Q8:
        u, zp = codes.astype(np.float32), 128
    else:
        assert qtype in (QuantType.Q4, QuantType.Q4Asym), qtype
        c = codes.reshape(rows, cols // 64, 32)  # byte j of a chunk: u[j] low nibble, u[j + 32] high
        u, zp = np.concatenate([c & 15, c >> 4], axis=-1).reshape(rows, cols).astype(np.float32), 8
    d = np.repeat(scale.view(np.float16).astype(np.float32), group, axis=1)
    m = np.repeat(mn.view(np.float16).astype(np.float32), group, axis=1) if mn is not None else -float(zp) * d
    return d * u + m


def _blocks_against_file(model, held):
    """{(role, layer): (type, the model's dequantized blocks - the file's values)} for every
    quantized matrix the model runs with."""
    out = {}
    for role, layer, qtype, group, codes, scale, mn in model.backend.quantized_matrices():
        want = _role_weights(model, held, role, layer)
        got = _dequantize_llmos(qtype, codes, scale, mn, want.shape[1], group)
        out[(role, layer)] = (qtype, got - want)
    return out


def _group_relative(diff, want, floor):
    """|diff| per weight over the largest |w| of its 32-value group, or over `floor` when that is
    larger (below it the float16 scale is subnormal and its absolute resolution sets the error)."""
    rows, cols = want.shape
    top = np.abs(want).reshape(rows, cols // 32, 32).max(-1, keepdims=True)
    return np.abs(diff).reshape(rows, cols // 32, 32) / np.maximum(top, floor)


def test_block_converters_on_every_code():
    """Each converter on blocks holding every code (Q8_0's -128 too, which llama.cpp never writes
    but a file may hold: u = 0 is still an int8 code) equals gguf's dequantization exactly."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize

    from llmos._core import QuantType
    from llmos.runtime import gguf_blocks as gb

    rng = np.random.default_rng(3)
    rows, cols = 4, 256
    scales = rng.uniform(-0.01, 0.01, (rows, cols // 32)).astype(np.float16)
    q8 = np.zeros((rows, cols // 32, 34), np.uint8)
    q8[..., :2] = scales.view(np.uint8).reshape(rows, cols // 32, 2)
    q8[..., 2:] = (np.arange(rows * cols).reshape(rows, cols // 32, 32) % 256).astype(np.uint8)  # int8 -128..127
    q4 = np.zeros((rows, cols // 32, 18), np.uint8)
    q4[..., :2] = q8[..., :2]
    q4[..., 2:] = rng.integers(0, 256, (rows, cols // 32, 16), dtype=np.uint8)
    q8, q4 = q8.reshape(rows, -1), q4.reshape(rows, -1)
    cases = [(gb.q8_0_to_q8, q8, T.Q8_0, QuantType.Q8), (gb.q4_0_to_q4, q4, T.Q4_0, QuantType.Q4),
             (gb.q4_0_to_q8, q4, T.Q4_0, QuantType.Q8), (gb.q4_0_to_q4asym, q4, T.Q4_0, QuantType.Q4Asym)]
    for convert, raw, gtype, qtype in cases:
        want = dequantize(raw, gtype).astype(np.float32).reshape(rows, cols)
        codes, scale, *mn = convert(raw, rows, cols)
        got = _dequantize_llmos(qtype, codes, scale, mn[0] if mn else None, cols, 32)
        assert np.abs(got - want).max() == 0.0, convert.__name__


@pytest.mark.parametrize("kind", ["llama", "qwen3", "gemma3", "phi3", "mixtral", "qwen3_moe"])
@pytest.mark.parametrize("qtype,quant", [("Q8_0", "int8"), ("Q4_0", "int4")])
def test_q8_0_q4_0_blocks_are_the_files_bit_for_bit(kind, qtype, quant, checkpoint, llmos, tmp_path):
    """The codes and scales the model runs with are the file's: every quantized matrix (each
    expert's too), dequantized from llmos's blocks, equals gguf's own dequantization of the file
    (llama: with the rope row permutation undone on the blocks) with a difference of exactly 0."""
    from llmos._core import QuantType
    from llmos.runtime.gguf_blocks import is_matrix_role

    # experts 64 wide: whole Q8_0 / Q4_0 blocks (48 falls back to F16, as the converter does)
    folder = _case_folder(checkpoint, kind, weight_scale=0.1, **({"moe_intermediate_size": 64} if "moe" in kind else {}))
    path, held = write_gguf(folder, tmp_path / f"{kind}-{qtype}.gguf", qtype)
    model = llmos.load(str(path), threads=1)
    assert model.prequantized and model.quant.name == quant
    found = _blocks_against_file(model, held)
    backend = model.backend
    want_roles = {(r, l) for r, l, _ in backend.family.tensors(backend.arch) if is_matrix_role(r)}
    assert set(found) == want_roles
    assert any(r.startswith("experts.") for r, _ in want_roles) == ("moe" in kind or kind == "mixtral")
    want_type = QuantType.Q8 if qtype == "Q8_0" else QuantType.Q4
    for key, (t, diff) in found.items():
        assert t == want_type, (key, t)
        assert np.abs(diff).max() == 0.0, (key, np.abs(diff).max())


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_exact_blocks_match_the_old_float_round_trip(kind, checkpoint, llmos, tmp_path):
    """Logits of the block-mapped model against the same file loaded the old way (dequantized to a
    float folder, re-quantized at load): Q8_0 re-quantizes to the same codes, so they agree to
    float rounding; Q4_0's re-quantization (llmos's fitted scales) adds error the mapped blocks do
    not have, so the mapped model is closer to transformers on the file's weights."""
    from llmos.io.gguf import GgufFile

    folder = checkpoint(kind, weight_scale=0.1)
    for qtype, quant in (("Q8_0", "int8"), ("Q4_0", "int4")):
        path, held = write_gguf(folder, tmp_path / f"{kind}-{qtype}.gguf", qtype)
        mapped = llmos.load(str(path), threads=1).logits(IDS)
        old = llmos.load(str(GgufFile(path).write_folder(tmp_path / f"{qtype}-float")), threads=1,
                         quant=quant).logits(IDS)
        want = _torch_logits(_reference_with(folder, held), IDS)
        rel_mapped = np.linalg.norm(mapped - want) / np.linalg.norm(want)
        rel_old = np.linalg.norm(old - want) / np.linalg.norm(want)
        print(f"{kind} {qtype}: rel-L2 to transformers: mapped {rel_mapped:.5f}, re-quantized {rel_old:.5f}")
        if qtype == "Q8_0":
            assert np.abs(mapped - old).max() <= 1e-5 * np.abs(want).max()
        else:
            assert rel_mapped < rel_old, (rel_mapped, rel_old)
        assert (mapped.argmax(-1) == want.argmax(-1)).mean() >= 0.95


def test_mixed_file_loads_as_one_checkpoint(checkpoint, llmos, tmp_path):
    """A Q4_0 file that keeps some tensors at other types (as llama.cpp's mixes do): each role
    follows its own rule and the model loads as one int4 checkpoint."""
    from llmos._core import QuantType
    from llmos.io.gguf import GgufFile
    from llmos.runtime.gguf_blocks import role_report, write_checkpoint

    folder = checkpoint("qwen3", weight_scale=0.1, hidden_size=256, intermediate_size=512, head_dim=64)
    types = {"token_embd.weight": "Q6_K", "blk.0.attn_v.weight": "Q8_0", "blk.0.attn_output.weight": "Q4_K",
             "blk.1.attn_k.weight": "Q4_K", "blk.1.ffn_down.weight": "Q4_K", "blk.1.ffn_gate.weight": "Q5_K",
             "blk.1.attn_output.weight": "F16"}
    path, held = write_gguf(folder, tmp_path / "mixed.gguf", "Q4_0", tensor_types=types)
    report = role_report(write_checkpoint(GgufFile(path), tmp_path / "ckpt"))
    assert report == {
        "llmos.embed": "requantized Q6_K -> int8",
        "llmos.qkv.weight.0": "exact Q4_0+Q8_0 -> int8",         # Q4_0 widened to int8 exactly
        "llmos.qkv.weight.1": "mapped Q4_0+Q4_K -> int4-asym",    # Q4_0 as int4-asym exactly
        "llmos.o.weight.0": "mapped Q4_K -> int4-asym",           # o.weight.1 is F16: stays float
        "llmos.up.weight.0": "exact Q4_0 -> int4",
        "llmos.up.weight.1": "requantized Q4_0+Q5_K -> int8",
        "llmos.down.weight.0": "exact Q4_0 -> int4",
        "llmos.down.weight.1": "mapped Q4_K -> int4-asym",
    }
    model = llmos.load(str(path), threads=1)
    assert model.prequantized and model.quant.name == "int4"
    found = _blocks_against_file(model, held)
    assert ("o.weight", 1) not in found
    assert {k: t for k, (t, _) in found.items()} == {
        ("embed", -1): QuantType.Q8, ("qkv.weight", 0): QuantType.Q8, ("qkv.weight", 1): QuantType.Q4Asym,
        ("o.weight", 0): QuantType.Q4Asym, ("up.weight", 0): QuantType.Q4, ("up.weight", 1): QuantType.Q8,
        ("down.weight", 0): QuantType.Q4, ("down.weight", 1): QuantType.Q4Asym}
    for key in (("qkv.weight", 0), ("up.weight", 0), ("down.weight", 0)):
        assert np.abs(found[key][1]).max() == 0.0, key
    q_rows = 4 * 64  # qkv.weight.1: the Q4_0 q rows are exact in int4-asym too
    assert np.abs(found[("qkv.weight", 1)][1][:q_rows]).max() == 0.0
    got, want = model.logits(IDS), _torch_logits(_reference_with(folder, held), IDS)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    print(f"mixed Q4_0 file: rel-L2 {rel:.4f}")
    assert rel < 0.03 and (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


# The stated error of K-quants in llmos blocks (llmos/runtime/gguf_blocks.py, docs/architecture.md): per
# weight, |llmos - file| over the largest |w| of its 32-value group (floored where the float16 scale
# turns subnormal: int8 127 * 2^-14, int4 8 * 2^-14); bounds on the max and the mean.
KQUANT_BOUNDS = {"Q4_K": ("int4-asym", "mapped", 8 * 2.0 ** -14, 0.002, 0.0002),
                 "Q5_K": ("int8", "requantized", 127 * 2.0 ** -14, 1 / 254 * 1.001, 0.0021),
                 "Q6_K": ("int8", "requantized", 127 * 2.0 ** -14, 1 / 254 * 1.001, 0.0021)}


@pytest.mark.parametrize("qtype", sorted(KQUANT_BOUNDS))
def test_kquant_error_bound(qtype, checkpoint, llmos, tmp_path):
    from llmos.io.gguf import GgufFile
    from llmos.runtime.gguf_blocks import TYPE_NAMES, role_report, write_checkpoint

    folder = checkpoint("qwen3", hidden_size=256, intermediate_size=512, head_dim=64)
    path, held = write_gguf(folder, tmp_path / f"{qtype}.gguf", qtype)
    fmt, how, floor, max_bound, mean_bound = KQUANT_BOUNDS[qtype]
    assert set(role_report(write_checkpoint(GgufFile(path), tmp_path / "ckpt")).values()) == {f"{how} {qtype} -> {fmt}"}
    model = llmos.load(str(path), threads=1)
    worst, means = 0.0, []
    for (role, layer), (t, diff) in _blocks_against_file(model, held).items():
        assert TYPE_NAMES[t] == fmt
        rel = _group_relative(diff, _role_weights(model, held, role, layer), floor)
        worst = max(worst, float(rel.max()))
        means.append(float(rel.mean()))
    print(f"{qtype} -> {fmt}: max {worst:.5f}, mean {np.mean(means):.6f} of the group's largest |w|")
    assert worst <= max_bound and max(means) <= mean_bound, (worst, means)


def test_tokenizer_from_metadata_matches_tokenizer_json(checkpoint, tmp_path):
    from tokenizers import Tokenizer

    from llmos.io.gguf import GgufFile

    folder = checkpoint("qwen3")
    path, _ = write_gguf(folder, tmp_path / "t.gguf")
    original = Tokenizer.from_file(str(folder / "tokenizer.json"))
    rebuilt = Tokenizer.from_str(GgufFile(path).tokenizer_json())
    assert rebuilt.get_vocab_size() == original.get_vocab_size()
    for text in TEXTS:
        a, b = original.encode(text), rebuilt.encode(text)
        assert a.ids == b.ids, text
        for skip in (True, False):
            assert original.decode(a.ids, skip_special_tokens=skip) == rebuilt.decode(b.ids, skip_special_tokens=skip)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert GgufFile(path).tokenizer_config()["chat_template"] == cfg["chat_template"]


# SentencePiece-style texts: leading / repeated spaces ("▁" runs), characters the vocabulary lacks
# (byte fallback), digits, special tokens in the middle (the space prefix after them).
SPM_TEXTS = TEXTS + [" leading space", "trailing space ", "   ", "a", "\n", "<s>Hello</s> world<unk>!",
                     "tabs\tand\u00a0nbsp", "zzz qqq xylophone", "ÿ\u0000\u007f control", CORPUS]


@pytest.fixture()
def llama_spm_gguf(checkpoint, tmp_path):
    """A llama checkpoint with a Llama 2 style SentencePiece BPE tokenizer, and its F32 GGUF."""
    from sentencepiece_vocab import with_llama_style_tokenizer

    folder = with_llama_style_tokenizer(checkpoint("llama"), tmp_path / "spm-folder")
    return write_gguf(folder, tmp_path / "spm.gguf")[0], folder


def _same_tokenizer(original, rebuilt, texts):
    assert rebuilt.get_vocab_size() == original.get_vocab_size()
    for text in texts:
        a, b = original.encode(text), rebuilt.encode(text)
        assert a.ids == b.ids, (text, a.tokens, b.tokens)
        for skip in (True, False):
            assert original.decode(a.ids, skip_special_tokens=skip) == rebuilt.decode(b.ids, skip_special_tokens=skip)


def test_sentencepiece_vocabulary_matches_tokenizer_json(llama_spm_gguf):
    """tokenizer.ggml.model "llama" (tokens, scores, types; no merges) rebuilds as a BPE with byte
    fallback that encodes and decodes as the Llama 2 style tokenizer.json the file was written from."""
    from tokenizers import Tokenizer

    from llmos.io.gguf import GgufFile

    path, folder = llama_spm_gguf
    original = Tokenizer.from_file(str(folder / "tokenizer.json"))
    rebuilt = Tokenizer.from_str(GgufFile(path).tokenizer_json())
    # the texts really exercise the byte fallback and the merges
    assert any(t.startswith("<0x") for t in original.encode("日本語 🙂").tokens)
    assert any(len(t) > 3 for t in original.encode("The quick brown fox jumps over the lazy dog.").tokens)
    _same_tokenizer(original, rebuilt, SPM_TEXTS)


def test_sentencepiece_model_tokenizes_as_sentencepiece(tmp_path):
    """A vocabulary trained by SentencePiece itself (BPE, byte fallback, Llama 2's identity
    normalizer), written as llama.cpp's converter writes a tokenizer.model (its pieces, scores and
    types): the rebuilt tokenizer encodes and decodes as SentencePiece does."""
    spm = pytest.importorskip("sentencepiece", reason="sentencepiece is not installed: the check against "
                                                      "SentencePiece's own tokenizer cannot run")
    import io

    from tokenizers import Tokenizer

    from llmos.io.gguf import GgufFile

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS.splitlines() * 4), model_writer=model,
                                   vocab_size=500, model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, minloglevel=2,
                                   # Llama 2's normalizer: text as it is (llama.cpp applies none)
                                   normalization_rule_name="identity", remove_extra_whitespaces=False)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):  # gguf's SentencePieceVocab
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else
                     5 if sp.is_unused(i) else 1)
    w = gguf.GGUFWriter(str(tmp_path / "sp.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(sp.unk_id())
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    rebuilt = Tokenizer.from_str(GgufFile(tmp_path / "sp.gguf").tokenizer_json())
    for text in [t for t in SPM_TEXTS if "<s>" not in t and "<|" not in t] + [CORPUS]:
        want = [sp.bos_id()] + sp.encode(text)  # no add_bos_token key: llama.cpp adds BOS
        got = rebuilt.encode(text).ids
        assert got == want, (text, rebuilt.encode(text).tokens, [sp.id_to_piece(i) for i in want])
        assert rebuilt.decode(got) == sp.decode(want), text


def test_sentencepiece_gguf_generates_as_its_folder(llama_spm_gguf, llmos):
    path, folder = llama_spm_gguf
    a, b = llmos.load(str(path), threads=1), llmos.load(str(folder), threads=1)
    assert a.tokenizer.encode("Hello 日本") == b.tokenizer.encode("Hello 日本")
    assert a.generate("Hello 日本", max_new_tokens=8).text == b.generate("Hello 日本", max_new_tokens=8).text


def test_loaded_gguf_chats_with_its_template(checkpoint, llmos, tmp_path):
    folder = checkpoint("qwen2")
    path, _ = write_gguf(folder, tmp_path / "c.gguf")
    a = llmos.load(str(path), threads=1)
    b = llmos.load(str(folder), threads=1)
    msgs = [{"role": "user", "content": "Hi there"}]
    assert a.generate("Hello", max_new_tokens=8).text == b.generate("Hello", max_new_tokens=8).text
    assert a.chat(msgs, max_new_tokens=8).text == b.chat(msgs, max_new_tokens=8).text


def _edit(path, out, *, extra=None, drop=(), drop_keys=(), add_tensors=None, split_experts=False, **changes):
    """Rewrites `path` with metadata changed: a small GGUF rewriter over the reader's fields.
    extra: {key: (value, type, array sub-type or None)} added; drop / drop_keys: tensors / keys left out;
    add_tensors: {name: float32 array} added;
    split_experts: stacked ffn_*_exps tensors written as one blk.N.ffn_*.E tensor per expert
    (the layout of older Mixtral files)."""
    r = gguf.GGUFReader(str(path))
    arch = changes.pop("arch", r.fields["general.architecture"].contents())
    w = gguf.GGUFWriter(str(out), arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in drop_keys:
            continue
        value = changes.get(name, f.contents())
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, value, vtype, sub_type=f.types[-1])
        else:
            w.add_key_value(name, value, vtype)
    for name, (value, vtype, sub) in (extra or {}).items():
        w.add_key_value(name, value, vtype, sub_type=sub)
    qt = changes.get("qtype")
    for name, data in (add_tensors or {}).items():
        w.add_tensor(name, data)
    for t in r.tensors:
        data = np.array(t.data)
        if t.name in drop:
            continue
        if qt is not None and data.ndim == 2 and t.name.endswith("ffn_up.weight"):
            w.add_tensor(t.name, gguf.quants.quantize(data.astype(np.float32), qt), raw_dtype=qt)
        elif split_experts and t.name.endswith("_exps.weight"):
            stem = t.name[:-len("_exps.weight")]
            for e in range(data.shape[0]):
                w.add_tensor(f"{stem}.{e}.weight", np.ascontiguousarray(data[e]), raw_dtype=t.tensor_type)
        else:
            w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture()
def small_gguf(checkpoint, tmp_path):
    return write_gguf(checkpoint("qwen3"), tmp_path / "s.gguf")[0]


def test_unknown_architecture_lists_the_supported(small_gguf, llmos, tmp_path):
    bad = _edit(small_gguf, tmp_path / "x.gguf", arch="rwkv6")
    with pytest.raises(ModelFormatError, match=r"'rwkv6' is not supported; supported: gemma, gemma2, gemma3, llama, mistral, phi3, "
                                               r"qwen2, qwen2moe, qwen3, qwen3moe \(llama with expert_count: Mixtral\)") as e:
        llmos.load(str(bad))
    assert e.value.field == "general.architecture" and e.value.file == str(bad)


def test_unsupported_tensor_type_names_tensor_and_type(small_gguf, llmos, tmp_path):
    bad = _edit(small_gguf, tmp_path / "x.gguf", qtype=gguf.GGMLQuantizationType.Q5_0)
    with pytest.raises(ModelFormatError, match=r"tensor blk\.0\.ffn_up\.weight has GGML type Q5_0") as e:
        llmos.load(str(bad))
    assert e.value.file == str(bad)


def test_unsupported_tokenizer_model_lists_the_supported(small_gguf, llmos, tmp_path):
    bad = _edit(small_gguf, tmp_path / "x.gguf", **{"tokenizer.ggml.model": "t5"})
    with pytest.raises(ModelFormatError, match=r"tokenizer.ggml.model='t5' is not supported; supported: 'gpt2', 'llama'") as e:
        llmos.load(str(bad))
    assert e.value.field == "tokenizer.ggml.model"


def test_sentencepiece_scores_of_the_wrong_length_are_refused(llama_spm_gguf, tmp_path):
    from llmos.io.gguf import GgufFile

    path, _ = llama_spm_gguf
    scores = gguf.GGUFReader(str(path)).fields["tokenizer.ggml.scores"].contents()
    bad = _edit(path, tmp_path / "x.gguf", **{"tokenizer.ggml.scores": scores[:-3]})
    with pytest.raises(ModelFormatError, match=r"tokenizer.ggml.scores has \d+ entries for 384 tokens"):
        GgufFile(bad).tokenizer_json()


def test_truncated_file_is_a_format_error(small_gguf, llmos, tmp_path):
    data = small_gguf.read_bytes()
    for cut in (10, 100, len(data) // 2, len(data) - 7):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError) as e:
            llmos.load(str(bad))
        assert str(bad) in str(e.value)


def test_absurd_header_counts_are_refused_before_reading(small_gguf, llmos, tmp_path):
    data = bytearray(small_gguf.read_bytes())
    for at, field in ((8, "tensor_count"), (16, "metadata_kv_count")):
        bad = tmp_path / f"{field}.gguf"
        patched = bytearray(data)
        patched[at:at + 8] = struct.pack("<Q", 1 << 60)
        bad.write_bytes(bytes(patched))
        with pytest.raises(ModelFormatError, match=rf"{field}=\d+ is over the limit .*gguf_max_"):
            llmos.load(str(bad))


def _patch_tensor_info(path, out, name, *, dims=None, offset=None):
    """Rewrites one tensor's dims or data offset in place (the tensor-info fields the reader parsed)."""
    data = bytearray(path.read_bytes())
    # tensor infos: name (u64 len + bytes), n_dims u32, dims u64 x n, type u32, offset u64
    key = name.encode()
    at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    n_dims = struct.unpack_from("<I", data, at)[0]
    if dims is not None:
        for i, d in enumerate(dims[:n_dims]):
            struct.pack_into("<Q", data, at + 4 + 8 * i, d)
    if offset is not None:
        struct.pack_into("<Q", data, at + 4 + 8 * n_dims + 4, offset)
    out.write_bytes(bytes(data))
    return out


def test_absurd_tensor_shape_is_refused(small_gguf, llmos, tmp_path):
    bad = _patch_tensor_info(small_gguf, tmp_path / "shape.gguf", "blk.0.ffn_up.weight", dims=(1 << 40, 1 << 40))
    with pytest.raises(LlmosError) as e:
        llmos.load(str(bad))
    assert str(bad) in str(e.value)


def test_tensor_data_past_the_end_is_refused(small_gguf, llmos, tmp_path):
    bad = _patch_tensor_info(small_gguf, tmp_path / "off.gguf", "blk.1.ffn_down.weight", offset=1 << 40)
    with pytest.raises(LlmosError) as e:
        llmos.load(str(bad))
    assert str(bad) in str(e.value)


def test_element_limit_names_the_tensor(small_gguf, llmos):
    from llmos import limits

    old = limits.current()
    limits.configure(gguf_max_tensor_elements=1000)
    try:
        with pytest.raises(ModelFormatError, match=r"\.n_elements=\d+ is over the limit of 1000"):
            llmos.load(str(small_gguf))
    finally:
        limits.LIMITS = old


def test_missing_extra_says_pip_install(small_gguf, monkeypatch):
    from llmos import extras
    from llmos.io.gguf import GgufFile

    monkeypatch.setattr(extras, "_importable", lambda m: m != "gguf")
    with pytest.raises(NotAvailableError, match=r"pip install 'llmos\[gguf\]'"):
        GgufFile(small_gguf)


def test_cli_import_gguf_then_run_by_name(checkpoint, tmp_path):
    folder = checkpoint("qwen3", weight_scale=0.1)
    path, _ = write_gguf(folder, tmp_path / "tiny-q8.gguf", "Q8_0")
    env = child_env(LLMOS_HOME=str(tmp_path / "home"))
    run = [sys.executable, "-m", "llmos"]
    out = subprocess.run(run + ["import", str(path), "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "as tiny-q8:latest" in out.stdout
    code = ("import llmos, numpy as np; m = llmos.load('tiny-q8'); print(m.prequantized, m.quant.name); "
            f"print(np.asarray(m.logits({IDS[:8]!r})).argmax(-1).tolist())")
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    import llmos

    lines = shown.stdout.splitlines()
    assert lines[0] == "True int8"
    assert lines[1] == str(np.asarray(llmos.load(str(path), threads=1).logits(IDS[:8])).argmax(-1).tolist())


# ---- the other architectures' fields, from hostile or older files ------------------------------

def _arch_gguf(checkpoint, tmp_path, case):
    kind, overrides = ARCH_CASES[case]
    return write_gguf(checkpoint(kind, **overrides), tmp_path / f"{case}.gguf")[0]


def test_older_per_expert_mixtral_tensors_load_the_same(checkpoint, llmos, tmp_path):
    """Mixtral files from before llama.cpp stacked the experts hold blk.N.ffn_gate.E.weight per
    expert: they load as the same model."""
    stacked = _arch_gguf(checkpoint, tmp_path, "mixtral")
    split = _edit(stacked, tmp_path / "split.gguf", split_experts=True)
    names = {t.name for t in gguf.GGUFReader(str(split)).tensors}
    assert "blk.1.ffn_down.3.weight" in names and not any(n.endswith("_exps.weight") for n in names)
    a = llmos.load(str(stacked), threads=1).logits(IDS)
    b = llmos.load(str(split), threads=1).logits(IDS)
    assert np.abs(a - b).max() == 0.0


def test_expert_count_that_disagrees_with_the_tensors_is_refused(checkpoint, llmos, tmp_path):
    bad = _edit(_arch_gguf(checkpoint, tmp_path, "qwen3_moe"), tmp_path / "x.gguf", **{"qwen3moe.expert_count": 3})
    with pytest.raises(ModelFormatError, match=r"tensor blk\.0\.ffn_\w+_exps\.weight has shape \[4, \d+, \d+\]; "
                                               r"expected \[qwen3moe\.expert_count=3") as e:
        llmos.load(str(bad))
    assert e.value.file == str(bad)


def test_per_expert_tensor_past_the_expert_count_is_refused(checkpoint, llmos, tmp_path):
    split = _edit(_arch_gguf(checkpoint, tmp_path, "mixtral"), tmp_path / "split.gguf", split_experts=True)
    bad = _edit(split, tmp_path / "x.gguf", **{"llama.expert_count": 3, "llama.expert_used_count": 2})
    with pytest.raises(ModelFormatError, match=r"tensor blk\.0\.ffn_\w+\.3\.weight: expert 3 is not below "
                                               r"llama\.expert_count"):
        llmos.load(str(bad))


def test_gemma3_sliding_window_pattern_of_the_wrong_length_is_refused(checkpoint, llmos, tmp_path):
    A = gguf.GGUFValueType.ARRAY
    bad = _edit(_arch_gguf(checkpoint, tmp_path, "gemma3"), tmp_path / "x.gguf",
                extra={"gemma3.attention.sliding_window_pattern": ([True, False], A, gguf.GGUFValueType.BOOL)})
    with pytest.raises(ModelFormatError, match=r"sliding_window_pattern: expected 6 entries") as e:
        llmos.load(str(bad))
    assert e.value.field == "gemma3.attention.sliding_window_pattern"


def test_gemma3_sliding_window_pattern_is_read(checkpoint, tmp_path):
    from llmos.io.gguf import GgufFile

    A = gguf.GGUFValueType.ARRAY
    pattern = [True, False, True, True, False, False]
    edited = _edit(_arch_gguf(checkpoint, tmp_path, "gemma3"), tmp_path / "x.gguf",
                   extra={"gemma3.attention.sliding_window_pattern": (pattern, A, gguf.GGUFValueType.BOOL)})
    assert GgufFile(edited).config()["layer_types"] == [
        "sliding_attention" if p else "full_attention" for p in pattern]


def test_block_count_over_the_limit_is_refused_before_per_layer_lists(checkpoint, llmos, tmp_path):
    bad = _edit(_arch_gguf(checkpoint, tmp_path, "gemma3"), tmp_path / "x.gguf", **{"gemma3.block_count": (1 << 32) - 1})
    with pytest.raises(ModelFormatError, match=r"gemma3\.block_count=\d+ is over the limit .*max_layers"):
        llmos.load(str(bad))


def test_longrope_without_both_factor_tensors_is_refused(checkpoint, llmos, tmp_path):
    bad = _edit(_arch_gguf(checkpoint, tmp_path, "phi3_longrope"), tmp_path / "x.gguf",
                drop=("rope_factors_short.weight",))
    with pytest.raises(ModelFormatError, match=r"LongRoPE needs both rope_factors_short\.weight and rope_factors_long"):
        llmos.load(str(bad))


def test_router_other_than_softmax_is_refused(checkpoint, llmos, tmp_path):
    bad = _edit(_arch_gguf(checkpoint, tmp_path, "qwen3_moe"), tmp_path / "x.gguf",
                extra={"qwen3moe.expert_gating_func": (2, gguf.GGUFValueType.UINT32, None)})
    with pytest.raises(ModelFormatError, match=r"qwen3moe\.expert_gating_func=2 is not supported") as e:
        llmos.load(str(bad))
    assert e.value.field == "qwen3moe.expert_gating_func"


def test_sentencepiece_vocabulary_adds_bos_unless_the_file_says_not(llama_spm_gguf, tmp_path):
    """llama.cpp adds BOS to a SentencePiece vocabulary's text when add_bos_token is absent."""
    from tokenizers import Tokenizer

    from llmos.io.gguf import GgufFile

    path, _ = llama_spm_gguf
    said_no = Tokenizer.from_str(GgufFile(path).tokenizer_json())
    silent = Tokenizer.from_str(GgufFile(_edit(path, tmp_path / "x.gguf", drop_keys=("tokenizer.ggml.add_bos_token",)))
                                .tokenizer_json())
    assert silent.encode("Hello").ids == [1] + said_no.encode("Hello").ids


def test_rope_freqs_that_are_not_llama3_are_refused_not_ignored(checkpoint, llmos, tmp_path):
    """llama.cpp stores Llama 3.1's rope scaling as a rope_freqs tensor of per-frequency divisors;
    divisors that no llama3 parameters produce are refused naming the tensor (loading without them
    would give wrong logits)."""
    path, _ = write_gguf(checkpoint("llama"), tmp_path / "l.gguf")
    for values, why in ((np.ones(8), "expected values from 1 up to a factor above 1"),
                        (np.array([1, 1, 3, 2, 8, 8, 8, 8]), "do not fall on llama3's line|do not reproduce it")):
        bad = _edit(path, tmp_path / "x.gguf", add_tensors={"rope_freqs.weight": values.astype(np.float32)})
        with pytest.raises(ModelFormatError, match=rf"tensor rope_freqs\.weight: .*({why})") as e:
            llmos.load(str(bad))
        assert e.value.field == "rope_freqs.weight"


def test_llama3_rope_is_recovered_from_rope_freqs(checkpoint, tmp_path):
    """The llama3 parameters read back from rope_freqs are the checkpoint's (Llama 3.1's own
    low_freq_factor 1 makes them exact) when three frequencies are smoothed."""
    from llmos.io.gguf import GgufFile

    kind, overrides = ARCH_CASES["llama3_rope"]
    path, _ = write_gguf(checkpoint(kind, **overrides), tmp_path / "l3.gguf")
    assert GgufFile(path).config()["rope_scaling"] == {
        "rope_type": "llama3", "factor": 8, "low_freq_factor": 1.0, "high_freq_factor": 4,
        "original_max_position_embeddings": 64}


def test_expert_weights_norm_key_overrides_the_architecture_default(checkpoint, tmp_path):
    """llama.cpp fixes the renormalisation per architecture; a file that states
    expert_weights_norm is taken at its word."""
    from llmos.io.gguf import GgufFile

    path = _arch_gguf(checkpoint, tmp_path, "qwen2_moe")
    assert GgufFile(path).config()["norm_topk_prob"] is False
    edited = _edit(path, tmp_path / "x.gguf",
                   extra={"qwen2moe.expert_weights_norm": (True, gguf.GGUFValueType.BOOL, None)})
    assert GgufFile(edited).config()["norm_topk_prob"] is True


def test_gemma_defaults_and_keys_as_llama_cpp_reads_them(checkpoint, tmp_path):
    """Gemma 2 without window / soft-capping keys takes llama.cpp's 4096 / 50 / 30; a Gemma 3
    pattern given as a layer count; a Gemma 3 local rope base from rope.freq_base_swa."""
    from llmos.io.gguf import GgufFile

    g2 = _arch_gguf(checkpoint, tmp_path, "gemma2")
    bare = _edit(g2, tmp_path / "bare.gguf", drop_keys=("gemma2.attention.sliding_window",
                                                        "gemma2.attn_logit_softcapping", "gemma2.final_logit_softcapping"))
    cfg = GgufFile(bare).config()
    assert (cfg["sliding_window"], cfg["attn_logit_softcapping"], cfg["final_logit_softcapping"]) == (4096, 50.0, 30.0)
    assert cfg["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]
    U = gguf.GGUFValueType.UINT32
    g3 = _edit(_arch_gguf(checkpoint, tmp_path, "gemma3"), tmp_path / "g3.gguf",
               extra={"gemma3.attention.sliding_window_pattern": (3, U, None)},
               **{"gemma3.rope.freq_base_swa": 20000.0})
    cfg = GgufFile(g3).config()
    assert cfg["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention"] * 2
    assert cfg["rope_parameters"]["sliding_attention"]["rope_theta"] == 20000.0


def test_tensor_of_a_layer_past_block_count_is_refused(small_gguf, llmos, tmp_path):
    bad = _edit(small_gguf, tmp_path / "x.gguf", add_tensors={"blk.7.attn_norm.weight": np.ones(64, np.float32)})
    with pytest.raises(ModelFormatError, match=r"tensor blk\.7\.attn_norm\.weight: layer 7 is not below "
                                               r"qwen3\.block_count=2") as e:
        llmos.load(str(bad))
    assert e.value.field == "blk.7.attn_norm.weight"


def test_rope_scaling_llmos_does_not_read_is_refused_by_key(small_gguf, llmos, tmp_path):
    S = gguf.GGUFValueType.STRING
    bad = _edit(small_gguf, tmp_path / "x.gguf", extra={"qwen3.rope.scaling.type": ("yarn", S, None)})
    with pytest.raises(ModelFormatError, match=r"qwen3\.rope\.scaling\.type='yarn' is not supported from GGUF") as e:
        llmos.load(str(bad))
    assert e.value.field == "qwen3.rope.scaling.type"
