"""The CUDA kernels' algorithms, modelled in numpy step by step as the kernels run them, checked
against the CPU path on the CPU, so a flaw in an algorithm shows without a GPU: the unpacking of
the quantized formats by 16-byte units (gemv_quant.cu) against the C++ dequantization, the
threshold search of the device sampler (sampling.cu) against the CPU warpers, and the split-K
merge of decode attention (attention_decode.cu) against the CPU attention kernel. The kernels
themselves are tested on a GPU by tests/test_cuda_kernels.py."""

import numpy as np
import pytest
from safetensors.numpy import load_file

from llmos import _core
from test_cuda_kernels import (ATTENTION_REL, SAMPLE_PROB_MAX_ABS, WARPS, _cpu_decode_attention, _cpu_warped_probs,
                               _decode_attention_reference, rel_l2)

pytestmark = pytest.mark.cuda

Q = _core.QuantType
ZERO = {Q.Q8: 128, Q.Q4: 8, Q.Q6: 32, Q.Q4Asym: 0}


def _unit_unpack_model(t, group, codes, scale_bits, min_bits, cols):
    """gemv_quant.cu's dequantization: Q8 16 codes a unit; Q4 / Q4_ASYM / Q6 half a 64-value chunk
    a unit, low nibbles -> values 16h.., high nibbles -> 32 + 16h.., Q6's high bits from the
    chunk's last 16 bytes (bits 2h and 2h + 4 of byte i)."""
    rows = codes.shape[0]
    d = scale_bits.view(np.float16).astype(np.float64)
    m = min_bits.view(np.float16).astype(np.float64) if min_bits is not None else None
    w = np.zeros((rows, cols))

    def put(c, u):
        g = c // group
        val = d[:, g:g + 1] * (u.astype(np.float64) - ZERO[t])
        w[:, c:c + 16] = val + (m[:, g:g + 1] if t == Q.Q4Asym else 0.0)

    if t == Q.Q8:
        for c in range(0, cols, 16):
            put(c, codes[:, c:c + 16])
        return w
    chunk_bytes = 48 if t == Q.Q6 else 32
    for unit in range(cols // 32):
        chunk, h = unit >> 1, unit & 1
        base = chunk * chunk_bytes
        b = codes[:, base + 16 * h: base + 16 * h + 16]
        lo, hi = b & 15, b >> 4
        if t == Q.Q6:
            hb = codes[:, base + 32: base + 48]
            lo = lo | (((hb >> (2 * h)) & 3) << 4)
            hi = hi | (((hb >> (2 * h + 4)) & 3) << 4)
        put(chunk * 64 + 16 * h, lo)
        put(chunk * 64 + 32 + 16 * h, hi)
    return w


SOURCES = {"o.weight": "model.layers.{}.self_attn.o_proj.weight", "down.weight": "model.layers.{}.mlp.down_proj.weight",
           "lm_head": "lm_head.weight", "embed": "model.embed_tokens.weight"}


@pytest.mark.parametrize("quant", ["int8", "int4-h6", "int4-asym", "int4-g64", "int8-g128"])
def test_unit_unpack_matches_the_cpu_dequantization(checkpoint, llmos, quant):
    folder = checkpoint("llama")
    tensors = load_file(str(folder / "model.safetensors"))
    model = llmos.load(str(folder), quant=quant, threads=1)
    seen = set()
    for role, layer, t, group, codes, scale, mins in model.backend.core.quantized_matrices():
        name = SOURCES.get(role, "").format(layer)
        if name not in tensors and role == "lm_head":
            name = SOURCES["embed"]  # tied
        if name not in tensors:
            continue
        src = tensors[name].astype(np.float32)
        got = _unit_unpack_model(t, group, codes, scale, mins, src.shape[1])
        want = _core.quantize_dequantize(src, t, group).astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max(), err_msg=f"{role} {layer}")
        seen.add(t)
    assert seen, "no quantized matrix was compared"
    if quant == "int4-h6":
        assert {Q.Q4, Q.Q6} <= seen


def _order_key(s):
    u = np.asarray(s, np.float32).view(np.uint32).astype(np.uint64)
    return np.where(u & 0x80000000, ~u & 0xFFFFFFFF, u | 0x80000000)


def _device_sampler_model(logits, temperature, top_k, top_p, min_p):
    """sampling.cu's thresholds, bit by bit as the kernel builds them, in float32."""
    s = (logits.astype(np.float32) / np.float32(temperature)).astype(np.float32)
    key = _order_key(s)
    e = np.exp((s - s.max()).astype(np.float32)).astype(np.float32)
    tk = 0
    if 0 < top_k < s.size:
        for bit in range(31, -1, -1):
            cand = tk | (1 << bit)
            if int((key >= cand).sum()) >= top_k:
                tk = cand
    keep = key >= tk
    if top_p < 1.0:
        target = np.float32(top_p) * np.float32(e[keep].sum(dtype=np.float32))
        drop = 0
        for bit in range(31, -1, -1):
            cand = drop | (1 << bit)
            if e[(key > cand) & keep].sum(dtype=np.float32) >= target:
                drop = cand
        keep &= key > drop
    if min_p > 0:
        keep &= e >= np.float32(min_p)
    w = np.where(keep, e, 0).astype(np.float64)
    return w / w.sum()


@pytest.mark.parametrize("temperature,top_k,top_p,min_p", WARPS + [(1.0, 1, 1.0, 0.0), (1.0, 0, 0.01, 0.0)])
def test_device_sampler_algorithm_matches_the_cpu_warpers(temperature, top_k, top_p, min_p):
    rng = np.random.default_rng(5)
    for _ in range(5):
        logits = (rng.standard_normal(5000) * 2).astype(np.float32)
        logits[rng.integers(0, 5000, 10)] = -np.inf  # banned tokens stay out
        got = _device_sampler_model(logits, temperature, top_k, top_p, min_p)
        want = _cpu_warped_probs(logits, temperature, top_k, top_p, min_p)
        assert np.array_equal(got > 0, want > 0)
        assert np.abs(got - want).max() < SAMPLE_PROB_MAX_ABS


def _split_k_model(q, k, v, window, scale, splits):
    """attention_decode.cu for one head: per split (m, l, acc) by the online softmax, then the merge."""
    len_ = k.shape[0]
    lo = len_ - window if 0 < window < len_ else 0
    chunk = -(-len_ // splits)
    parts = []
    for sp in range(splits):
        m, l, acc = -np.inf, 0.0, np.zeros(q.shape[0])
        for j in range(max(sp * chunk, lo), min(len_, sp * chunk + chunk)):
            s = float(q @ k[j]) * scale
            m_new = max(m, s)
            corr, p = np.exp(m - m_new), np.exp(s - m_new)
            l, acc, m = l * corr + p, acc * corr + p * v[j], m_new
        parts.append((m, l, acc))
    M = max(m for m, _, _ in parts)
    w = [0.0 if m == -np.inf else np.exp(m - M) for m, _, _ in parts]
    return sum(wi * a for wi, (_, _, a) in zip(w, parts)) / sum(wi * l for wi, (_, l, _) in zip(w, parts))


def test_attention_reference_matches_the_cpu_kernel():
    """The float64 reference above means what the CPU kernel computes (GQA, window, softcap)."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((6, 48)).astype(np.float32)
    k, v = (rng.standard_normal((2, 90, 48)).astype(np.float32) for _ in range(2))
    for window, softcap in ((0, 0.0), (17, 0.0), (0, 5.0), (1, 0.0)):
        assert rel_l2(_cpu_decode_attention(q, k, v, window, 0.3, softcap),
                      _decode_attention_reference(q, k, v, window, 0.3, softcap)) < ATTENTION_REL


@pytest.mark.parametrize("len_,splits,window", [(1, 1, 0), (50, 3, 0), (50, 4, 10), (300, 7, 1), (64, 64, 0)])
def test_split_k_merge_matches_the_cpu_attention(len_, splits, window):
    rng = np.random.default_rng(len_ + splits)
    D = 32
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((D,), (len_, D), (len_, D)))
    got = _split_k_model(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), window, 0.2, splits)
    want = _core.kernel_attention("scalar", q[None], k, v, 0, len_ - 1, window, 0.2)[0]
    assert rel_l2(got, want) < ATTENTION_REL
