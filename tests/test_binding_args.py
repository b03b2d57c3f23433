"""Every numpy argument of the bindings is checked for size, shape and dtype: a bad one is an
InvalidInputError naming the argument, never a crash, a silent truncation or a read past the
end of an array."""

from contextlib import contextmanager

import numpy as np
import pytest

from llmos import _core
from llmos.errors import InvalidInputError

Q8, Q4 = _core.QuantType.Q8, _core.QuantType.Q4


@contextmanager
def raises_on(field):
    """pytest.raises for an InvalidInputError whose field is `field`."""
    with pytest.raises(InvalidInputError) as e:
        yield e
    assert e.value.field == field, (e.value.field, str(e.value))


def _sampler(vocab=64):
    return _core.Sampler(_core.DecodeOptions(), [1, 2], vocab)


@pytest.mark.parametrize("n", [32, 65, 1000])
def test_sampler_refuses_logits_of_another_length(n):
    with raises_on("logits") as e:
        _sampler(64).next(np.zeros(n, np.float32))
    assert "64" in str(e.value)


def test_sampler_refuses_2d_logits():
    with raises_on("logits"):
        _sampler(64).next(np.zeros((1, 64), np.float32))


def test_sampler_takes_logits_of_its_vocab_size():
    logits = np.zeros(64, np.float32)
    logits[17] = 5
    s = _sampler(64)
    assert s.vocab_size == 64
    assert s.next(logits)[0] == 17
    assert s.next(logits.astype(np.float64))[0] == 17  # converted, not refused


def test_sampler_refuses_a_bad_vocab_size():
    with raises_on("vocab_size"):
        _core.Sampler(_core.DecodeOptions(), [], 0)


def test_process_logits_refuses_2d_logits():
    with raises_on("logits"):
        _core.process_logits(_core.DecodeOptions(), [1], 1, np.zeros((2, 32), np.float32))


@pytest.mark.parametrize("group", [0, -32, 48])
def test_quantize_dequantize_refuses_a_bad_group(group):
    with raises_on("group"):
        _core.quantize_dequantize(np.zeros((4, 128), np.float32), Q8, group)


@pytest.mark.parametrize("quant", [None, 1, "Q8"])
def test_quantize_dequantize_takes_only_a_quant_type(quant):
    with pytest.raises(TypeError):
        _core.quantize_dequantize(np.zeros((4, 128), np.float32), quant, 32)


def test_quant_type_has_no_unknown_values():
    with pytest.raises(ValueError):
        _core.QuantType(5)
    assert _core.QuantType(1) is Q8  # the numbers saved in llmos.quantize's metadata


def test_quantize_dequantize_refuses_a_bad_shape():
    with raises_on("w"):
        _core.quantize_dequantize(np.zeros((4, 96), np.float32), Q8, 32)
    with raises_on("w"):
        _core.quantize_dequantize(np.zeros(128, np.float32), Q8, 32)


def test_kernel_qmatmul_checks_its_arguments():
    x, w = np.zeros((2, 128), np.float32), np.zeros((8, 128), np.float32)
    with raises_on("group"):
        _core.kernel_qmatmul("scalar", x, w, Q4, 0)
    with raises_on("w"):
        _core.kernel_qmatmul("scalar", x, np.zeros((8, 64), np.float32), Q4, 32)
    with raises_on("x"):
        _core.kernel_qmatmul("scalar", np.zeros(128, np.float32), w, Q4, 32)


def test_kernel_matmul_checks_the_weight_dtype():
    x = np.zeros((2, 16), np.float32)
    with raises_on("w"):  # float32 weights given as float64
        _core.kernel_matmul("scalar", x, np.zeros((4, 16), np.float64), "float32")
    with raises_on("w"):  # bfloat16 bits must be 2 bytes
        _core.kernel_matmul("scalar", x, np.zeros((4, 16), np.int32), "bfloat16")
    with raises_on("w"):  # not C-contiguous
        _core.kernel_matmul("scalar", x, np.zeros((16, 4), np.float32).T, "float32")
    with raises_on("w"):
        _core.kernel_matmul("scalar", x, np.zeros((4, 8), np.float32), "float32")


def test_kernel_activate_checks_its_arguments():
    x = np.zeros(8, np.float32)
    with raises_on("up"):
        _core.kernel_activate("scalar", 0, x, np.zeros(7, np.float32))
    with raises_on("x"):
        _core.kernel_activate("scalar", 0, np.zeros((2, 4), np.float32))
    with raises_on("act"):
        _core.kernel_activate("scalar", 4, x)


def test_kernel_attention_refuses_a_negative_window():
    q = np.zeros((1, 8), np.float32)
    with raises_on("window"):
        _core.kernel_attention("scalar", q, q, q, 0, 0, -1, 1.0)


def test_memory_bandwidth_refuses_zero_threads():
    with raises_on("threads"):
        _core.memory_bandwidth(0)


def test_model_refuses_zero_threads():
    with raises_on("n_threads"):
        _core.Model(_core.Architecture(), [], "float32", 0)
