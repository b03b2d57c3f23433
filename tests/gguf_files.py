"""Writes a Hugging Face checkpoint folder (tests/checkpoints.py) as a GGUF file the way llama.cpp's
convert_hf_to_gguf does for the llama-layout families: metadata keys, tensor names, the llama Q/K
rope permutation, the byte-level BPE vocabulary with merges and token types, the chat template.
Matrices are stored as F32 or quantized with gguf.quants (Q8_0, Q4_0, Q4_K...); norms, biases and
1-D tensors stay F32 as llama.cpp keeps them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_LAYER = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(hf: str) -> str:
    stem, _, suffix = hf.rpartition(".")
    if stem.startswith("model.layers."):
        _, _, i, rest = stem.split(".", 3)
        return f"blk.{i}.{_LAYER[rest]}.{suffix}"
    return f"{_GLOBAL[stem]}.{suffix}"


def random_kquant(shape: tuple[int, int], qtype, std: float, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant blocks (gguf.quants cannot quantize to K-quants) whose dequantized values
    have standard deviation `std`: random codes and sub-block scales, the fp16 super-block scales
    (dequantization is linear in them) set to hit `std`."""
    import gguf
    from gguf.quants import dequantize

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    data = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    # where each block keeps its fp16 scale d (and dmin): Q4_K/Q5_K lead with d, dmin; Q6_K ends with d
    at = [size - 2] if qtype == gguf.GGMLQuantizationType.Q6_K else [0, 2]

    def with_scale(d: float) -> np.ndarray:
        out = data.copy()
        for a in at:
            out[..., a:a + 2] = np.frombuffer(np.float16(d).tobytes(), np.uint8)
        return out.reshape(rows, -1)

    unit = dequantize(with_scale(1.0), qtype).std()
    return with_scale(std / unit)


def _bpe_vocab(tok_json: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """A byte-level BPE vocabulary in id order and its token types (3 special, 4 added, 1 normal)."""
    vocab = dict(tok_json["model"]["vocab"])
    added = {t["content"]: t for t in tok_json.get("added_tokens", [])}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    tokens = [None] * vocab_size
    for t, i in vocab.items():
        tokens[i] = t
    return tokens, [(3 if added[t]["special"] else 4) if t in added else 1 for t in tokens]


def write_gguf(folder: str | Path, out: str | Path, qtype: str = "F32", *, pre: str = "default",
               seed: int = 0, tensor_types: dict[str, str] | None = None) -> tuple[Path, dict[str, np.ndarray]]:
    """`folder` (config.json, model.safetensors, tokenizer.json) as the GGUF file `out`; 2-D
    weights in `qtype` (the embedding too, as llama.cpp's --outtype does) except those named in
    `tensor_types` (GGUF name -> type, e.g. {"output.weight": "Q6_K"}, as llama.cpp's mixes keep some
    tensors at other types; "F16" stores float16). Returns the file and the weights it holds,
    dequantized, under the transformers names and layout: the reference."""
    import gguf
    from gguf.quants import dequantize, quantize
    from safetensors.numpy import load_file

    from llmos.io.gguf import permute
    from sentencepiece_vocab import gguf_vocab

    folder, out = Path(folder), Path(out)
    cfg = json.loads((folder / "config.json").read_text())
    tok_json = json.loads((folder / "tokenizer.json").read_text())
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    arch = cfg["model_type"]
    w = gguf.GGUFWriter(str(out), arch)
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    rope = cfg.get("rope_parameters") or {}
    w.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))

    if tok_json["model"].get("byte_fallback"):
        # a SentencePiece-style vocabulary (Llama 2, Mistral): tokens, scores and types, no merges
        tokens, scores, types = gguf_vocab(tok_json)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_unk_token_id(tokens.index(tok_json["model"]["unk_token"]))
        w.add_add_space_prefix(True)
    else:
        tokens, types = _bpe_vocab(tok_json, cfg["vocab_size"])
        merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
    vocab = {t: i for i, t in enumerate(tokens)}
    w.add_bos_token_id(vocab[tok_cfg["bos_token"]])
    w.add_eos_token_id(vocab[tok_cfg["eos_token"]])
    w.add_add_bos_token(False)
    if tok_cfg.get("chat_template"):
        w.add_chat_template(tok_cfg["chat_template"])

    rng = np.random.default_rng(seed)
    held = {}
    for name, t in load_file(str(folder / "model.safetensors")).items():
        t = t.astype(np.float32)
        this = (tensor_types or {}).get(gguf_name(name), qtype) if t.ndim == 2 else "F32"
        qt = gguf.GGMLQuantizationType[this]
        kquant = this.endswith("_K")
        if this == "F16":
            t = t.astype(np.float16).astype(np.float32)
        if t.ndim == 2 and this not in ("F32", "F16"):
            if kquant:
                assert arch not in ("llama", "mistral"), "random K-quant blocks: a family without the rope permute"
                data = random_kquant(t.shape, qt, float(t.std()), rng)
            else:
                data = quantize(t, qt)
            held[name] = dequantize(data, qt).astype(np.float32).reshape(t.shape)
        else:
            data, held[name] = None, t
        stored = held[name] if data is None else data
        if arch in ("llama", "mistral") and name.endswith(("q_proj.weight", "k_proj.weight")):
            # whole rows move, so the quantized bytes permute like the floats
            stored = permute(stored, n_head if "q_proj" in name else n_kv)
        if data is None:
            w.add_tensor(gguf_name(name), stored.astype(np.float16) if this == "F16" else stored)
        else:
            w.add_tensor(gguf_name(name), stored, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out, held
