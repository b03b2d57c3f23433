#!/usr/bin/env python
"""What each KV cache dtype costs in accuracy, against float32 KV (same weights, same tokens).

    python tools/bench_kv_dtype.py [--models smollm,bundled] [--prompt-tokens 256] [--new 64]
                                   [--threads 2] [--dtype float32]

Per model, a float32-KV paged session decodes --new tokens greedily after the prompt; that run
is the reference. Each other KV dtype is then fed the same tokens (teacher forcing) and compared
at every decode step (the prompt's last position and each new token):
  max |dlogit|   the largest logit difference,
  mean KL        KL(p_float32 || p_dtype) of the next-token distributions, averaged, in nats,
  top-1 agree    the share of steps whose argmax matches,
and decodes on its own (free running), where greedy agree = tokens equal to the reference's
before the first difference, out of --new.
Models: "smollm" is the SmolLM2-135M shape with random weights (tools/bench.py builds and caches
it; its prompt is random token ids), "bundled" the package's default model (an English prompt).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

DTYPES = ["bfloat16", "float16", "int8"]
PROMPT = ("The old lighthouse keeper climbed the stairs every evening to light the lamp. One night, "
          "as the storm rolled in from the sea, he saw a small boat struggling against the waves. ")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _run(core, dtype: str, prompt: list[int], feed: list[int] | None, new: int):
    """Logits at the prompt's end and after each token; greedy, or teacher-forced on `feed`."""
    from llmos import _core

    pool = _core.KvPool(core, dtype, 16, 1 << 30)
    s = _core.Session(core, pool)
    assert s.reserve_append(len(prompt))
    rows = [_core.forward_step(core, [(s, np.asarray(prompt))])[0]]
    toks: list[int] = []
    for i in range(new):
        t = int(rows[-1].argmax()) if feed is None else feed[i]
        toks.append(t)
        if i + 1 == new:
            break
        assert s.reserve_append(1)
        rows.append(_core.forward_step(core, [(s, np.array([t]))])[0])
    return np.stack(rows), toks


def _prompt(name: str, model, n: int) -> list[int]:
    if name == "bundled":
        ids = model.tokenizer.encode(PROMPT * 20)
        return list(ids[:min(n, model.config.max_position_embeddings - 80)])
    return list(np.random.default_rng(0).integers(3, model.config.vocab_size, size=n))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm,bundled")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", help="weight dtype (the KV comparison is at equal weights)")
    a = ap.parse_args(argv)

    import llmos

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"CPU: {cpu}; weights {a.dtype}, {a.threads} threads; prompt {a.prompt_tokens} tokens, {a.new} new\n")
    print("| model | KV dtype | max abs dlogit | mean KL (nats) | top-1 agree | greedy agree |")
    print("|---|---|---|---|---|---|")
    for name in a.models.split(","):
        if name == "bundled":
            from llmos.runtime.default_model import default_model_path
            path = default_model_path()
        else:
            import bench
            path = str(bench.checkpoint(name))
        model = llmos.load(path, dtype=a.dtype, threads=a.threads)
        core = model.backend.core
        prompt = _prompt(name, model, a.prompt_tokens)
        ref, ref_toks = _run(core, "float32", prompt, None, a.new)
        ref_lp = _log_softmax(ref)
        for dt in DTYPES:
            forced, _ = _run(core, dt, prompt, ref_toks, a.new)
            lp = _log_softmax(forced)
            kl = float((np.exp(ref_lp) * (ref_lp - lp)).sum(-1).mean())
            top1 = float((forced.argmax(-1) == ref.argmax(-1)).mean())
            _, free = _run(core, dt, prompt, None, a.new)
            same = next((i for i, (x, y) in enumerate(zip(free, ref_toks)) if x != y), a.new)
            print(f"| {name} | {dt} | {float(np.abs(forced - ref).max()):.4f} | {kl:.2e} | {top1:.1%} | "
                  f"{same}/{a.new} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
