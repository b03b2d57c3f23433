"""The CUDA kernels (cpp/cuda/) against the CPU path and numpy references, one named threshold
per kernel. Each GPU test copies numpy arrays to the device through a `_core.cuda_kernel_*`
binding, runs one kernel and copies the result back.

Without a CUDA build or a GPU every GPU test skips, loudly, with the reason (`tools/gpu_check.sh`
runs them on a GPU machine, with LLMOS_REQUIRE_GPU=1 so that nothing skips there). This file
needs only numpy and the core (gpu_check.sh runs it without the suite's conftest);
tests/test_cuda_algorithms.py checks numpy models of the kernels' algorithms on the CPU.
"""

import os

import numpy as np
import pytest

from llmos import _core
from llmos.errors import InvalidInputError

pytestmark = pytest.mark.cuda

# ---- thresholds (relative L2 error unless said otherwise) -----------------------------------
# float32 sums in another order than the float64 reference: ~sqrt(k) ulps.
GEMV_QUANT_REL = 2e-5    # vs x @ dequantize(W)^T in float64 (the GPU keeps x in float32)
GEMV_HALF_REL = 2e-5     # vs x @ W^T in float64, W the same float16 / bfloat16 values
RMS_NORM_REL = 1e-5      # vs numpy float64
ROPE_MAX_ABS = 1e-5      # per value, inputs of magnitude ~1 (an FMA may round once less)
ACTIVATION_REL = 1e-5    # vs the CPU's scalar kernel (CUDA's expf / erff are within 2 ulps)
ATTENTION_REL = 2e-5     # vs float64 numpy; the CPU kernels' own float32 error reaches 5.5e-6 (20000 keys, D 256)
SAMPLE_PROB_MAX_ABS = 1e-5  # the drawn-from distribution vs softmax of the CPU warpers' output
SAMPLE_FREQ_SIGMAS = 5.0    # empirical token frequencies vs the distribution, in binomial sigmas


def _gpu_or_skip():
    """Skips, saying why, without a CUDA build or a GPU; tools/gpu_check.sh sets LLMOS_REQUIRE_GPU=1,
    where a skip would hide that nothing ran, so there it fails instead."""
    if not _core.cuda_built():
        why = f"no CUDA build/GPU: {_core.cuda_unavailable_reason(0)}"
    elif _core.cuda_device_count() == 0:
        why = f"no CUDA build/GPU: this build has CUDA but {_core.cuda_unavailable_reason(0)}"
    else:
        return
    if os.environ.get("LLMOS_REQUIRE_GPU") == "1":
        pytest.fail(f"LLMOS_REQUIRE_GPU=1 but {why}")
    pytest.skip(why)


def rel_l2(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


RNG = np.random.default_rng(1234)

QUANTS = [_core.QuantType.Q8, _core.QuantType.Q4, _core.QuantType.Q4Asym, _core.QuantType.Q6]


# ---- the device is reported without one ---------------------------------------------------

def test_device_queries_answer_without_a_gpu():
    """Everywhere: the count is a number, never an exception; a missing GPU has a reason."""
    n = _core.cuda_device_count()
    assert isinstance(n, int) and n >= 0
    assert isinstance(_core.cuda_built(), bool)
    if n == 0:
        assert _core.cuda_unavailable_reason(0)
    else:
        assert _core.cuda_unavailable_reason(0) == ""
        assert "no GPU 4096" in _core.cuda_unavailable_reason(4096)


def test_kernels_refuse_clearly_without_a_gpu():
    if _core.cuda_built() and _core.cuda_device_count() > 0:
        pytest.skip("a GPU is here: the refusal without one is not reachable")
    with pytest.raises(InvalidInputError) as e:
        _core.cuda_kernel_rms_norm(np.ones((1, 4), np.float32), np.ones(4, np.float32), 1e-5)
    assert e.value.field == "device"


# ---- GEMV --------------------------------------------------------------------------------

@pytest.mark.parametrize("quant", QUANTS, ids=lambda q: q.name)
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("m", [1, 3, 8, 16])
@pytest.mark.parametrize("k", [384, 4224])  # 6 and 66 chunks of 64: one and several units per thread (m = 1)
def test_gemv_quant(quant, group, m, k):
    _gpu_or_skip()
    rows = 203  # not a multiple of the 4 rows per block (m > 1) nor of the 4 or 8 rows of the one-token kernel
    w = RNG.standard_normal((rows, k)).astype(np.float32)
    x = RNG.standard_normal((m, k)).astype(np.float32)
    y = _core.cuda_kernel_gemv_quant(x, w, quant, group)
    ref = x.astype(np.float64) @ _core.quantize_dequantize(w, quant, group).astype(np.float64).T
    assert rel_l2(y, ref) < GEMV_QUANT_REL
    # and never worse than the CPU path, which also rounds x to int8
    cpu = _core.kernel_qmatmul(_core.cpu_isa(), x, w, quant, group, False)
    assert rel_l2(y, ref) <= rel_l2(cpu, ref) + GEMV_QUANT_REL


@pytest.mark.parametrize("w_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("k", [256, 250])  # 250: not a multiple of 8 -> the one-value-a-lane loop
@pytest.mark.parametrize("m", [1, 5, 16])
def test_gemv_half(w_dtype, k, m):
    _gpu_or_skip()
    rows = 131
    w32 = RNG.standard_normal((rows, k)).astype(np.float32)
    if w_dtype == "float16":
        bits = w32.astype(np.float16).view(np.uint16)
        wval = bits.view(np.float16).astype(np.float64)
    else:
        bits = (w32.view(np.uint32) >> 16).astype(np.uint16)  # truncated bfloat16: any bits are valid weights
        wval = (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    x = RNG.standard_normal((m, k)).astype(np.float32)
    y = _core.cuda_kernel_gemv_half(x, bits, w_dtype)
    assert rel_l2(y, x.astype(np.float64) @ wval.T) < GEMV_HALF_REL


# ---- norms, RoPE, activations -----------------------------------------------------------

@pytest.mark.parametrize("n", [1, 100, 3072, 5000])
def test_rms_norm(n):
    _gpu_or_skip()
    x = RNG.standard_normal((5, n)).astype(np.float32) * 3
    w = RNG.standard_normal(n).astype(np.float32)
    eps = 1e-5
    got = _core.cuda_kernel_rms_norm(x, w, eps)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 ** 2).mean(axis=1, keepdims=True) + eps) * w
    assert rel_l2(got, ref) < RMS_NORM_REL


@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 64), (128, 128), (80, 32)])
def test_rope(head_dim, rotary_dim):
    _gpu_or_skip()
    tokens, heads, half = 7, 5, rotary_dim // 2
    x = RNG.standard_normal((tokens, heads, head_dim)).astype(np.float32)
    pos = np.arange(100, 100 + tokens, dtype=np.float64)[:, None]
    inv_freq = 10000.0 ** (-np.arange(half) * 2.0 / rotary_dim)
    cos_t, sin_t = np.cos(pos * inv_freq).astype(np.float32), np.sin(pos * inv_freq).astype(np.float32)
    got = _core.cuda_kernel_rope(x, cos_t, sin_t)
    ref = x.astype(np.float64).copy()
    a, b = ref[..., :half].copy(), ref[..., half:rotary_dim].copy()
    c, s = cos_t[:, None, :].astype(np.float64), sin_t[:, None, :].astype(np.float64)
    ref[..., :half] = a * c - b * s
    ref[..., half:rotary_dim] = b * c + a * s
    assert np.abs(got - ref).max() < ROPE_MAX_ABS
    assert np.array_equal(got[..., rotary_dim:], x[..., rotary_dim:])  # the rest is untouched


@pytest.mark.parametrize("act", [0, 1, 2, 3], ids=["silu", "gelu_erf", "gelu_tanh", "relu"])
def test_activate_gated(act):
    _gpu_or_skip()
    gate = (RNG.standard_normal(10000) * 4).astype(np.float32)
    up = RNG.standard_normal(10000).astype(np.float32)
    got = _core.cuda_kernel_activate_gated(act, gate, up)
    assert rel_l2(got, _core.kernel_activate("scalar", act, gate, up)) < ACTIVATION_REL


# ---- decode attention ------------------------------------------------------------------

def _decode_attention_reference(q, k, v, window, scale, softcap):
    """float64: head h reads kv head h // (heads / kv_heads); the query at len - 1 sees keys j >= len - window."""
    heads, D = q.shape
    group = heads // k.shape[0]
    len_ = k.shape[1]
    lo = len_ - window if 0 < window < len_ else 0
    out = np.empty((heads, D))
    for h in range(heads):
        kk, vv = k[h // group, lo:].astype(np.float64), v[h // group, lo:].astype(np.float64)
        s = kk @ q[h].astype(np.float64) * scale
        if softcap > 0:
            s = softcap * np.tanh(s / softcap)
        p = np.exp(s - s.max())
        out[h] = p @ vv / p.sum()
    return out


def _cpu_decode_attention(q, k, v, window, scale, softcap):
    """The CPU's scalar kernel, head by head: the semantics the GPU must share."""
    heads, D = q.shape
    group = heads // k.shape[0]
    len_ = k.shape[1]
    out = np.empty_like(q)
    for h in range(heads):
        out[h] = _core.kernel_attention("scalar", q[h:h + 1], k[h // group], v[h // group], 0, len_ - 1, window,
                                        scale, softcap)[0]
    return out


@pytest.mark.parametrize("heads,kv_heads,D", [(8, 8, 64), (24, 8, 128), (4, 1, 256), (6, 2, 80)])
@pytest.mark.parametrize("len_", [1, 37, 256, 1000, 20000])
def test_attention_decode(heads, kv_heads, D, len_):
    _gpu_or_skip()
    q = RNG.standard_normal((heads, D)).astype(np.float32)
    k = RNG.standard_normal((kv_heads, len_, D)).astype(np.float32)
    v = RNG.standard_normal((kv_heads, len_, D)).astype(np.float32)
    scale = 1.0 / np.sqrt(D)
    got = _core.cuda_kernel_attention_decode(q, k, v, 0, scale, 0.0)
    assert rel_l2(got, _decode_attention_reference(q, k, v, 0, scale, 0.0)) < ATTENTION_REL


@pytest.mark.parametrize("window,softcap", [(100, 0.0), (0, 30.0), (1, 0.0)])
def test_attention_decode_window_and_softcap(window, softcap):
    _gpu_or_skip()
    heads, kv_heads, D, len_ = 8, 4, 64, 700
    q = (RNG.standard_normal((heads, D)) * 3).astype(np.float32)
    k = RNG.standard_normal((kv_heads, len_, D)).astype(np.float32)
    v = RNG.standard_normal((kv_heads, len_, D)).astype(np.float32)
    got = _core.cuda_kernel_attention_decode(q, k, v, window, 0.125, softcap)
    assert rel_l2(got, _decode_attention_reference(q, k, v, window, 0.125, softcap)) < ATTENTION_REL
    assert rel_l2(got, _cpu_decode_attention(q, k, v, window, 0.125, softcap)) < ATTENTION_REL


# ---- sampling ----------------------------------------------------------------------------

def _options(temperature, top_k, top_p, min_p):
    o = _core.DecodeOptions()
    o.do_sample, o.temperature, o.top_k, o.top_p, o.min_p = True, temperature, top_k, top_p, min_p
    return o


def _cpu_warped_probs(logits, temperature, top_k, top_p, min_p):
    s = _core.process_logits(_options(temperature, top_k, top_p, min_p), [0], 1, logits).astype(np.float64)
    e = np.where(np.isfinite(s), np.exp(s - s.max()), 0.0)
    return e / e.sum()


WARPS = [(1.0, 0, 1.0, 0.0), (0.7, 50, 1.0, 0.0), (1.3, 0, 0.9, 0.0), (1.0, 0, 1.0, 0.05), (0.8, 40, 0.95, 0.02)]


def test_sample_greedy_is_the_argmax():
    _gpu_or_skip()
    logits = RNG.standard_normal((9, 50000)).astype(np.float32)
    logits[3, 17] = logits[3, 4000] = 100.0  # a tie: the lowest id, as the CPU's argmax
    tokens, _ = _core.cuda_kernel_sample(logits, True)
    assert tokens.tolist() == np.argmax(logits, axis=1).tolist()


@pytest.mark.parametrize("temperature,top_k,top_p,min_p", WARPS)
def test_sample_distribution_matches_the_cpu_warpers(temperature, top_k, top_p, min_p):
    _gpu_or_skip()
    logits = (RNG.standard_normal((4, 32000)) * 2).astype(np.float32)
    _, probs = _core.cuda_kernel_sample(logits, False, temperature, top_k, top_p, min_p, seed=1)
    for r in range(logits.shape[0]):
        want = _cpu_warped_probs(logits[r], temperature, top_k, top_p, min_p)
        assert np.array_equal(probs[r] > 0, want > 0), f"row {r}: another kept set"
        assert np.abs(probs[r] - want).max() < SAMPLE_PROB_MAX_ABS


def test_sample_draws_follow_the_distribution_and_the_seed():
    _gpu_or_skip()
    rows, vocab = 20000, 64
    logits = np.tile((RNG.standard_normal(vocab) * 1.5).astype(np.float32), (rows, 1))
    tokens, probs = _core.cuda_kernel_sample(logits, False, 1.0, 20, 0.95, 0.0, seed=7, step=3)
    p = probs[0].astype(np.float64)
    assert np.all(probs[:, p == 0] == 0) and np.all(p[tokens] > 0), "a dropped token was drawn"
    freq = np.bincount(tokens, minlength=vocab) / rows
    sigma = np.sqrt(p * (1 - p) / rows) + 1e-12
    assert np.all(np.abs(freq - p) <= SAMPLE_FREQ_SIGMAS * sigma + 1.0 / rows)
    again, _ = _core.cuda_kernel_sample(logits, False, 1.0, 20, 0.95, 0.0, seed=7, step=3)
    assert np.array_equal(tokens, again), "the same seed and step draw the same tokens"
    other, _ = _core.cuda_kernel_sample(logits, False, 1.0, 20, 0.95, 0.0, seed=7, step=4)
    assert not np.array_equal(tokens, other), "the next step draws anew"
