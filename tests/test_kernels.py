"""Every fast kernel against the scalar reference, and the scalar reference against float64.

Metric: normalized mean squared error, NMSE = sum((y - ref)^2) / sum(ref^2). float32 dot
products of a few hundred terms summed in a different order differ by ~1e-7 relative, so
NMSE ~1e-14; the thresholds below leave room for that and nothing more.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from isa_levels import BEST, LEVELS, RUNNABLE, level_params
from llmos import _core
from llmos.errors import InvalidInputError

# The shared SIMD algorithms' 16-lane instantiation over a portable vector (vec_emu.h), the
# AVX-512 build's twin: every path of the AVX-512 kernels, runnable on any CPU.
EMULATED = ["emu16"]
NMSE_FAST_VS_SCALAR = 1e-11
NMSE_SCALAR_VS_F64 = 1e-11


def nmse(y, ref):
    ref = np.asarray(ref, np.float64)
    return float(((np.asarray(y, np.float64) - ref) ** 2).sum() / max((ref**2).sum(), 1e-30))


def weights(rows, k, dtype, rng):
    w = rng.standard_normal((rows, k)).astype(np.float32)
    if dtype == "float32":
        return w, w
    if dtype == "float16":
        h = w.astype(np.float16)
        return h.view(np.uint16), h.astype(np.float32)
    bits = w.view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    return rounded, (rounded.astype(np.uint32) << 16).view(np.float32)


SHAPES = [(1, 1, 1), (1, 7, 3), (2, 15, 5), (3, 16, 4), (4, 17, 9), (5, 31, 13), (9, 64, 8), (1, 100, 33), (7, 257, 6)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("n,k,rows", SHAPES)
def test_scalar_matmul_matches_float64(n, k, rows, dtype):
    rng = np.random.default_rng(n * 1000 + k * 10 + rows)
    x = rng.standard_normal((n, k)).astype(np.float32)
    w, w_f32 = weights(rows, k, dtype, rng)
    y = _core.kernel_matmul("scalar", x, w, dtype)
    assert y.shape == (n, rows)
    assert nmse(y, x.astype(np.float64) @ w_f32.astype(np.float64).T) < NMSE_SCALAR_VS_F64


@pytest.mark.parametrize("isa", level_params(scalar=False) + EMULATED)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("n,k,rows", SHAPES)
def test_fast_matmul_matches_scalar(isa, n, k, rows, dtype):
    rng = np.random.default_rng(n * 1000 + k * 10 + rows + 7)
    x = rng.standard_normal((n, k)).astype(np.float32)
    w, _ = weights(rows, k, dtype, rng)
    ref = _core.kernel_matmul("scalar", x, w, dtype)
    assert nmse(_core.kernel_matmul(isa, x, w, dtype), ref) < NMSE_FAST_VS_SCALAR


@pytest.mark.parametrize("isa", level_params(scalar=False) + EMULATED)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_row_kernel_gives_each_token_its_one_token_bits(isa, dtype):
    # Speculative decoding verifies 2..7 tokens in one forward on the row kernel and relies on
    # each token getting the bits a 1-token decode step gives it (greedy output identical to
    # plain decoding): how the kernel tiles the tokens must not change any token's sums.
    rng = np.random.default_rng(11)
    k, rows = 100, 13
    x = rng.standard_normal((9, k)).astype(np.float32)
    w, _ = weights(rows, k, dtype, rng)
    one = np.concatenate([_core.kernel_matmul(isa, x[t:t + 1], w, dtype) for t in range(9)])
    for n in range(2, 10):
        assert np.array_equal(_core.kernel_matmul(isa, x[:n], w, dtype), one[:n]), n


# The many-token kernel: token counts around its 14-token micro-kernel, row counts around
# its 32-row panels (one or two halves of 16, partial), k not a multiple of 16.
PREFILL_SHAPES = [(8, 64, 32), (14, 100, 16), (15, 33, 47), (29, 128, 70), (40, 17, 5), (1, 256, 96), (33, 96, 50)]


@pytest.mark.parametrize("isa", level_params() + EMULATED)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("n,k,rows", PREFILL_SHAPES)
def test_prefill_matmul_matches_scalar(isa, n, k, rows, dtype):
    rng = np.random.default_rng(n * 1000 + k * 10 + rows + 11)
    x = rng.standard_normal((n, k)).astype(np.float32)
    w, wf = weights(rows, k, dtype, rng)
    ref = _core.kernel_matmul("scalar", x, w, dtype)
    out = _core.kernel_matmul(isa, x, w, dtype, prefill=True)
    exact = x.astype(np.float64) @ wf.astype(np.float64).T
    # AMX runs whole 16-row slices of bf16 weights on tiles with the activations rounded to
    # bf16 (relative 2^-9 each: NMSE ~1e-6 against float64); the other rows stay float32.
    tiled = rows // 16 * 16 if isa == "amx" and dtype == "bfloat16" and k % 32 == 0 else 0
    if tiled:
        assert nmse(out[:, :tiled], exact[:, :tiled]) < 1e-5
    if tiled < rows:
        assert nmse(out[:, tiled:], ref[:, tiled:]) < NMSE_FAST_VS_SCALAR
    assert nmse(ref, exact) < NMSE_SCALAR_VS_F64


def attention_reference(q, k, v, start, p0, window, scale, softcap, sink=-np.inf):
    s = (q.astype(np.float64) @ k.astype(np.float64).T) * scale
    if softcap > 0:
        s = np.tanh(s / softcap) * softcap
    pos = p0 + np.arange(q.shape[0])[:, None]
    key = start + np.arange(k.shape[0])[None, :]
    seen = (key <= pos) & ((key >= pos - window + 1) if window > 0 else True)
    s = np.where(seen, s, -np.inf)
    mx = np.maximum(s.max(-1, keepdims=True), sink)
    p = np.exp(s - mx)
    return (p / (p.sum(-1, keepdims=True) + np.exp(sink - mx))) @ v.astype(np.float64)


# (queries, head dim, keys before the block, window, softcap): full and partial query
# blocks, key counts that are not a multiple of the 8-key step, head dims past 16 and not a
# multiple of 16, a sliding window that cuts the block, and Gemma 2's softcap.
ATTN_CASES = [(1, 64, 0, 0, 0.0), (16, 64, 0, 0, 0.0), (16, 64, 37, 0, 0.0), (5, 128, 100, 0, 0.0),
              (16, 80, 19, 0, 0.0), (3, 8, 0, 0, 0.0), (16, 64, 40, 24, 0.0), (9, 32, 3, 4, 0.0),
              (16, 256, 21, 0, 50.0)]


@pytest.mark.parametrize("isa", level_params() + EMULATED)
@pytest.mark.parametrize("nq,D,before,window,softcap", ATTN_CASES)
def test_attention_matches_float64(isa, nq, D, before, window, softcap):
    rng = np.random.default_rng(nq * 1000 + D + before)
    p0 = before + 7  # the block's first query
    start = max(0, p0 - window + 1) if window > 0 else 0
    length = p0 + nq - start
    q = rng.standard_normal((nq, D)).astype(np.float32)
    k = rng.standard_normal((length, D)).astype(np.float32)
    v = rng.standard_normal((length, D)).astype(np.float32)
    scale = 1 / np.sqrt(D) if softcap == 0 else 2.0
    ref = attention_reference(q, k, v, start, p0, window, scale, softcap)
    out = _core.kernel_attention(isa, q, k, v, start, p0, window, float(scale), softcap)
    assert nmse(out, ref) < 1e-11


@pytest.mark.parametrize("isa", level_params() + EMULATED)
@pytest.mark.parametrize("nq,before,window,sink", [(1, 0, 0, 0.5), (16, 37, 0, 2.0), (9, 3, 4, 3.0), (5, 100, 0, 12.0)])
def test_attention_sink_matches_float64(isa, nq, before, window, sink):
    # gpt-oss's sink: an extra logit in each query's denominator (12: it takes almost all the mass).
    rng = np.random.default_rng(nq + before)
    D, p0 = 64, before + 7
    start = max(0, p0 - window + 1) if window > 0 else 0
    q, k, v = (rng.standard_normal((n, D)).astype(np.float32) for n in (nq, p0 + nq - start, p0 + nq - start))
    ref = attention_reference(q, k, v, start, p0, window, 0.125, 0.0, sink)
    out = _core.kernel_attention(isa, q, k, v, start, p0, window, 0.125, 0.0, sink)
    assert nmse(out, ref) < 1e-11
    assert nmse(attention_reference(q, k, v, start, p0, window, 0.125, 0.0), ref) > 1e-4  # the sink matters


def test_attention_block_shape_is_checked():
    q = np.zeros((17, 8), np.float32)
    with pytest.raises(InvalidInputError, match="expected q"):
        _core.kernel_attention("scalar", q, q, q, 0, 0, 0, 1.0)


def test_unsupported_isa_is_refused():
    x = np.zeros((1, 4), np.float32)
    with pytest.raises(InvalidInputError, match="unknown ISA"):
        _core.kernel_matmul("sse9", x, x, "float32")
    other = "neon" if BEST in LEVELS else "avx2"  # a level of the other architecture
    with pytest.raises(InvalidInputError, match=f"does not support {other}"):
        _core.kernel_matmul(other, x, x, "float32")


_LOGITS_SCRIPT = """
import json, sys, numpy as np, llmos
m = llmos.load(sys.argv[1])
ids = list(range(3, 60))
print(json.dumps({"isa": m.isa, "logits": m.logits(ids)[::7].tolist()}))
"""


def _logits_under(isa, path):
    env = {**os.environ, "LLMOS_CPU_ISA": isa}
    out = subprocess.run([sys.executable, "-c", _LOGITS_SCRIPT, str(path)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_whole_model_agrees_under_every_isa(checkpoint):
    """LLMOS_CPU_ISA forces each kernel set in a fresh process; logits agree with the default."""
    path = checkpoint("llama_gqa")
    results = {isa: _logits_under(isa, path) for isa in RUNNABLE}
    ref = np.asarray(results["scalar"]["logits"])
    for isa, r in results.items():
        assert r["isa"] == isa
        assert np.abs(np.asarray(r["logits"]) - ref).max() < 1e-4, isa


def test_a_level_above_the_cpu_is_lowered_to_its_best(checkpoint):
    above = [level for level in LEVELS if level not in RUNNABLE]
    if not above or BEST not in LEVELS:
        pytest.skip(f"no x86 level above this CPU's best ({BEST}) to force")
    assert _logits_under(above[0], checkpoint("llama"))["isa"] == BEST


def test_bad_isa_name_is_a_clear_error(checkpoint):
    env = {**os.environ, "LLMOS_CPU_ISA": "sse9"}
    out = subprocess.run([sys.executable, "-c", _LOGITS_SCRIPT, str(checkpoint("llama"))], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "LLMOS_CPU_ISA" in out.stderr and "sse9" in out.stderr
    assert all(level in out.stderr for level in LEVELS), out.stderr[-500:]  # the names it accepts


# ---- activations and softmax ---------------------------------------------------------------
# The fast paths compute exp by a degree-7 polynomial and 2^n scaling: a few ulp from libm.
# Metric: max relative error, with an absolute floor for results near 0.

ACTS = {"silu": 0, "gelu_erf": 1, "gelu_tanh": 2, "relu": 3}


def _max_rel(y, ref, floor=1e-30):
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float((np.abs(y - ref) / np.maximum(np.abs(ref), floor)).max())


@pytest.mark.parametrize("isa", level_params() + EMULATED)
@pytest.mark.parametrize("act", list(ACTS))
def test_activations_match_the_scalar_reference(isa, act):
    rng = np.random.default_rng(ACTS[act])
    x = np.concatenate([rng.standard_normal(1000) * 4, np.linspace(-90, 90, 181), [0.0, -0.0, 1e-30, -1e-30],
                        rng.standard_normal(37) * 1e-4]).astype(np.float32)
    up = rng.standard_normal(x.size).astype(np.float32)
    ref = _core.kernel_activate("scalar", ACTS[act], x)
    out = _core.kernel_activate(isa, ACTS[act], x)
    # where the result is far from 0 the error is relative; near 0 (the activations' negative
    # tails) it is bounded absolutely by a few ulp of the input's scale
    assert np.all(np.abs(out - ref) <= 2e-6 * np.abs(ref) + 1e-12 * np.abs(x) + 1e-38)
    gated = _core.kernel_activate(isa, ACTS[act], x, up)
    assert np.all(np.abs(gated - ref * up) <= 2e-6 * np.abs(ref * up) + 1e-12 * np.abs(x * up) + 1e-38)


@pytest.mark.parametrize("isa", level_params() + EMULATED)
@pytest.mark.parametrize("n", [1, 7, 16, 33, 1000])
def test_softmax_matches_the_scalar_reference(isa, n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 10).astype(np.float32)
    x[0] = -np.inf if n > 1 else x[0]  # masked entries stay exactly 0
    ref = _core.kernel_activate("scalar", -1, x)
    out = _core.kernel_activate(isa, -1, x)
    assert abs(out.sum() - 1) < 1e-5
    assert _max_rel(out[ref > 1e-30], ref[ref > 1e-30]) < 2e-6
    assert np.all(out[ref == 0] == 0)


# ---- the 16-lane emulation against the AVX-512 build --------------------------------------


@pytest.mark.skipif("avx512" not in RUNNABLE, reason="needs a CPU with AVX-512")
def test_emu16_gives_the_avx512_bits():
    """vec_emu.h repeats vec_avx512.h's operations in the same order (fused multiply-adds, the
    same reduction tree, vscalefps as ldexp), so both instantiations of the shared algorithms
    give the same bits; where this holds, the emu16 tests above speak for the AVX-512 kernels."""
    rng = np.random.default_rng(5)
    for n, k, rows in SHAPES + PREFILL_SHAPES:
        x = rng.standard_normal((n, k)).astype(np.float32)
        for dtype in ("float32", "bfloat16", "float16"):
            w, _ = weights(rows, k, dtype, rng)
            for prefill in (False, True):
                a = _core.kernel_matmul("avx512", x, w, dtype, prefill=prefill)
                b = _core.kernel_matmul("emu16", x, w, dtype, prefill=prefill)
                assert np.array_equal(a, b), (n, k, rows, dtype, prefill)
    for nq, D, before, window, softcap in ATTN_CASES:
        p0 = before + 7
        start = max(0, p0 - window + 1) if window > 0 else 0
        q, k, v = (rng.standard_normal((m, D)).astype(np.float32) for m in (nq, p0 + nq - start, p0 + nq - start))
        args = (q, k, v, start, p0, window, 0.125, softcap)
        assert np.array_equal(_core.kernel_attention("avx512", *args), _core.kernel_attention("emu16", *args)), nq
    x = np.concatenate([rng.standard_normal(1000) * 4, np.linspace(-110, 90, 201)]).astype(np.float32)
    up = rng.standard_normal(x.size).astype(np.float32)
    for act in (-1, *ACTS.values()):
        for m in (1, 7, 16, 33, x.size):
            for u in ((None,) if act == -1 else (None, up[:m])):
                a = _core.kernel_activate("avx512", act, x[:m], u)
                assert np.array_equal(a, _core.kernel_activate("emu16", act, x[:m], u)), (act, m)
