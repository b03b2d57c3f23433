#!/usr/bin/env python
"""Decode speed of the same checkpoint in four runtimes, in one run:

  (a) our fp32 and int4 ONNX exports in onnxruntime (CPU),
  (b) the onnxruntime-genai model builder's int4 export of it, in onnxruntime,
  (c) the llmos C++ core (float32, and int4 when the core can quantize at load).

    python tools/bench_onnx.py [--checkpoint DIR] [--threads N] [--new-tokens 64] [--check]

Every ONNX model runs behind the same llmos.load() decode loop (one onnxruntime session,
the KV cache kept as OrtValues), so the comparison is between graphs, not between loops.
Without --checkpoint a random-weight Llama (hidden 512, 8 layers, GQA 8/4, vocab 4096)
is built with tests/checkpoints.py. Decode tokens/s = (N - 1) / (time for N tokens - time
for 1 token): the prompt pass is excluded; the best of --repeats alternating rounds is
compared (the median is shown too). --check exits 1 unless our int4 export decodes
at least as fast as the builder's (llmos's own export must not be slower than the reference builder's).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

BENCH_CONFIG = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                    num_key_value_heads=4, vocab_size=4096)


def _decode_time(model, prompt, n: int) -> float:
    """Seconds for n - 1 decode steps: a run of n tokens minus a run of one (the prompt pass)."""
    opts = dict(eos_token_id=[], do_sample=False)
    t0 = time.perf_counter()
    model.generate(prompt, max_new_tokens=1, **opts)
    t1 = time.perf_counter()
    model.generate(prompt, max_new_tokens=n, **opts)
    t2 = time.perf_counter()
    return max((t2 - t1) - (t1 - t0), 1e-9)


def _genai_export(src: str, out: str, precision: str) -> str | None:
    try:
        from onnxruntime_genai.models import builder
    except Exception as e:
        print(f"  (skipped: onnxruntime-genai builder unavailable: {e})")
        return None
    args = (src, src, out, precision, "cpu", os.path.join(out, "..", "genai-cache"))
    sink = io.StringIO()
    logging.disable(logging.INFO)  # the builder's quantizer logs every node
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            extra = builder.parse_extra_options(*args, []) if hasattr(builder, "parse_extra_options") else {}
            builder.create_model(*args, **extra)
    finally:
        logging.disable(logging.NOTSET)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="checkpoint folder (default: build a random-weight Llama)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--workdir", help="keep exports here (default: a temporary folder)")
    ap.add_argument("--check", action="store_true", help="exit 1 if our int4 export is slower than the builder's")
    args = ap.parse_args(argv)

    import llmos

    with contextlib.ExitStack() as stack:
        work = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="llmos-bench-onnx-"))
        os.makedirs(work, exist_ok=True)
        src = args.checkpoint
        if src is None:
            import checkpoints

            src = os.path.join(work, "checkpoint")
            if not os.path.isfile(os.path.join(src, "config.json")):
                with contextlib.redirect_stderr(io.StringIO()):
                    checkpoints.build_checkpoint("llama_gqa", src, **BENCH_CONFIG)
        prompt = [(7 * i + 11) % 300 + 5 for i in range(args.prompt_tokens)]

        runs: list[tuple[str, object]] = []
        runs.append(("llmos core fp32", lambda: llmos.load(src, threads=args.threads)))
        runs.append(("llmos core int4", lambda: llmos.load(src, threads=args.threads, quant="int4")))
        for precision in ("fp32", "int4"):
            out = os.path.join(work, f"llmos-{precision}")
            if not os.path.isfile(os.path.join(out, "model.onnx")):
                llmos.export_onnx(src, out, precision=precision)
            runs.append((f"ours {precision} (ort)", lambda out=out: llmos.load(out, threads=args.threads)))
        genai = os.path.join(work, "genai-int4")
        if os.path.isfile(os.path.join(genai, "model.onnx")) or _genai_export(src, genai, "int4"):
            runs.append(("genai builder int4 (ort)", lambda: llmos.load(genai, threads=args.threads)))

        print(f"checkpoint: {src}\nthreads={args.threads} prompt={args.prompt_tokens} tokens, "
              f"decode {args.new_tokens} tokens, {args.repeats} rounds\n")
        models = {name: make() for name, make in runs}
        for model in models.values():  # warm-up: allocations, kernel selection, prepacking
            model.generate(prompt, max_new_tokens=args.new_tokens, eos_token_id=[])
        # Rounds alternate between the runtimes so load from other processes hits all alike;
        # the best round is the speed without interference, the median what a user sees.
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.repeats):
            for name, model in models.items():
                times[name].append(_decode_time(model, prompt, args.new_tokens))
        rates = {name: (args.new_tokens - 1) / min(t) for name, t in times.items()}
        medians = {name: (args.new_tokens - 1) / statistics.median(t) for name, t in times.items()}
        base = rates.get("genai builder int4 (ort)")
        print(f"{'runtime':28s} {'best tok/s':>10s} {'median tok/s':>13s} {'best vs builder int4':>21s}")
        for name, r in rates.items():
            ratio = f"{r / base:20.2f}x" if base else ""
            print(f"{name:28s} {r:10.1f} {medians[name]:13.1f} {ratio:>21s}")
        if args.check and base is not None and rates["ours int4 (ort)"] < base:
            print("\nFAIL: our int4 export decodes slower than the onnxruntime-genai builder's", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
