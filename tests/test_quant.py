"""Quantized weights: formats, kernels under every ISA against the scalar reference, and
whole models against float32.

Metrics: NMSE = sum((y - ref)^2) / sum(ref^2). The fast kernels do the same integer dot
products as the scalar reference and differ only in float summation order (NMSE ~1e-13);
against float32 math on the dequantized weights the activation rounding to int8 adds
~1e-5. The AMX tile path (bf16 activations and dequantized weights, float32 accumulation)
is compared with float64 math on the dequantized weights instead: ~5e-6.
"""

import numpy as np
import pytest

from llmos import _core
from llmos.errors import InvalidInputError
from llmos.quant import parse_quant

ALL_ISAS = ("scalar", "avx2", "avx512", "amx")
ISAS = list(ALL_ISAS[: ALL_ISAS.index(_core.cpu_best_isa()) + 1])
TYPES = {"int8": 1, "int4": 2, "int4-asym": 3}


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
            elif qname == "int4":  # codes -8..7 with the extreme at -8: the other side clamps at 7
                step, bound = amax / 8, 1.0
            else:
                step, bound = (blk.max() - blk.min()) / 15, 0.5
            err = np.abs(wd[r, g * group:(g + 1) * group] - blk).max()
            # + float16 rounding of the scale (and min) the codes were computed against
            assert err <= step * bound * 1.01 + 2e-3 * amax


# The later shapes cover AMX's cases: 1 or 2 row tiles of 16 with a row-kernel tail, 1 or 2
# token tiles with a partial one, and chunks of rows (k = 2048).
SHAPES = [(n, rows, k, g) for (n, rows, k) in [(1, 1, 64), (1, 7, 128), (3, 9, 256), (5, 4, 384), (9, 13, 128),
                                               (17, 35, 384), (40, 48, 256), (33, 16, 2048)]
          for g in (32, 64, 128) if k % g == 0]


@pytest.mark.parametrize("isa", ISAS)
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
    # The prefill path: AMX takes whole 16-row slices on bf16 tiles (the row kernel the rest);
    # AVX2 dequantizes to float32 for the float GEMM (float math on the dequantized weights).
    out = _core.kernel_qmatmul(isa, x, w, TYPES[qname], group, prefill=True)
    tiled = rows // 16 * 16 if isa == "amx" else 0
    if tiled:
        assert nmse(out[:, :tiled], exact[:, :tiled]) < 2e-5
    if isa == "avx2":
        assert nmse(out, exact) < 1e-10
    elif tiled < rows:
        assert nmse(out[:, tiled:], ref[:, tiled:]) < 1e-11
    # and the reference itself agrees with float math on the dequantized weights
    assert nmse(ref, exact) < 1e-4


@pytest.mark.parametrize("bad", ["int3", "int4-g48", "int8-g16", "fp8", "int4-asym-g7"])
def test_bad_quant_names(bad):
    with pytest.raises(InvalidInputError):
        parse_quant(bad)


def test_quant_names():
    assert parse_quant("int4-g64").group == 64
    assert parse_quant("int8").name == "int8"
    assert parse_quant(None) is None


@pytest.mark.parametrize("quant,max_rel,min_top1", [("int8", 0.03, 0.95), ("int4", 0.15, 0.7), ("int4-g64", 0.2, 0.7),
                                                    ("int4-asym", 0.15, 0.7)])
@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen3"])
def test_quantized_model_tracks_float32(kind, quant, max_rel, min_top1, checkpoint, llmos):
    """Relative L2 error of the logits and top-1 agreement over 64 positions, on a
    checkpoint with transformers' default init scale (random weights with a large scale
    are chaotic and amplify any rounding)."""
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


@pytest.mark.parametrize("quant", ["int8", "int4-g64", "int4-asym"])
def test_saved_quantized_checkpoint_loads_without_requantizing(quant, checkpoint, llmos, tmp_path):
    src = checkpoint("qwen2", weight_scale=0.1)
    out = llmos.quantize(str(src), str(tmp_path / "q"), quant)
    m = llmos.load(out, threads=1)
    assert m.prequantized and m.quant.name == quant
    ids = list(range(5, 50))
    np.testing.assert_array_equal(m.logits(ids), llmos.load(src, threads=1, quant=quant).logits(ids))
    size = (tmp_path / "q" / "model.safetensors").stat().st_size
    assert size < 0.6 * (src / "model.safetensors").stat().st_size


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
