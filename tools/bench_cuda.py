#!/usr/bin/env python
"""GPU speed of the CUDA decode GEMVs (cpp/cuda/gemv_quant.cu, gemv_half.cu) on Llama-3.2-3B's
layer shapes, against the device's memory bandwidth. Run by tools/gpu_check.sh; needs a core
built with CUDA (-DLLMOS_CUDA=ON) on the import path and a GPU.

    python tools/bench_cuda.py [--tokens 1,2,4,8,16] [--reps 200] [--device 0] [--json out.json]

Shapes (rows N x inputs K): 3072x3072 (q, o), 8192x3072 (gate, up), 3072x8192 (down) and
8192x8192, the issue's K, N in {3072, 8192}. Formats: llmos int4 (group 32) and int8 (group 32),
and float16 as the baseline: our own fp16 GEMV, not cuBLAS (this build links no cuBLAS), so the
int4/fp16 column compares two of our kernels. Each launch is timed between CUDA events over
`reps` launches that rotate through copies of the matrix 4x the L2 size, so every launch reads
its weights from memory (_core.cuda_time_gemv).

GB/s counts the bytes a launch must read or write: the codes, the float16 scales, the float32
activations and outputs. % of peak divides by the device's memory bandwidth: for an H200 the
data-sheet 4.8 TB/s (HBM3e), for other GPUs 2 x memory clock x bus width from the driver
(cudaDevAttrMemoryClockRate, memoryBusWidth); the table says which. The issue's targets on an
H200: batch-1 int4 decode >= 60% of that (stretch 70%), int4 >= 3x fp16 cuBLAS for M = 1..16.
The table is printed last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

SHAPES = [(3072, 3072), (8192, 3072), (3072, 8192), (8192, 8192)]  # (rows N, inputs K)
# data-sheet HBM bandwidth (GB/s) of GPUs whose driver-reported clock x width is known to differ
DATASHEET_GBS = {"H200": 4800.0}


def weight_bytes(fmt: str, rows: int, cols: int, group: int = 32) -> int:
    if fmt == "float16":
        return rows * cols * 2
    codes = rows * cols // (2 if fmt == "int4" else 1)
    return codes + rows * (cols // group) * 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="1,2,4,8,16", help="M values (tokens per GEMV), 1..16")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    from llmos import _core

    if not _core.cuda_built() or _core.cuda_device_count() == 0:
        print(f"bench_cuda: no GPU to measure: {_core.cuda_unavailable_reason(args.device)}", file=sys.stderr)
        return 2
    info = _core.cuda_device_info(args.device)
    peak, source = info["peak_bandwidth_gbs"], "2 x memory clock x bus width"
    for name, gbs in DATASHEET_GBS.items():
        if name in info["name"]:
            peak, source = gbs, f"{name} data sheet"
    tokens = [int(t) for t in args.tokens.split(",")]
    Q = _core.QuantType
    started = time.time()
    rows_out = []
    for n, k in SHAPES:
        for m in tokens:
            t = {
                "int4": _core.cuda_time_gemv(n, k, m, Q.Q4, group=32, reps=args.reps, device=args.device),
                "int8": _core.cuda_time_gemv(n, k, m, Q.Q8, group=32, reps=args.reps, device=args.device),
                "float16": _core.cuda_time_gemv(n, k, m, None, "float16", reps=args.reps, device=args.device),
            }
            row = {"N": n, "K": k, "M": m}
            for fmt, sec in t.items():
                moved = weight_bytes(fmt, n, k) + 4 * m * (k + n)
                row[f"{fmt}_us"] = sec * 1e6
                row[f"{fmt}_gbs"] = moved / sec / 1e9
                row[f"{fmt}_peak"] = moved / sec / 1e9 / peak
            row["int4_vs_fp16"] = t["float16"] / t["int4"]
            rows_out.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": info, "peak_gbs": peak, "peak_source": source, "rows": rows_out}, f, indent=1)

    # Batch-1 int4 over the four shapes together: the decode GEMVs' share of the bandwidth.
    one = [r for r in rows_out if r["M"] == 1]
    if one:
        moved = sum(weight_bytes("int4", r["N"], r["K"]) + 4 * (r["K"] + r["N"]) for r in one)
        secs = sum(r["int4_us"] for r in one) * 1e-6
        headline = f"int4 M=1 over the four shapes: {moved / secs / 1e9:.0f} GB/s = {moved / secs / 1e9 / peak:.0%} of peak"
    else:
        headline = "no M=1 rows"
    print(f"\n{info['name']} (sm_{info['capability'][0]}{info['capability'][1]}, {info['sm_count']} SMs), "
          f"peak {peak:.0f} GB/s ({source}); {args.reps} launches per point, {time.time() - started:.0f} s")
    print(f"{'N x K':>11} {'M':>3} | {'int4 us':>8} {'GB/s':>6} {'%pk':>4} | {'int8 us':>8} {'GB/s':>6} {'%pk':>4} | "
          f"{'fp16 us':>8} {'GB/s':>6} {'%pk':>4} | {'int4/fp16':>9}")
    for r in rows_out:
        print(f"{r['N']:>5}x{r['K']:<5} {r['M']:>3} | "
              + " | ".join(f"{r[f + '_us']:8.1f} {r[f + '_gbs']:6.0f} {r[f + '_peak']:4.0%}"
                           for f in ("int4", "int8", "float16"))
              + f" | {r['int4_vs_fp16']:8.2f}x")
    print(headline + "  (target on an H200: >= 60%, stretch 70%; int4 >= 3x fp16 cuBLAS for M = 1..16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
