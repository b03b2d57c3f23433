"""A mixture of experts' batched decode (Model::moe_decode: the routed experts' products of every
decode token as one group of row-kernel jobs over the pool): each sequence of a batch decodes
bitwise as it does alone, whatever the other sequences routed to, for each MoE family and format.
The serving engine batches unrelated requests and relies on this."""

import numpy as np
import pytest

KINDS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss"]


@pytest.mark.parametrize("quant", ["int8", "int4"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_sequence_decodes_in_a_batch_as_it_does_alone(checkpoint, llmos, kind, quant):
    m = llmos.load(str(checkpoint(kind)), threads=2, quant=quant, device="cpu")
    prompts = [[5, 17, 99], [7, 8, 9, 10], [250, 3]]  # short: every step runs the decode kernels
    kw = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, logprobs=True)
    alone = [m.generate(p, **kw) for p in prompts]
    together = m.generate(prompts, **kw)
    for i, (a, b) in enumerate(zip(alone, together)):
        assert b.token_ids == a.token_ids, f"prompt {i}"
        assert np.array_equal(np.asarray(b.logprobs, np.float32), np.asarray(a.logprobs, np.float32)), f"prompt {i}"
