"""Config variants beyond the named checkpoint kinds, against transformers: each switches on
a path of the generic decoder (activation, scaling, window, bias, rope type) that the kinds
in tests/checkpoints.py leave at its default."""

import numpy as np
import pytest
import torch

VARIANTS = [
    ("phi3", dict(sliding_window=16)),
    ("llama", dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})),
    ("gemma2", dict(attn_logit_softcapping=None, final_logit_softcapping=None, query_pre_attn_scalar=16)),
    ("gpt2", dict(activation_function="relu", scale_attn_weights=False, n_inner=96)),
    ("gpt2", dict(activation_function="gelu")),
    ("qwen3", dict(attention_bias=True)),
    ("llama", dict(attention_bias=True, mlp_bias=True, head_dim=32)),
    ("mistral_swa", dict(sliding_window=7)),
    ("gemma", dict(hidden_act="gelu")),
    ("qwen2", dict(tie_word_embeddings=False)),
    ("gemma3_text", dict(attn_logit_softcapping=20.0, final_logit_softcapping=10.0)),
    ("gemma3_text", dict(layer_types=["full_attention"] * 3)),  # no sliding layer: one rope
    ("smollm3", dict(no_rope_layers=[0, 0, 1])),
    ("olmo2", dict(num_key_value_heads=4, attention_bias=True)),
    ("granite", dict(tie_word_embeddings=True, logits_scaling=1.0)),
    ("mixtral", dict(num_experts_per_tok=1)),
    ("qwen2_moe", dict(norm_topk_prob=True, num_experts_per_tok=3)),
    ("qwen3_moe", dict(norm_topk_prob=False)),
    ("olmoe", dict(norm_topk_prob=True, num_experts=6, num_experts_per_tok=3)),
    # gpt-oss with its shipped limit (the clamps rarely act) and plain rope, no sliding layer.
    ("gpt_oss", dict(swiglu_limit=7.0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                     layer_types=["full_attention"] * 3)),
]


@pytest.mark.parametrize("kind,overrides", VARIANTS, ids=[f"{k}-{'-'.join(o)}" for k, o in VARIANTS])
def test_variant_matches_transformers(kind, overrides, checkpoint, reference_model, llmos):
    path = checkpoint(kind, **overrides)
    ref = reference_model(path)
    m = llmos.load(path, threads=1)
    ids = np.random.default_rng(0).integers(3, m.config.vocab_size, 64).tolist()
    with torch.no_grad():
        theirs = ref(torch.tensor([ids])).logits[0].numpy()
        greedy = ref.generate(torch.tensor([ids[:10]]), do_sample=False, max_new_tokens=24, min_new_tokens=24,
                              pad_token_id=0)[0, 10:].tolist()
    assert np.abs(m.logits(ids) - theirs).max() <= 1e-3
    assert m.generate(ids[:10], max_new_tokens=24, eos_token_id=[]).token_ids == greedy
