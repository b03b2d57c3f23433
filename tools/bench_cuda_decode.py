"""Batch-1 decode on the GPU, end to end (llmos.load(..., device="cuda")), against the HBM
bandwidth limit: issue 16's target is >= 60% of it for int4 on a Llama-3.2-3B-shaped model.

    python3 tools/bench_cuda_decode.py [--layers 28] [--quant int4,int8,none] [--tokens 128]

The checkpoint is made here with numpy (no torch, no download): Llama-3.2-3B's shapes (hidden
3072, 24 heads / 8 kv heads of 128, MLP 8192, vocab 128256, tied embeddings) with bfloat16
weights of random sign and mantissa, the bundled model's tokenizer (its vocabulary is smaller
than the model's; the prompt is token ids). Speed does not depend on the values. Decode time
is the difference of two greedy generations of 8 and 8 + --tokens tokens from the same
prompt, so the prefill and the first step cancel out. Decode steps run as CUDA graphs (the
default); --no-graphs names weights measured again with every op launched one by one. The
bandwidth a token reads is every weight on the GPU once (`device_weight_bytes`: the layers
and the tied LM head; the KV cache of a short context is negligible), over the time per token.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import llmos
from llmos import _core

BUNDLED = os.path.join(os.path.dirname(llmos.__file__), "runtime", "default_model")

SHAPE = dict(hidden_size=3072, intermediate_size=8192, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
             vocab_size=128256)


def bf16_random(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """bfloat16 bits (uint16) of magnitude 2^-7..2^-6 with random sign and mantissa."""
    bits = np.frombuffer(rng.bytes(2 * int(np.prod(shape))), np.uint16).reshape(shape)
    return (bits & np.uint16(0x807F)) | np.uint16(0x3C00)


def make_checkpoint(folder: str, layers: int) -> None:
    h, f, nq, nkv, d, v = (SHAPE[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                              "num_key_value_heads", "head_dim", "vocab_size"))
    rng = np.random.default_rng(0)
    layer = {  # one layer's tensors, shared by every layer (the values do not matter for speed)
        "self_attn.q_proj.weight": bf16_random(rng, (nq * d, h)),
        "self_attn.k_proj.weight": bf16_random(rng, (nkv * d, h)),
        "self_attn.v_proj.weight": bf16_random(rng, (nkv * d, h)),
        "self_attn.o_proj.weight": bf16_random(rng, (h, nq * d)),
        "mlp.gate_proj.weight": bf16_random(rng, (f, h)),
        "mlp.up_proj.weight": bf16_random(rng, (f, h)),
        "mlp.down_proj.weight": bf16_random(rng, (h, f)),
        "input_layernorm.weight": np.full(h, 0x3F80, np.uint16),  # 1.0
        "post_attention_layernorm.weight": np.full(h, 0x3F80, np.uint16),
    }
    tensors = {"model.embed_tokens.weight": bf16_random(rng, (v, h)), "model.norm.weight": np.full(h, 0x3F80, np.uint16)}
    for i in range(layers):
        for name, a in layer.items():
            tensors[f"model.layers.{i}.{name}"] = a
    # safetensors.numpy has no bfloat16: the file is written here (header, then the raw bits).
    header, offset = {}, 0
    for k, a in tensors.items():
        header[k] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(os.path.join(folder, "model.safetensors"), "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        for a in tensors.values():
            fh.write(a.tobytes())
    config = dict(SHAPE, architectures=["LlamaForCausalLM"], model_type="llama", num_hidden_layers=layers,
                  hidden_act="silu", max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                  rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=8192),
                  tie_word_embeddings=True, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(config, fh)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(BUNDLED, name)):
            shutil.copy(os.path.join(BUNDLED, name), folder)


def decode_seconds_per_token(model, tokens: int) -> float:
    prompt = list(range(3, 19))
    run = lambda n: model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)  # noqa: E731
    run(8)  # warm-up: caches, scratch, the GPU's clocks
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        run(8)
        t1 = time.perf_counter()
        g = run(8 + tokens)
        t2 = time.perf_counter()
        assert len(g.token_ids) == 8 + tokens
        best = min(best, ((t2 - t1) - (t1 - t0)) / tokens)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--quant", default="int4,int8,none")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-graphs", default="int4",
                    help="weights also measured with LLMOS_CUDA_GRAPHS=0 (every op launched one by one); '' for none")
    args = ap.parse_args()
    reason = _core.cuda_unavailable_reason(0)
    if reason:
        print(f"bench_cuda_decode: no usable GPU: {reason}", file=sys.stderr)
        return 2
    info = _core.cuda_device_info(0)
    peak = info["peak_bandwidth_gbs"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmos-bench-cuda-") as folder:
        t = time.perf_counter()
        make_checkpoint(folder, args.layers)
        print(f"checkpoint: Llama-3.2-3B shape, {args.layers} layers, bfloat16, made in {time.perf_counter() - t:.1f} s",
              flush=True)
        runs = [(q, True) for q in args.quant.split(",")] + [(q, False) for q in args.no_graphs.split(",") if q]
        for q, graphs in runs:
            os.environ["LLMOS_CUDA_GRAPHS"] = "1" if graphs else "0"  # read when the model moves to the GPU
            t = time.perf_counter()
            model = llmos.load(folder, threads=args.threads, device="cuda", quant=None if q == "none" else q)
            load_s = time.perf_counter() - t
            wbytes = model.backend.core.device_weight_bytes
            s = decode_seconds_per_token(model, args.tokens)
            gbs = wbytes / s / 1e9
            rows.append(dict(quant=q if graphs else f"{q} (no graph)", graphs=graphs, layers=args.layers,
                             weight_bytes=wbytes, ms_per_token=s * 1e3, tok_s=1 / s, gbs=gbs, pct_peak=100 * gbs / peak,
                             load_s=load_s))
            print(f"  {rows[-1]['quant']}: loaded in {load_s:.1f} s, {wbytes / 1e9:.2f} GB on the GPU, "
                  f"{s * 1e3:.2f} ms/token", flush=True)
            del model
    print(f"\n{info['name']} (sm_{info['capability'][0]}{info['capability'][1]}), peak {peak:.0f} GB/s; "
          f"batch-1 greedy decode, {args.tokens} tokens, Llama-3.2-3B shape ({args.layers} layers)")
    print(f"{'weights':>15} | {'GB on GPU':>9} | {'ms/token':>8} | {'tok/s':>7} | {'GB/s':>6} | {'% of peak':>9}")
    for r in rows:
        print(f"{r['quant']:>15} | {r['weight_bytes'] / 1e9:9.2f} | {r['ms_per_token']:8.2f} | {r['tok_s']:7.1f} | "
              f"{r['gbs']:6.0f} | {r['pct_peak']:8.1f}%")
    print("target: int4 >= 60% of peak (stretch 70%)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(device=info, rows=rows), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
