"""The decode-row quantized matmul on a batch of tokens: each token's row of the result is
bitwise the one it gets alone (the serving engine batches independent sequences and relies
on a token's output not depending on what else is in the batch), and agrees with the scalar
reference (NMSE < 1e-11, as in test_quant.py: the same integer dot products, only the float
summation order differs)."""

import numpy as np
import pytest

from isa_levels import level_params
from llmos import _core

TYPES = {"int8": _core.QuantType.Q8, "int4": _core.QuantType.Q4, "int4-asym": _core.QuantType.Q4Asym,
         "int6": _core.QuantType.Q6}


def nmse(y, ref):
    ref = np.asarray(ref, np.float64)
    return float(((np.asarray(y, np.float64) - ref) ** 2).sum() / (ref**2).sum())


@pytest.mark.parametrize("isa", level_params())
@pytest.mark.parametrize("qname", list(TYPES))
def test_a_token_in_a_batch_gets_its_result_alone_bitwise(isa, qname):
    # 9 rows: two 4-row blocks and a 1-row tail; 33 tokens: groups of 4, of 2 and a lone one.
    rows, k, group = 9, 256, 64
    rng = np.random.default_rng(len(qname))
    w = rng.standard_normal((rows, k)).astype(np.float32)
    x = rng.standard_normal((33, k)).astype(np.float32)
    alone = np.concatenate([_core.kernel_qmatmul(isa, x[i:i + 1], w, TYPES[qname], group, prefill=False)
                            for i in range(len(x))])
    ref = _core.kernel_qmatmul("scalar", x, w, TYPES[qname], group, prefill=False)
    assert nmse(alone, ref) < 1e-11
    for n in list(range(1, 10)) + [33]:
        for start in (0, len(x) - n):  # the token's place in its group differs between the two
            y = _core.kernel_qmatmul(isa, x[start:start + n], w, TYPES[qname], group, prefill=False)
            assert np.array_equal(y, alone[start:start + n]), f"n={n} start={start}"
