"""Quantized prefill products per kernel level: the time of x [n, k] @ W^T for Qwen2.5-0.5B's
matrix shapes through the forward pass's dispatch (kernels/quantized_matmul.cc), W quantized once.

    python tools/bench_qmatmul.py [--isa avx2,avx512,avx512_vnni] [--quant int8,int4]
                                  [--tokens 256] [--threads 2] [--reps 7] [--decode-kernel]

For each level, format and shape it prints the best and median milliseconds of --reps calls and
the int8 multiply-adds per second (n * rows * k / best). --decode-kernel also times the row
(decode) kernel on the same tokens, which is what prefill ran on before the packed GEMMs.
The forward pass feeds at most 256 tokens to one product (kPrefillPiece), hence the default.
"""

import argparse
import statistics

import numpy as np

from llmos import _core

TYPES = {"int8": _core.QuantType.Q8, "int4": _core.QuantType.Q4, "int4-asym": _core.QuantType.Q4Asym,
         "int6": _core.QuantType.Q6}
# (name, k, rows): Qwen2.5-0.5B's attention output / MLP gate|up (fused) / MLP down.
SHAPES = [("o_proj 896->896", 896, 896), ("gate_up 896->9728", 896, 9728), ("down 4864->896", 4864, 896)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isa", default="avx2,avx512,avx512_vnni")
    ap.add_argument("--quant", default="int8,int4")
    ap.add_argument("--group", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--decode-kernel", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"best ISA {_core.cpu_best_isa()}, {args.tokens} tokens, {args.threads} threads, group {args.group}")
    print(f"{'isa':12} {'quant':9} {'kernel':8} {'shape':18} {'best ms':>8} {'median':>8} {'GMAC/s':>7}")
    for isa in args.isa.split(","):
        for q in args.quant.split(","):
            for name, k, rows in SHAPES:
                w = rng.standard_normal((rows, k)).astype(np.float32)
                x = rng.standard_normal((args.tokens, k)).astype(np.float32)
                for prefill in (True, False) if args.decode_kernel else (True,):
                    s = _core.kernel_qmatmul_seconds(isa, x, w, TYPES[q], args.group, prefill, args.threads,
                                                     args.reps + 1)[1:]  # the first call maps the scratch
                    best, med = min(s), statistics.median(s)
                    print(f"{isa:12} {q:9} {'prefill' if prefill else 'row':8} {name:18} {best * 1e3:8.2f} "
                          f"{med * 1e3:8.2f} {args.tokens * rows * k / best / 1e9:7.1f}", flush=True)


if __name__ == "__main__":
    main()
