#!/usr/bin/env python
"""How far quantized logits move from float32: llmos int8 / int4 against llama.cpp Q8_0 / Q4_0,
on the same checkpoint and the same 512 positions.

    LLAMA_CPP_SRC=... python tools/bench_accuracy.py [--shapes smollm,gpt2] [--positions 512]

Reference: llmos float32 logits (equal to transformers' within 1e-4, see the test suite).
Metrics per engine: relative L2 error of the logits over all positions, and top-1 agreement
with the reference. llama.cpp's own float32 GGUF is measured too, so its conversion error is
visible apart from its quantization error. Uses tools/bench.py's checkpoints and GGUF files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import checkpoint, gguf, llmos_quantized  # noqa: E402


def llama_cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    import llama_cpp

    m = llama_cpp.Llama(str(path), n_ctx=len(ids) + 8, n_batch=len(ids), n_ubatch=len(ids), logits_all=True,
                        n_threads=2, verbose=False)
    m.eval(ids)
    return np.array(m.scores[: len(ids)], dtype=np.float32)


def metrics(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    rel = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    return rel, float((out.argmax(-1) == ref.argmax(-1)).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="smollm,gpt2")
    ap.add_argument("--positions", type=int, default=512)
    args = ap.parse_args()

    import json

    import llmos

    for shape in args.shapes.split(","):
        hf = checkpoint(shape)
        vocab = json.loads((hf / "config.json").read_text())["vocab_size"]
        ids = np.random.default_rng(1).integers(10, vocab - 10, args.positions).tolist()
        ref = llmos.load(hf, threads=2).logits(ids)
        rows = []
        for q in ("int8", "int4"):
            rows.append((f"llmos {q}", *metrics(llmos.load(llmos_quantized(shape, q), threads=2).logits(ids), ref)))
        for q in ("F32", "Q8_0", "Q4_0"):
            try:
                rows.append((f"llama.cpp {q}", *metrics(llama_cpp_logits(gguf(shape, q), ids), ref)))
            except Exception as e:  # anchor missing or broken: say so, keep going
                rows.append((f"llama.cpp {q}", float("nan"), float("nan")))
                print(f"llama.cpp {q}: {e}", file=sys.stderr)
        print(f"\n### {shape}: deviation from float32 over {args.positions} positions\n")
        print("| engine | relative L2 error | top-1 agreement |")
        print("|---|---|---|")
        for name, rel, top1 in rows:
            print(f"| {name} | {rel:.4f} | {top1:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
