"""Hostile arguments to every _core entry that takes arrays or sizes: wrong dtype, wrong ndim,
empty, non-contiguous, NaN/Inf, negative and huge integers. Each call either returns a result of
the documented shape or raises an llmos error (InvalidInputError, a ValueError) naming the
argument; a non-numeric array that pybind11 cannot convert is its TypeError. Never a crash, an
unbounded allocation or a read past an array (tests that run under .ci/sanitize's ASan build
catch the reads that do not crash).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from llmos import _core
from llmos.errors import InvalidInputError, LlmosError

Q8, Q4 = _core.QuantType.Q8, _core.QuantType.Q4
ISAS = ["scalar", _core.cpu_isa()]
BIG_INTS = [-(2**63), -(2**31) - 1, -1, 0, 2**25, 2**31, 2**40, 2**63 - 1]

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.uint16, np.uint8, np.bool_]


@st.composite
def hostile_arrays(draw, max_ndim=3, max_side=6):
    """Any small array: every numeric dtype, 0-3 dimensions (sides 0 included), NaN/Inf in the
    floats, and half of them not C-contiguous (a transposed or strided view)."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=max_ndim, min_side=0, max_side=max_side))
    a = draw(hnp.arrays(dtype, shape, elements=None if np.dtype(dtype).kind == "f" else st.integers(0, 1)
                        if dtype is np.bool_ else None))
    view = draw(st.sampled_from(["c", "transpose", "stride"]))
    if view == "transpose" and a.ndim >= 2:
        a = a.T
    elif view == "stride" and a.ndim >= 1:
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    return a


def settles(call, *args):
    """Run call(*args): a result, or an llmos error / pybind's TypeError. Anything else fails."""
    try:
        return call(*args)
    except (InvalidInputError, TypeError):
        return None
    except LlmosError as e:  # another llmos error is fine too, but must name what is wrong
        assert str(e), e
        return None


@FUZZ
@given(isa=st.sampled_from(ISAS), x=hostile_arrays(), w=hostile_arrays(),
       wdtype=st.sampled_from(["float32", "bfloat16", "float16"]), prefill=st.booleans())
def test_fuzz_kernel_matmul(isa, x, w, wdtype, prefill):
    y = settles(_core.kernel_matmul, isa, x, w, wdtype, prefill)
    if y is not None:
        assert y.shape == (x.shape[0], w.shape[0])


@FUZZ
@given(isa=st.sampled_from(ISAS), x=hostile_arrays(max_side=3), w=hostile_arrays(max_side=3),
       k=st.sampled_from([0, 64, 128]), group=st.sampled_from([0, 32, 64, -32, 2**40]),
       quant=st.sampled_from([Q8, Q4]), prefill=st.booleans())
def test_fuzz_kernel_qmatmul(isa, x, w, k, group, quant, prefill):
    # Shapes with a usable k half of the time, so the call reaches the kernel too.
    if x.ndim == 2 and w.ndim == 2:
        x = np.resize(x, (x.shape[0], k))
        w = np.resize(w, (w.shape[0], k))
    y = settles(_core.kernel_qmatmul, isa, x, w, quant, group, prefill)
    if y is not None:
        assert y.shape == (x.shape[0], w.shape[0])


@FUZZ
@given(isa=st.sampled_from(ISAS), nq=st.integers(0, 17), length=st.integers(0, 6), d=st.integers(0, 9),
       start=st.sampled_from([0, 1, -1, 2**62, 2**63 - 1, -(2**63)]), shift=st.integers(-2, 2),
       window=st.sampled_from([0, 1, 3, -1, 2**63 - 1]), dtype=st.sampled_from(DTYPES[:3]),
       scale=st.sampled_from([1.0, 0.0, float("nan"), float("inf")]))
def test_fuzz_kernel_attention(isa, nq, length, d, start, shift, window, dtype, scale):
    q, kv = np.ones((nq, d), dtype), np.ones((length, d), dtype)
    # p0 consistent with start (the keys end at the last query) unless shift says otherwise.
    try:
        p0 = start + length - nq + shift
    except OverflowError:
        p0 = start
    out = settles(_core.kernel_attention, isa, q, kv, kv, start, p0, window, scale)
    if out is not None:
        assert out.shape == (nq, d)


@FUZZ
@given(isa=st.sampled_from(ISAS), act=st.sampled_from([-2, -1, 0, 1, 2, 3, 4, 2**40]), x=hostile_arrays(),
       up=st.none() | hostile_arrays())
def test_fuzz_kernel_activate(isa, act, x, up):
    out = settles(_core.kernel_activate, isa, act, x, up)
    if out is not None:
        assert out.shape == (x.size,)


@FUZZ
@given(w=hostile_arrays(max_side=3), k=st.sampled_from([0, 64, 96]), quant=st.sampled_from([Q8, Q4]),
       group=st.sampled_from([32, 64, 0, -32, 2**40]))
def test_fuzz_quantize_dequantize(w, k, quant, group):
    if w.ndim == 2:
        w = np.resize(w, (w.shape[0], k))
    out = settles(_core.quantize_dequantize, w, quant, group)
    if out is not None:
        assert out.shape == w.shape


@FUZZ
@given(logits=hostile_arrays(max_ndim=2, max_side=40), sequence=st.lists(st.integers(-3, 40), max_size=6),
       prompt_len=st.sampled_from([0, 1, -1, 6, 2**40]), do_sample=st.booleans())
def test_fuzz_process_logits(logits, sequence, prompt_len, do_sample):
    o = _core.DecodeOptions()
    o.do_sample = do_sample
    out = settles(_core.process_logits, o, sequence, prompt_len, logits)
    if out is not None:
        assert out.shape == (logits.size,)


@FUZZ
@given(logits=hostile_arrays(max_ndim=2, max_side=40), vocab=st.integers(1, 40), do_sample=st.booleans())
def test_fuzz_sampler_next(logits, vocab, do_sample):
    o = _core.DecodeOptions()
    o.do_sample = do_sample
    o.logprobs = True
    o.top_logprobs = 3
    s = _core.Sampler(o, [0], vocab)
    r = settles(s.next, logits)
    if r is not None:
        assert 0 <= r[0] < vocab


@pytest.mark.parametrize("vocab", BIG_INTS)
def test_sampler_refuses_a_vocab_size_out_of_range(vocab):
    """The history keeps a byte per vocabulary entry: a vocabulary far beyond any model's (2**24)
    is refused before it is allocated, not a MemoryError or gigabytes of zeros."""
    with pytest.raises(InvalidInputError) as e:
        _core.Sampler(_core.DecodeOptions(), [], vocab)
    assert e.value.field == "vocab_size"


@pytest.mark.parametrize("n", BIG_INTS + [1025])
def test_thread_counts_out_of_range_are_refused_by_the_core(n):
    """The core's own bound (ThreadPool::kMaxThreads, 1024) for callers that skip llmos.load."""
    with pytest.raises(InvalidInputError) as e:
        _core.memory_bandwidth(n, 1, 1)
    assert e.value.field == "threads"
    with pytest.raises(InvalidInputError) as e:
        _core.Model(_core.Architecture(), [], "float32", n)
    assert e.value.field == "n_threads"


@pytest.mark.parametrize("mbytes,reps", [(0, 1), (-1, 1), (2**40, 1), (1, 0), (1, 2**40), (2**63 - 1, 1)])
def test_memory_bandwidth_refuses_sizes_out_of_range(mbytes, reps):
    with pytest.raises(InvalidInputError):
        _core.memory_bandwidth(1, mbytes, reps)


@pytest.fixture(scope="module")
def core_model(checkpoint):
    import llmos
    return llmos.load(checkpoint("llama"), threads=1).backend.core


@FUZZ
@given(ids=hostile_arrays(max_ndim=2, max_side=5) | st.lists(st.sampled_from(BIG_INTS + [5]), max_size=4)
       .map(lambda v: np.array(v, dtype=object) if v else np.zeros(0, np.int64)))
def test_fuzz_model_logits(core_model, ids):
    out = settles(core_model.logits, ids)
    if out is not None:
        assert out.shape[0] == np.asarray(ids).size and np.isfinite(out).all()


@pytest.mark.parametrize("shape", [(0, 64), (4, 0)])
def test_empty_matrices_are_refused_by_the_quantizing_entries(shape):
    """An empty matrix has no quantization groups; it used to reach memcpy/memset with a null
    buffer (undefined behaviour, reported by UBSan)."""
    with pytest.raises(InvalidInputError) as e:
        _core.quantize_dequantize(np.zeros(shape, np.float32), Q8, 32)
    assert e.value.field == "w"
    with pytest.raises(InvalidInputError) as e:
        _core.kernel_qmatmul("scalar", np.zeros((1, shape[1]), np.float32), np.zeros(shape, np.float32), Q8, 32)
    assert e.value.field == "w"


@pytest.mark.parametrize("start,p0", [(2**63 - 9, 2**63 - 1), (-5, 0), (0, 2**62)])
def test_attention_positions_out_of_range_are_refused(start, p0):
    """Positions are checked before the shape arithmetic that used them overflowed int64."""
    q = np.ones((1, 8), np.float32)
    with pytest.raises(InvalidInputError) as e:
        _core.kernel_attention("scalar", q, np.ones((9, 8), np.float32), np.ones((9, 8), np.float32), start, p0, 0, 1.0)
    assert e.value.field in ("start", "p0")
