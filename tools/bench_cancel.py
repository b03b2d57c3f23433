#!/usr/bin/env python
"""How promptly a running call stops, and what the checks cost.

    PYTHONPATH=python python tools/bench_cancel.py MODEL [--threads 2] [--prefill 2048] [--batch 64] [--repeat 3]
    PYTHONPATH=python python tools/bench_cancel.py MODEL --throughput-only [--tokens 32] [--repeat 5]

MODEL is a checkpoint folder or registry name. For each kind of long call (one long prefill, a
batch decoding together, beam search) the call is stopped from a timer thread, once by
CancelToken.cancel() and once by SIGINT to this process, and the time from the stop to the
exception reaching Python is printed (median and worst of --repeat). After every stop the model
must give the same greedy tokens as before (printed as `usable`).

--throughput-only prints greedy decode tokens/s for one sequence and prefill tokens/s for a
--prefill-token prompt, using no new API, so it also runs against an older llmos
(PYTHONPATH=its python/) to compare the cost of the checks.

A ~0.5B model with random weights (Qwen2-0.5B's shapes):
    python tools/make_checkpoint.py qwen2 /tmp/qwen05 --dtype bf16 --set hidden_size=896 \\
        --set intermediate_size=4864 --set num_hidden_layers=24 --set num_attention_heads=14 \\
        --set num_key_value_heads=2 --set vocab_size=151936 --set max_position_embeddings=32768

Measured (that model, bf16, --threads 2, AVX2 EPYC shared with other jobs, load average 17-36
on 2 cores; 5 stops each): a 2048-token prefill stops 3-6 ms after cancel()/SIGINT (worst
16 ms), 64 sequences decoding together 10-22 ms (worst 28 ms), beam search (8 beams) 2-6 ms
(worst 16 ms); the model gives the same tokens afterwards. Against the build before the checks
(interleaved runs, load ~7-10): decode 0.317 vs 0.332 s/token median (no cost within noise);
a 256-token prefill 5.00 vs 4.88 s best, 6.7 vs 5.7 s median at 2 threads (the slices add pool
handoffs, which an oversubscribed host makes slow), 5.17 vs 5.21 s median at 1 thread.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import threading
import time

import llmos

PROBE = dict(max_new_tokens=8, do_sample=False)


def stop_latency(call, stop, delay: float) -> tuple[float, str]:
    """Runs call() on this thread and stop() from a timer after `delay` s; returns (seconds from
    stop() to the exception, its class name)."""
    stopped_at = []

    def fire():
        stopped_at.append(time.perf_counter())
        stop()

    timer = threading.Timer(delay, fire)
    timer.start()
    try:
        call()
    except (KeyboardInterrupt, llmos.errors.CancelledError) as e:
        return time.perf_counter() - stopped_at[0], type(e).__name__
    finally:
        timer.cancel()
    raise SystemExit(f"the call ended before it was stopped ({delay} s): make it longer")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=2048, help="prompt tokens of the long-prefill case")
    ap.add_argument("--batch", type=int, default=64, help="sequences of the batched-decode case")
    ap.add_argument("--beams", type=int, default=8)
    ap.add_argument("--delay", type=float, default=1.0, help="seconds into the call before it is stopped")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--throughput-only", action="store_true")
    ap.add_argument("--tokens", type=int, default=32, help="tokens per throughput run")
    args = ap.parse_args(argv)

    t = time.perf_counter()
    model = llmos.load(args.model, threads=args.threads)
    print(f"{model}\nloaded in {time.perf_counter() - t:.1f} s", flush=True)
    vocab = model.config.vocab_size

    if args.throughput_only:
        rates = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            g = model.generate([5, 6, 7], max_new_tokens=args.tokens, do_sample=False, eos_token_id=[])
            rates.append(len(g.token_ids) / (time.perf_counter() - t))
        print(f"decode: {statistics.median(rates):.2f} tokens/s median, {max(rates):.2f} best "
              f"({args.repeat} runs of {args.tokens} tokens)", flush=True)
        rates = []
        prompt = [(i * 7919) % (vocab - 10) + 5 for i in range(args.prefill)]
        for _ in range(args.repeat):
            t = time.perf_counter()
            model.generate(prompt, max_new_tokens=1)
            rates.append(len(prompt) / (time.perf_counter() - t))
        print(f"prefill: {statistics.median(rates):.2f} tokens/s median, {max(rates):.2f} best "
              f"({args.repeat} runs of {args.prefill} tokens)", flush=True)
        return 0

    probe_prompt = [11, 12, 13, 14]
    expected = model.generate(probe_prompt, **PROBE).token_ids
    long_prompt = [(i * 7919) % (vocab - 10) + 5 for i in range(args.prefill)]
    room = min(10_000, model.config.max_position_embeddings - 8)
    cases = {
        "prefill": lambda cancel: model.generate(long_prompt, max_new_tokens=1, cancel=cancel),
        "batch decode": lambda cancel: model.generate([[5 + i, 6, 7] for i in range(args.batch)], max_new_tokens=room,
                                                      do_sample=True, eos_token_id=[], cancel=cancel),
        "beam search": lambda cancel: model.generate([5, 6, 7], num_beams=args.beams, max_new_tokens=room,
                                                     eos_token_id=[], cancel=cancel),
    }
    for name, call in cases.items():
        for how in ("CancelToken", "SIGINT"):
            lat = []
            for _ in range(args.repeat):
                token = llmos.CancelToken()
                stop = token.cancel if how == "CancelToken" else (lambda: os.kill(os.getpid(), signal.SIGINT))
                seconds, exc = stop_latency(lambda: call(token), stop, args.delay)
                lat.append(seconds)
                if model.generate(probe_prompt, **PROBE).token_ids != expected:
                    print(f"{name} / {how}: the model gives other tokens after the stop", flush=True)
                    return 1
            print(f"{name:13s} {how:11s} -> {exc:17s} {1000 * statistics.median(lat):7.1f} ms median, "
                  f"{1000 * max(lat):7.1f} ms worst, usable after: yes", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
