#!/usr/bin/env python
"""CPU speed of llmos against transformers, CTranslate2 and llama.cpp, measured side by side.

    python tools/bench.py [--shapes gpt2,smollm,qwen05] [--threads 1,2] [--rounds 2]
                          [--engines all|llmos-int4,llama.cpp-Q4_0,...] [--json out.json]

For each shape a random-weight checkpoint with transformers' default init is built
(tests/checkpoints.py, cached in /tmp/llmos-bench) and handed to every engine:
  llmos-fp32 / -bf16 / -int8 / -int4   this package (int4 = group 32, symmetric)
  llmos-int8-load / -int4-load          the float checkpoint quantized by llmos.load(quant=...)
                                        (the peak RSS of quantizing at load)
  transformers-fp32                     AutoModelForCausalLM, torch threads = --threads
  ctranslate2-int8                      converted with ct2's TransformersConverter
  llama.cpp-F32 / -Q8_0 / -Q4_0         llama-cpp-python; GGUF made by llama.cpp's own
                                        convert_hf_to_gguf.py, quantized by llama_model_quantize
Prefill = one forward of a 512-token prompt (last-token logits), decode = 128 greedy tokens
from a 1-token prompt (llama-bench's pp512 / tg128); llmos is timed by llmos.runtime.benchmark,
as `llmos bench` times it. Each measurement runs in a fresh process
(peak RSS is that process's), rounds interleave the engines, and the best round counts.
It also measures the memory read bandwidth and prints decode as a fraction of the limit:
bandwidth / weight bytes read per token, with the bytes counted from the files each engine
loads and the bandwidth measured over a buffer of that size (this machine's L3 is large
enough to hold a quantized 0.5B model, which a 1 GB measurement would not show).

Anchors need: `pip install ctranslate2 llama-cpp-python gguf` (llama-cpp-python compiles
llama.cpp) and LLAMA_CPP_SRC pointing at a llama.cpp source tree (for convert_hf_to_gguf.py;
the llama-cpp-python sdist has one under vendor/llama.cpp). Engines that are missing are
skipped with a note. Nothing from the anchors is part of this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LLMOS_BENCH_CACHE", "/tmp/llmos-bench"))
sys.path.insert(0, str(ROOT / "tests"))

SHAPES = {
    "gpt2": ("gpt2", {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": 3072, "vocab_size": 50257,
                      "n_positions": 1024}),
    "smollm": ("llama", {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                         "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                         "max_position_embeddings": 2048, "tie_word_embeddings": True}),
    "qwen05": ("qwen2", {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
                         "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
                         "max_position_embeddings": 4096, "tie_word_embeddings": True}),
    # Mixture of experts, about 0.9B parameters with 0.3B active per token, and the dense model
    # of that active size (experts_per_token x the expert width), to compare decode against.
    "mixtral1b": ("mixtral", {"hidden_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16,
                              "num_key_value_heads": 4, "intermediate_size": 2048, "num_local_experts": 8,
                              "num_experts_per_tok": 2, "vocab_size": 32000, "max_position_embeddings": 4096,
                              "tie_word_embeddings": False}),
    "mixtral1b-dense": ("llama", {"hidden_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16,
                                  "num_key_value_heads": 4, "intermediate_size": 4096, "vocab_size": 32000,
                                  "max_position_embeddings": 4096, "tie_word_embeddings": False}),
    # Qwen3-MoE's many narrow experts: 64 of width 256, top-8 (0.9B in all, 0.2B active).
    "qwen3moe1b": ("qwen3_moe", {"hidden_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16,
                                 "num_key_value_heads": 4, "head_dim": 64, "num_experts": 64, "num_experts_per_tok": 8,
                                 "moe_intermediate_size": 256, "vocab_size": 32000,
                                 "max_position_embeddings": 4096, "tie_word_embeddings": False}),
}
ENGINES = ["llmos-fp32", "llmos-bf16", "llmos-int8", "llmos-int4", "llmos-int8-load", "llmos-int4-load",
           "transformers-fp32", "ctranslate2-int8",
           "llama.cpp-F32", "llama.cpp-Q8_0", "llama.cpp-Q4_0"]
PREFILL, DECODE = 512, 128


# ---- artifacts --------------------------------------------------------------------------

def checkpoint(shape: str) -> Path:
    out = CACHE / shape / "hf"
    if not (out / "model.safetensors").exists() and not (out / "model.safetensors.index.json").exists():
        import checkpoints  # torch: only when building, so a child's peak RSS is its engine's

        kind, overrides = SHAPES[shape]
        # weight_scale: back to transformers' initializer_range (0.02), a realistic scale
        checkpoints.build_checkpoint(kind, out, weight_scale=0.1, damp_eos=False, **overrides)
        if kind == "gpt2":  # llama.cpp's GPT-2 converter reads the old config key n_ctx
            cfg = json.loads((out / "config.json").read_text())
            cfg["n_ctx"] = cfg["n_positions"]
            (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def gguf(shape: str, qtype: str) -> Path:
    """GGUF of the checkpoint: converted to F32 by llama.cpp's converter, then quantized."""
    src = os.environ.get("LLAMA_CPP_SRC")
    if not src:
        raise RuntimeError("set LLAMA_CPP_SRC to a llama.cpp source tree (convert_hf_to_gguf.py)")
    f32 = CACHE / shape / "model-F32.gguf"
    if not f32.exists():
        # The test tokenizers are not among the converter's known pre-tokenizers; tell it to
        # treat them as GPT-2's (they are byte-level BPE like it).
        code = (
            "import sys, runpy; sys.path[:0] = [{src!r}, {src!r} + '/gguf-py'];"
            "import conversion.base as b; b.TextModel.get_vocab_base_pre = lambda self, t: 'gpt-2';"
            "sys.argv = ['convert', {hf!r}, '--outfile', {out!r}, '--outtype', 'f32'];"
            "runpy.run_path({src!r} + '/convert_hf_to_gguf.py', run_name='__main__')"
        ).format(src=src, hf=str(checkpoint(shape)), out=str(f32))
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    if qtype == "F32":
        return f32
    out = CACHE / shape / f"model-{qtype}.gguf"
    if not out.exists():
        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = {"Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}[qtype]
        rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(out).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize failed ({rc})")
    return out


def llmos_quantized(shape: str, quant: str) -> Path:
    """The checkpoint written by llmos.quantize, as a user deploys it (load copies the blocks)."""
    out = CACHE / shape / f"llmos-{quant}"
    if not (out / "model.safetensors").exists():
        import llmos

        llmos.quantize(str(checkpoint(shape)), str(out), quant)
    return out


def prepare(engine: str, shape: str) -> None:
    """Builds what an engine loads, in the parent, so a child's peak RSS is only its run."""
    try:
        if engine in ("llmos-int8", "llmos-int4"):
            llmos_quantized(shape, engine.split("-")[1])
        elif engine.startswith("llama.cpp-"):
            gguf(shape, engine.split("-", 1)[1])
        elif engine == "ctranslate2-int8":
            ct2_dir(shape)
    except Exception as e:  # reported by the child's own attempt
        print(f"prepare {engine} {shape}: {e}", file=sys.stderr)


def ct2_dir(shape: str) -> Path:
    out = CACHE / shape / "ct2-int8"
    if not (out / "model.bin").exists():
        import ctranslate2

        ctranslate2.converters.TransformersConverter(str(checkpoint(shape))).convert(
            str(out), quantization="int8", force=True)
        # The test tokenizers have no unk token, which CTranslate2 requires as a string.
        cfg_path = out / "config.json"
        cfg = json.loads(cfg_path.read_text())
        vocab = json.loads((out / "vocabulary.json").read_text())
        cfg["unk_token"] = cfg.get("unk_token") or vocab[0]
        if cfg.get("layer_norm_epsilon") is None:
            cfg.pop("layer_norm_epsilon", None)
        cfg_path.write_text(json.dumps(cfg))
    return out


# ---- one measurement (runs in a child process) --------------------------------------------

def measure(engine: str, shape: str, threads: int) -> dict:

    hf = checkpoint(shape)
    cfg = json.loads((hf / "config.json").read_text())
    vocab = cfg["vocab_size"]
    rng = np.random.default_rng(0)
    prompt = rng.integers(10, vocab - 10, PREFILL).tolist()
    first = prompt[:1]

    if engine.startswith("llmos-"):
        import llmos
        from llmos.runtime import benchmark

        kind = engine.split("-", 1)[1]
        if kind in ("int8-load", "int4-load"):
            m = llmos.load(hf, threads=threads, quant=kind.split("-")[0])
        elif kind in ("int8", "int4"):
            m = llmos.load(llmos_quantized(shape, kind), threads=threads)
        else:
            m = llmos.load(hf, threads=threads, dtype={"bf16": "bfloat16"}.get(kind, "float32"))
        # The same timing as `llmos bench` (llmos.runtime.benchmark).
        benchmark.warm_up(m, prompt)
        prefill, decode = benchmark.time_model(m, prompt, DECODE)
    elif engine == "transformers-fp32":
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        m = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
        with torch.no_grad():
            m(torch.tensor([first]))
            t = time.perf_counter()
            m(torch.tensor([prompt]), logits_to_keep=1)
            prefill = time.perf_counter() - t
            kw = dict(do_sample=False, pad_token_id=0)
            t = time.perf_counter()
            m.generate(torch.tensor([first]), max_new_tokens=1, min_new_tokens=1, **kw)
            one = time.perf_counter() - t
            t = time.perf_counter()
            m.generate(torch.tensor([first]), max_new_tokens=DECODE + 1, min_new_tokens=DECODE + 1, **kw)
            decode = time.perf_counter() - t - one
    elif engine == "ctranslate2-int8":
        import ctranslate2
        from transformers import AutoTokenizer

        d = ct2_dir(shape)
        tok = AutoTokenizer.from_pretrained(hf)
        words = tok.convert_ids_to_tokens(prompt)
        g = ctranslate2.Generator(str(d), device="cpu", compute_type="int8", intra_threads=threads)
        g.generate_batch([words[:1]], max_length=2, include_prompt_in_result=False)
        t = time.perf_counter()
        g.generate_batch([words], max_length=1, include_prompt_in_result=False)
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        g.generate_batch([words[:1]], max_length=1, include_prompt_in_result=False)
        one = time.perf_counter() - t
        t = time.perf_counter()
        g.generate_batch([words[:1]], max_length=DECODE + 1, min_length=DECODE + 1, sampling_topk=1,
                         include_prompt_in_result=False, end_token=[])
        decode = time.perf_counter() - t - one
    elif engine.startswith("llama.cpp-"):
        import llama_cpp

        path = gguf(shape, engine.split("-", 1)[1])
        m = llama_cpp.Llama(str(path), n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=threads,
                            n_threads_batch=threads, verbose=False)
        m.eval(first)
        m.reset()
        t = time.perf_counter()
        m.eval(prompt)
        prefill = time.perf_counter() - t
        m.reset()
        t = time.perf_counter()
        m.eval(first)
        tok = int(np.argmax(m.scores[m.n_tokens - 1]))
        for _ in range(DECODE):
            m.eval([tok])
            tok = int(np.argmax(m.scores[m.n_tokens - 1]))
        decode = time.perf_counter() - t
        t = time.perf_counter()
        m.reset()
        m.eval(first)
        decode -= time.perf_counter() - t
    else:
        raise SystemExit(f"unknown engine {engine}")
    return {"prefill_tps": PREFILL / prefill, "decode_tps": DECODE / decode, "rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak RSS. Not getrusage's ru_maxrss, which survives fork + exec and so
    would report the parent's peak. (llmos.runtime.benchmark has the same function; importing
    it here would add llmos itself to the other engines' peaks.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def run_child(engine, shape, threads, timeout=1800):
    out = subprocess.run([sys.executable, __file__, "--child", engine, shape, str(threads)], capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- report -----------------------------------------------------------------------------------

def weight_bytes_per_token(engine, shape):
    """Bytes of weights one decode step reads (the bandwidth model), counted from the files
    each engine loads: every matrix once, except an untied input embedding (only the
    looked-up row is read). llmos: the llmos.quantize output (int4 keeps a wider LM head);
    llama.cpp: the GGUF's tensors as stored (Q4_0 keeps output.weight at Q6_K)."""
    hf = checkpoint(shape)
    cfg = json.loads((hf / "config.json").read_text())
    tied = cfg.get("tie_word_embeddings", True)
    n_experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    # A decode step reads only the routed experts: experts_per_token of num_experts.
    active = cfg.get("num_experts_per_tok", 1) / n_experts if n_experts else 1.0

    def share(name):
        return active if ("experts." in name or "_exps" in name) else 1.0
    import safetensors

    def is_input_embedding(name):
        return any(k in name for k in ("wpe", "embed_tokens", "wte", "llmos.embed", "token_embd"))

    engine = engine.removesuffix("-load")  # the same blocks as llmos.quantize writes
    if engine in ("llmos-int8", "llmos-int4"):
        path = llmos_quantized(shape, engine.split("-")[1]) / "model.safetensors"
    elif engine.startswith("llama.cpp-"):
        try:
            from gguf import GGUFReader
        except ImportError:  # llama.cpp's own copy
            sys.path.insert(0, os.path.join(os.environ["LLAMA_CPP_SRC"], "gguf-py"))
            from gguf import GGUFReader

        tensors = GGUFReader(str(gguf(shape, engine.split("-", 1)[1]))).tensors
        has_output = any(t.name == "output.weight" for t in tensors)
        return sum(int(t.n_bytes) * share(t.name) for t in tensors
                   if not ("token_embd" in t.name and has_output) and "position_embd" not in t.name)
    else:
        path = hf / "model.safetensors"
    n = 0
    with safetensors.safe_open(str(path), "np") as f:
        for k in f.keys():
            if is_input_embedding(k) and (not tied or "wpe" in k):
                continue
            sl = f.get_slice(k)
            cnt = 1
            for d in sl.get_shape():
                cnt *= d
            n += share(k) * cnt * np.dtype({"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "U8": np.uint8,
                                 "I8": np.int8}[sl.get_dtype()]).itemsize
    if engine in ("llmos-int8", "llmos-int4"):
        return n
    bits = {"llmos-fp32": 32, "llmos-bf16": 16, "llama.cpp-F32": 32, "ctranslate2-int8": 8,
            "transformers-fp32": 32}[engine]
    return n * bits / 8 / 4  # the checkpoint is float32


def machine_line(core, engines) -> str:
    """The CPU, its SIMD flags, the llmos kernel level in force and (when llama.cpp runs) the
    features its build uses: every table is only meaningful next to these."""
    from bench_serve import cpu_info  # model name and SIMD flags, one parser for every bench

    cpu = cpu_info()
    flags = " ".join(cpu["simd_flags"]) or "none of note"
    line = (f"CPU: {cpu['model']} ({cpu['cpus']} logical cores); flags: {flags}; "
            f"llmos kernel level: {core.cpu_isa()} (best here: {core.cpu_best_isa()})")
    if any(e.startswith("llama.cpp-") for e in engines):
        try:
            import llama_cpp

            info = llama_cpp.llama_print_system_info().decode()
            on = re.findall(r"(\w+) = 1", info)
            line += f"; llama.cpp build: {' '.join(on)}"
        except Exception as e:  # the engine's own run reports it missing
            line += f"; llama.cpp: not loaded ({type(e).__name__})"
    return line


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(measure(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="gpt2,smollm,qwen05")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--engines", default="all")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    shapes = args.shapes.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    engines = ENGINES if args.engines == "all" else args.engines.split(",")

    from llmos import _core

    print(machine_line(_core, engines), flush=True)
    bw = {t: _core.memory_bandwidth(t, 1024) for t in threads}
    print("memory read bandwidth (1 GB buffer): " + ", ".join(f"{t} thread(s) {bw[t]:.1f} GB/s" for t in threads),
          flush=True)
    # A decode step re-reads the same weights, which a large L3 may partly hold; the limit
    # for an engine is the read bandwidth over a buffer of its own weight bytes.
    bw_at: dict = {}

    def bandwidth_for(t, nbytes):
        mb = max(64, int(round(nbytes / 2**20 / 16)) * 16)
        if (t, mb) not in bw_at:
            bw_at[(t, mb)] = _core.memory_bandwidth(t, mb)
        return bw_at[(t, mb)]
    results: dict = {}
    for shape in shapes:
        checkpoint(shape)
        for e in engines:
            prepare(e, shape)
    for rnd in range(args.rounds):
        for shape in shapes:
            for t in threads:
                for e in engines:
                    r = run_child(e, shape, t)
                    key = (shape, t, e)
                    best = results.get(key)
                    if "error" in r:
                        results.setdefault(key, r)
                        continue
                    if best is None or "error" in best:
                        results[key] = r
                    else:
                        best["prefill_tps"] = max(best["prefill_tps"], r["prefill_tps"])
                        best["decode_tps"] = max(best["decode_tps"], r["decode_tps"])
                        best["rss_mb"] = min(best["rss_mb"], r["rss_mb"])
                    print(f"round {rnd} {shape} t={t} {e}: {r}", file=sys.stderr, flush=True)

    for shape in shapes:
        for t in threads:
            print(f"\n### {shape}, {t} thread(s)\n")
            print("| engine | prefill tok/s | decode tok/s | peak RSS MB | weight MB / token | read GB/s at that size "
                  "| decode / bandwidth limit |")
            print("|---|---|---|---|---|---|---|")
            for e in engines:
                r = results.get((shape, t, e), {"error": "not run"})
                if "error" in r:
                    print(f"| {e} | - | - | - | skipped: {r['error']} |")
                    continue
                nbytes = weight_bytes_per_token(e, shape)
                gbs = bandwidth_for(t, nbytes)
                limit = gbs * 1e9 / nbytes
                print(f"| {e} | {r['prefill_tps']:.0f} | {r['decode_tps']:.1f} | {r['rss_mb']:.0f} | "
                      f"{nbytes / 2**20:.0f} | {gbs:.1f} | {r['decode_tps'] / limit:.0%} |")
            ratios = []
            pairs = [("llmos-int4", "llama.cpp-Q4_0"), ("llmos-int8", "llama.cpp-Q8_0"), ("llmos-fp32", "llama.cpp-F32"),
                     ("llmos-int4-load", "llama.cpp-Q4_0"), ("llmos-int8-load", "llama.cpp-Q8_0"),
                     ("llmos-int8", "ctranslate2-int8"), ("llmos-fp32", "transformers-fp32")]
            for a, b in pairs:
                ra, rb = results.get((shape, t, a)), results.get((shape, t, b))
                if ra and rb and "error" not in ra and "error" not in rb:
                    ratios.append(f"{a} / {b}: prefill {ra['prefill_tps'] / rb['prefill_tps']:.2f}x, "
                                  f"decode {ra['decode_tps'] / rb['decode_tps']:.2f}x, "
                                  f"RSS {ra['rss_mb'] / rb['rss_mb']:.2f}x")
            if ratios:
                print("\n" + "\n".join(f"- {r}" for r in ratios))
    if args.json:
        Path(args.json).write_text(json.dumps({"bandwidth_gbs": bw, "results": [
            {"shape": s, "threads": t, "engine": e, **r} for (s, t, e), r in results.items()]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
