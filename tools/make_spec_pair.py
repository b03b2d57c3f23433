#!/usr/bin/env python3
"""Builds a speculative-decoding target from the bundled model: bigger, same tokenizer, and
agreeing with the bundled model (the draft) as often as a chosen noise scale allows.

    python3 tools/make_spec_pair.py --noise 0.1 --out build/spec_target_0.1

Why constructed: issue 15 asks for speculation measured with a target whose decode is bound by
memory bandwidth (hundreds of MB of weights) and a draft that agrees with it like a smaller model
trained the same way would. Training such a target does not fit this project's 2 shared cores,
and random weights accept no drafts. So the target is *grown* from the draft, which keeps the
tokenizer and the draft's function exactly, and then perturbed by a controlled amount:

1. Widen (function-preserving, up to float rounding): hidden size h -> H, intermediate I0 -> I,
   heads h/64 -> H/64 (head_dim and the attention scale unchanged). The residual stream's new
   dims start at 0: the embedding's new columns and every output projection (o_proj, down_proj)
   that writes them are 0, and the new heads / MLP units (fresh random inputs) have output
   columns 0, so they add nothing. RMSNorm divides by the root mean square over H dims, which the
   zero dims shrink by sqrt(h / H): the norm weights are scaled by sqrt(h / H) (0.5 for 256 ->
   1024, exact in bfloat16) and rms_norm_eps by h / H, so every norm's output is unchanged.
2. Deepen: the original layers are spread over L layers (original i at position i * L / L0);
   the new layers have random input projections (each original tensor kind's std) and zero
   o_proj / down_proj, so each is the identity on the residual stream.
3. Perturb: every matrix (embedding included; the norms are left alone) gets i.i.d. Gaussian
   noise of `--noise` times its tensor kind's std in the original model. This wakes up the new
   heads, units, layers and dims (their contribution grows with the noise) and moves the old
   weights, so the target's greedy choice departs from the draft's where the draft's margin is
   small: the noise scale sets the acceptance rate, which tools/bench_spec.py measures.

What it is not: a trained model. Its text is the draft's plus noise, no better; the acceptance
it gives is a dial, not a prediction of what a trained pair achieves; and its speed is that of
any dense bfloat16 model of its shape (the kernels do not look at the values), which is what
the speed-up measurement needs. With --noise 0 the target computes the draft's function
(tools/bench_spec.py then accepts nearly every draft; float rounding differs in the wider sums).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = os.path.join(ROOT, "python", "llmos", "runtime", "default_model")
HEAD_DIM = 64

INPUT_KINDS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
OUTPUT_KINDS = ("self_attn.o_proj", "mlp.down_proj")
NORM_KINDS = ("input_layernorm", "post_attention_layernorm")


def grow(src: dict, cfg: dict, H: int, I: int, L: int, noise: float, seed: int) -> tuple[dict, dict]:
    h, I0, L0 = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    if cfg.get("head_dim", h // cfg["num_attention_heads"]) != HEAD_DIM or cfg["num_key_value_heads"] != cfg[
            "num_attention_heads"]:
        raise SystemExit("expected head_dim 64 and as many key/value heads as heads")
    if H % HEAD_DIM or H < h or I < I0 or L < L0:
        raise SystemExit(f"the target must be at least the draft's size: hidden {H} >= {h} (a multiple of 64), "
                         f"intermediate {I} >= {I0}, layers {L} >= {L0}")
    g = torch.Generator().manual_seed(seed)
    f32 = {k: v.float() for k, v in src.items()}
    # Each tensor kind's std over the original layers: the scale of fresh weights and of the noise.
    kind_std = {kind: sum(float(f32[f"model.layers.{i}.{kind}.weight"].std()) for i in range(L0)) / L0
                for kind in INPUT_KINDS + OUTPUT_KINDS}
    kind_std["embed"] = float(f32["model.embed_tokens.weight"].std())
    shrink = math.sqrt(h / H)  # RMSNorm over H dims where only h are nonzero

    def randn(shape, std):
        return torch.randn(shape, generator=g) * std

    def norm(w):
        out = torch.full((H,), float(w.mean()) * shrink)
        out[:h] = w * shrink
        return out

    out = {}
    emb = torch.zeros(cfg["vocab_size"], H)
    emb[:, :h] = f32["model.embed_tokens.weight"]
    out["model.embed_tokens.weight"] = emb
    out["model.norm.weight"] = norm(f32["model.norm.weight"])
    orig_at = {i * L // L0: i for i in range(L0)}
    mean_norm = {kind: sum(f32[f"model.layers.{i}.{kind}.weight"] for i in range(L0)) / L0 for kind in NORM_KINDS}
    for j in range(L):
        p = f"model.layers.{j}."
        i = orig_at.get(j)
        for kind in INPUT_KINDS:
            rows = I if kind.startswith("mlp") else H
            w = torch.zeros(rows, H)
            if i is None:
                w[:] = randn((rows, H), kind_std[kind])
            else:
                o = f32[f"model.layers.{i}.{kind}.weight"]
                w[:o.shape[0], :h] = o  # old heads / units read only the old dims
                w[o.shape[0]:] = randn((rows - o.shape[0], H), kind_std[kind])  # new ones: fresh inputs
            out[p + kind + ".weight"] = w
        for kind in OUTPUT_KINDS:
            cols = I if kind.startswith("mlp") else H
            w = torch.zeros(H, cols)  # new heads / units / layers write nothing, nothing writes new dims
            if i is not None:
                o = f32[f"model.layers.{i}.{kind}.weight"]
                w[:h, :o.shape[1]] = o
            out[p + kind + ".weight"] = w
        for kind in NORM_KINDS:
            src_w = mean_norm[kind] if i is None else f32[f"model.layers.{i}.{kind}.weight"]
            out[p + kind + ".weight"] = norm(src_w)
    if noise > 0:
        for name, w in out.items():
            if w.dim() == 2:
                kind = "embed" if "embed" in name else name.split(".", 3)[3].rsplit(".", 1)[0]
                w += randn(w.shape, noise * kind_std[kind])
    new_cfg = dict(cfg)
    new_cfg.update(hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=H // HEAD_DIM,
                   num_key_value_heads=H // HEAD_DIM, head_dim=HEAD_DIM, rms_norm_eps=cfg["rms_norm_eps"] * h / H)
    return {k: v.to(torch.bfloat16).contiguous() for k, v in out.items()}, new_cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draft", default=BUNDLED, help="the model to grow (default: the bundled model)")
    ap.add_argument("--out", required=True, help="folder for the target (written whole; ~410 MB at the defaults)")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--noise", type=float, default=0.0, help="noise std as a fraction of each tensor kind's std")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with open(os.path.join(a.draft, "config.json")) as f:
        cfg = json.load(f)
    if not cfg.get("tie_word_embeddings"):
        raise SystemExit("expected a model with tied embeddings (the bundled model's layout)")
    weights, new_cfg = grow(load_file(os.path.join(a.draft, "model.safetensors")), cfg, a.hidden, a.intermediate,
                            a.layers, a.noise, a.seed)
    os.makedirs(a.out, exist_ok=True)
    for name in os.listdir(a.draft):  # tokenizer, generation defaults, template: shared with the draft
        if name not in ("model.safetensors", "config.json", "__init__.py", "MODEL_CARD.md"):
            shutil.copy(os.path.join(a.draft, name), os.path.join(a.out, name))
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(new_cfg, f, indent=2)
    save_file(weights, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    n = sum(w.numel() for w in weights.values())
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write(f"Constructed by tools/make_spec_pair.py (not trained): {a.draft} grown to hidden {a.hidden}, "
                f"intermediate {a.intermediate}, {a.layers} layers, noise {a.noise} (seed {a.seed}).\n")
    print(f"{a.out}: {n / 1e6:.1f}M parameters, {n * 2 / 1e6:.0f} MB in bfloat16, noise {a.noise}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
