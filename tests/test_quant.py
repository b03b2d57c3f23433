"""Quantized weights: formats, kernels under every ISA against the scalar reference, and
whole models against float32.

Metrics: NMSE = sum((y - ref)^2) / sum(ref^2). The fast kernels do the same integer dot
products as the scalar reference and differ only in float summation order (NMSE ~1e-13);
against float32 math on the dequantized weights the activation rounding to int8 adds
~3e-5 (7-bit codes, int8 weights' prefill on AVX2 / AVX-512 without VNNI: ~1.1e-4). The AMX tile path (bf16 activations and dequantized weights, float32 accumulation)
is compared with float64 math on the dequantized weights instead: ~5e-6.
"""

import numpy as np
import pytest

from isa_levels import INT8_ACTS7_LEVELS, int8_acts7_active, level_params
from llmos import _core
from llmos.errors import InvalidInputError
from llmos.quant.names import parse_quant

TYPES = {"int8": _core.QuantType.Q8, "int4": _core.QuantType.Q4, "int4-asym": _core.QuantType.Q4Asym,
         "int6": _core.QuantType.Q6}  # int6: a head format ("-h6")


def dequantize_q6(codes, scale, group):
    """Q6 blocks decoded in numpy from the layout documented in cpp/quant/qformat.h: per 64
    values, 32 bytes of low nibbles as Q4, then 16 bytes of high 2-bit pairs."""
    rows = codes.shape[0]
    chunks = codes.reshape(rows, -1, 48).astype(np.int32)
    lo, hb = chunks[:, :, :32], chunks[:, :, 32:]
    u = np.concatenate([lo & 15, lo >> 4], axis=2)  # [rows, chunks, 64], low 4 bits in order
    high = np.concatenate([(hb >> (2 * q)) & 3 for q in range(4)], axis=2)  # value 16 q + j
    u = (u | (high << 4)).reshape(rows, -1)
    d = np.repeat(scale.view(np.float16).astype(np.float32), group, axis=1)
    return d * (u - 32).astype(np.float32)


def nmse(y, ref):
    ref = np.asarray(ref, np.float64)
    return float(((np.asarray(y, np.float64) - ref) ** 2).sum() / (ref**2).sum())


@pytest.mark.parametrize("qname", list(TYPES))
@pytest.mark.parametrize("group", [32, 64, 128])
def test_round_trip_error_is_bounded_by_the_step(qname, group):
    rng = np.random.default_rng(group)
    w = rng.standard_normal((16, 256)).astype(np.float32)
    w[3, 5] = 40.0  # an outlier only widens its own group's step
    wd = _core.quantize_dequantize(w, TYPES[qname], group)
    for r in range(w.shape[0]):
        for g in range(256 // group):
            blk = w[r, g * group:(g + 1) * group]
            amax = np.abs(blk).max()
            if qname == "int8":
                step, bound = amax / 127, 0.5
            elif qname == "int4":  # codes -8..7, the scale fitted near amax / 8 for the least squared
                step, bound = amax / 8, 1.5  # error, which may clamp a group's extreme (1.4 steps at group 128)
            elif qname == "int6":  # codes -32..31, the scale searched near amax / 32: within a step
                step, bound = amax / 31, 1.0
            else:
                step, bound = (blk.max() - blk.min()) / 15, 0.5
            err = np.abs(wd[r, g * group:(g + 1) * group] - blk).max()
            # + float16 rounding of the scale (and min) the codes were computed against
            assert err <= step * bound * 1.01 + 2e-3 * amax


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int6_error_is_that_of_a_6_bit_grid(group):
    """Q6 picks its scale among candidates by squared error: on Gaussian weights its NMSE is
    below 16x int8's (a 4x coarser step) and ~1/18 of int4's. Measured: 4.0e-4, 5.1e-4,
    6.1e-4 for groups 32, 64, 128 (the extreme on -32 alone gives 4.5e-4 at group 32)."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((64, 512)).astype(np.float32)
    err = {q: nmse(_core.quantize_dequantize(w, TYPES[q], group), w) for q in ("int8", "int6", "int4")}
    assert err["int6"] < 16 * err["int8"] and err["int6"] < err["int4"] / 15
    assert err["int6"] < {32: 4.2e-4, 64: 5.4e-4, 128: 6.5e-4}[group]


# The later shapes cover AMX's cases: 1 or 2 row tiles of 16 with a row-kernel tail, 1 or 2
# token tiles with a partial one, and chunks of rows (k = 2048); and the packed int8 GEMMs'
# (panels of 32 rows on AVX-512, 16 on AVX2, two vectors each): partial or empty second
# vectors (4, 7, 13, 35, 48, 77 rows), token tiles (2, 3, 4 or 6) with tokens left over, and k
# not a multiple of 128 (448).
SHAPES = [(n, rows, k, g) for (n, rows, k) in [(1, 1, 64), (1, 7, 128), (3, 9, 256), (5, 4, 384), (9, 13, 128),
                                               (17, 35, 384), (40, 48, 256), (33, 16, 2048), (13, 77, 448)]
          for g in (32, 64, 128) if k % g == 0]
# Prefill kernels that do the reference's integer dot products (the packed int8 GEMMs) differ
# from it only in float summation order.
SAME_INTEGERS_NMSE = 1e-11
# int8 weights on AVX2 / AVX-512 without VNNI: the packed GEMM on 7-bit activation codes
# (kernels/qgemm_avx2.cc). Against float math on the dequantized weights its activation
# rounding adds ~1.1e-4 on Gaussian data (8-bit codes: ~2.9e-5, the bound of the last assert).
ACTS7_NMSE = 2.5e-4


def acts7_reference(x, wd):
    """x @ wd^T with x rounded as quantize_activations(..., max_code=63) rounds it (qformat.cc):
    per 32-value block the scale amax / 63 in float32, codes rint(x * (1 / scale)) in [-63, 63]."""
    n, k = x.shape
    blocks = x.reshape(n, k // 32, 32)
    scale = (np.abs(blocks).max(-1) / np.float32(63)).astype(np.float32)
    inv = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale != 0)
    codes = np.rint(blocks * inv[..., None])
    assert np.abs(codes).max() <= 63
    return (codes.astype(np.float64) * scale[..., None]).reshape(n, k) @ np.asarray(wd, np.float64).T
# The AMX tiles (bf16 activations and weights, float32 accumulation) against the same.
BF16_TILES_NMSE = 2e-5


@pytest.mark.parametrize("isa", level_params())
@pytest.mark.parametrize("qname", list(TYPES))
@pytest.mark.parametrize("n,rows,k,group", SHAPES)
def test_kernels_match_the_scalar_reference(isa, qname, group, n, rows, k):
    rng = np.random.default_rng(n * 100 + rows + k)
    w = rng.standard_normal((rows, k)).astype(np.float32)
    x = rng.standard_normal((n, k)).astype(np.float32)
    ref = _core.kernel_qmatmul("scalar", x, w, TYPES[qname], group, prefill=False)
    wd = _core.quantize_dequantize(w, TYPES[qname], group)
    exact = x.astype(np.float64) @ wd.astype(np.float64).T
    # The row kernel (decode): the same integer dot products as the reference.
    assert nmse(_core.kernel_qmatmul(isa, x, w, TYPES[qname], group, prefill=False), ref) < 1e-11
    # The prefill path (kernels/quantized_matmul.cc): AMX takes whole 16-row slices on bf16
    # tiles (the row kernel the rest); the other levels run the packed int8 GEMM on the same
    # int8 activations, except int8 weights on avx2 / avx512, whose GEMM takes 7-bit ones.
    out = _core.kernel_qmatmul(isa, x, w, TYPES[qname], group, prefill=True)
    tiled = rows // 16 * 16 if isa == "amx" else 0
    if tiled:
        assert nmse(out[:, :tiled], exact[:, :tiled]) < BF16_TILES_NMSE
    if isa in INT8_ACTS7_LEVELS and qname == "int8":
        assert nmse(out, acts7_reference(x, wd)) < SAME_INTEGERS_NMSE
        assert nmse(out, exact) < ACTS7_NMSE
    elif tiled < rows:
        assert nmse(out[:, tiled:], ref[:, tiled:]) < SAME_INTEGERS_NMSE
    # and the reference itself agrees with float math on the dequantized weights
    assert nmse(ref, exact) < 1e-4


@pytest.mark.parametrize("isa", level_params())
@pytest.mark.parametrize("qname", list(TYPES))
def test_prefill_sums_hold_the_largest_codes(isa, qname):
    """The largest products the vpmaddubsw GEMMs meet (qgemm_avx512.cc / qgemm_avx2.cc sum them
    in int16): every weight code at the top of its range bar the one that sets the group's
    scale, every activation code at +-127. A saturated sum would be off by thousands of units."""
    rows, k, group = 35, 256, 32
    w = np.full((rows, k), 0.97, np.float32)
    w[:, ::group] = -1.0  # the extreme sets the scale (on the bottom code); the rest land on the top
    w[1::2] *= -1.0  # odd rows mirrored: the bottom codes, and for int8 negative weights
    x = np.ones((13, k), np.float32)
    x[1::2] = -1.0
    x[12] = np.random.default_rng(3).standard_normal(k)
    out = _core.kernel_qmatmul(isa, x, w, TYPES[qname], group, prefill=True)
    if isa == "amx":  # bf16 activations
        wd = _core.quantize_dequantize(w, TYPES[qname], group).astype(np.float64)
        assert nmse(out, x.astype(np.float64) @ wd.T) < BF16_TILES_NMSE
    elif isa in INT8_ACTS7_LEVELS and qname == "int8":  # 7-bit activations: pairs up to 2 x 127 x 127
        wd = _core.quantize_dequantize(w, TYPES[qname], group)
        assert nmse(out, acts7_reference(x, wd)) < SAME_INTEGERS_NMSE
    else:
        ref = _core.kernel_qmatmul("scalar", x, w, TYPES[qname], group, prefill=False)
        assert nmse(out, ref) < SAME_INTEGERS_NMSE


@pytest.mark.parametrize("bad", ["int3", "int4-g48", "int8-g16", "fp8", "int4-asym-g7"])
def test_bad_quant_names(bad):
    with pytest.raises(InvalidInputError):
        parse_quant(bad)


def test_quant_names():
    assert parse_quant("int4-g64").group == 64
    assert parse_quant("int8").name == "int8"
    assert parse_quant(None) is None
    # the embedding / LM head: int8 unless "-h6" asks for int6 (Q6)
    assert parse_quant("int8-g64").head_type == TYPES["int8"]
    for q in ("int4", "int4-g64", "int4-g128", "int4-asym"):
        assert parse_quant(q).head_type == TYPES["int8"]
        assert parse_quant(q + "-h6").head_type == TYPES["int6"] and parse_quant(q + "-h6").name == q + "-h6"
    with pytest.raises(InvalidInputError):
        parse_quant("int6")  # a head format, not offered for the layers
    with pytest.raises(InvalidInputError):
        parse_quant("int4-h6-g64")


QUANT_BOUNDS = [("int8", 0.03, 0.95), ("int4", 0.15, 0.7), ("int4-g64", 0.2, 0.7), ("int4-asym", 0.15, 0.7),
                ("int4-h6", 0.15, 0.7)]
TRACKING_KINDS = ["llama", "gpt2", "qwen3", "smollm3", "granite", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss"]
# The Gemma-shaped random checkpoints (embeddings x sqrt(hidden), norms (1 + w) with gains) and
# OLMo 2's post-norm-only blocks amplify int4 rounding into chaos: rel-L2 0.18-0.33 and top-1
# 0.55-0.67 for gemma2 (supported before these), gemma3_text and olmo2 alike. They are checked at
# int8 only, which shows these families quantize the right tensors, with a bound of their own:
# measured rel-L2 0.024 / 0.025 / 0.015 (avx2) and 0.029 / 0.033 / 0.018 (scalar kernels), top-1 >= 0.95.
INT8_ONLY_KINDS = ["gemma2", "gemma3_text", "olmo2"]
INT8_SENSITIVE_BOUND = ("int8", 0.05, 0.95)
# At the levels whose int8 prefill GEMM takes 7-bit activations (INT8_ACTS7_LEVELS) the activations
# round twice as coarsely, and these random models amplify it: measured at avx2 and avx512
# rel-L2 0.012-0.027 and top-1 >= 0.953 on TRACKING_KINDS (1.3-1.6x the VNNI level's 0.008-0.016),
# 0.044 / 0.048 / 0.026 and top-1 0.906 / 0.938 / 1.0 on gemma2 / gemma3_text / olmo2. (The
# bundled trained model's held-out perplexity does not move: docs/performance.md.) Bounds for
# int8 there: (rel-L2, top-1) for the tracking kinds and for the sensitive ones.
ACTS7_INT8_BOUNDS = {"tracking": (0.045, 0.92), "sensitive": (0.075, 0.875)}


@pytest.mark.parametrize("kind,quant,max_rel,min_top1",
                         [(k, *b) for k in TRACKING_KINDS for b in QUANT_BOUNDS] +
                         [(k, *INT8_SENSITIVE_BOUND) for k in INT8_ONLY_KINDS])
def test_quantized_model_tracks_float32(kind, quant, max_rel, min_top1, checkpoint, llmos):
    """Relative L2 error of the logits and top-1 agreement over 64 positions, on a
    checkpoint with transformers' default init scale (random weights with a large scale
    are chaotic and amplify any rounding)."""
    if quant == "int8" and int8_acts7_active():
        max_rel, min_top1 = ACTS7_INT8_BOUNDS["sensitive" if kind in INT8_ONLY_KINDS else "tracking"]
    path = checkpoint(kind, weight_scale=0.1)
    ids = np.random.default_rng(0).integers(3, 380, 64).tolist()
    ref = llmos.load(path, threads=1).logits(ids)
    out = llmos.load(path, threads=1, quant=quant).logits(ids)
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert rel < max_rel
    assert (out.argmax(-1) == ref.argmax(-1)).mean() >= min_top1


def test_quantized_generation_is_deterministic_and_batch_invariant(checkpoint, llmos):
    m = llmos.load(checkpoint("llama", weight_scale=0.1), threads=2, quant="int4")
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20]]
    alone = [m.generate(p, max_new_tokens=12, eos_token_id=[]).token_ids for p in prompts]
    assert [g.token_ids for g in m.generate(prompts, max_new_tokens=12, eos_token_id=[])] == alone


@pytest.mark.parametrize("quant", ["int8", "int4-g64", "int4-asym", "int4-h6"])
def test_saved_quantized_checkpoint_loads_without_requantizing(quant, checkpoint, llmos, tmp_path):
    src = checkpoint("qwen2", weight_scale=0.1)
    out = llmos.quantize(str(src), str(tmp_path / "q"), quant)
    m = llmos.load(out, threads=1)
    assert m.prequantized and m.quant.name == quant
    ids = list(range(5, 50))
    np.testing.assert_array_equal(m.logits(ids), llmos.load(src, threads=1, quant=quant).logits(ids))
    size = (tmp_path / "q" / "model.safetensors").stat().st_size
    assert size < 0.6 * (src / "model.safetensors").stat().st_size
    # the tied embedding / head is saved in the head format: qtype 4 (Q6) with -h6
    heads = [(qtype, group) for role, layer, qtype, group, *_ in m.backend.quantized_matrices() if role == "embed"]
    assert heads == [(parse_quant(quant).head_type, parse_quant(quant).group)]


@pytest.mark.parametrize("kind,tensor", [("qwen2", "model.embed_tokens.weight"), ("llama", "lm_head.weight")])
def test_int6_head_blocks_follow_the_documented_layout(kind, tensor, checkpoint, llmos):
    from safetensors.numpy import load_file

    src = checkpoint(kind, weight_scale=0.1)
    m = llmos.load(src, threads=1, quant="int4-h6")
    role = "embed" if "embed" in tensor else "lm_head"
    [(qtype, group, codes, scale)] = [(q, g, c, sc) for r, _, q, g, c, sc, _ in m.backend.quantized_matrices()
                                      if r == role]
    assert qtype == TYPES["int6"] and codes.shape[1] == src_cols(src, tensor) * 3 // 4
    w = load_file(str(src / "model.safetensors"))[tensor].astype(np.float32)
    np.testing.assert_array_equal(dequantize_q6(codes, scale, group), _core.quantize_dequantize(w, TYPES["int6"], group))
    assert nmse(dequantize_q6(codes, scale, group), w) < 6e-4


def src_cols(src, tensor):
    from safetensors import safe_open

    with safe_open(str(src / "model.safetensors"), "np") as f:
        return f.get_slice(tensor).get_shape()[1]


def test_quantize_refuses_a_non_empty_target_and_leaves_nothing_on_failure(checkpoint, llmos, tmp_path):
    target = tmp_path / "q"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInputError):
        llmos.quantize(str(checkpoint("llama")), str(target), "int8")
    assert (target / "keep.txt").read_text() == "mine"
    with pytest.raises(InvalidInputError):
        llmos.quantize(str(checkpoint("llama")), str(tmp_path / "other"), "int5")
    assert not (tmp_path / "other").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".llmos-quantize-")]


def test_quantized_checkpoint_with_broken_metadata_is_refused(checkpoint, llmos, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    out = llmos.quantize(str(checkpoint("llama")), str(tmp_path / "q"), "int8")
    f = tmp_path / "q" / "model.safetensors"
    tensors = load_file(str(f))
    with safe_open(str(f), "np") as h:
        meta = h.metadata()
    save_file(tensors, str(f), metadata={"llmos_format": "1", "llmos_quant": "int8", "llmos_quantized": "[[1,2"})
    with pytest.raises(llmos.errors.SafetensorsError, match="llmos_quantized"):
        llmos.load(out)
    del tensors["llmos.qkv.weight.0.scale"]
    save_file(tensors, str(f), metadata=meta)
    with pytest.raises(llmos.errors.TensorError, match="qkv.weight.0.scale"):
        llmos.load(out)


def test_registry_quantize_writes_a_new_entry_that_loads(checkpoint, llmos, tmp_path, monkeypatch):
    from llmos import registry

    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))
    src = checkpoint("llama", weight_scale=0.1)
    registry.import_model(str(src), name="tiny")
    entry = registry.quantize("tiny", to="int4", group=64)
    m = llmos.load(entry.ref)
    assert m.prequantized and m.quant.name == "int4-g64"
    ids = [5, 6, 7, 8, 9]
    np.testing.assert_array_equal(m.logits(ids), llmos.load(src, quant="int4-g64").logits(ids))
    assert registry.verify("tiny").ok and registry.verify(entry.ref).ok
