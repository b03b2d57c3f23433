#!/usr/bin/env python
"""Serving throughput and latency of llmos against llama.cpp's llama-server, measured side by side.

    python tools/bench_serve.py [--servers llmos,llama-server] [--streams 1,8,32] [--rounds 2]
                                [--llama-server PATH] [--llmos-mode serve|engine] [--json out.json]
    python tools/bench_serve.py --dry      # a small, quick run that checks the harness itself

Both sides get the same SmolLM2-135M-shaped random checkpoint (tools/bench.py's "smollm" shape,
2,048-token context) at the same bits: llmos int8 (written by llmos.quantize) against llama.cpp
Q8_0 (llama.cpp's convert_hf_to_gguf.py, then its llama-quantize), 2 threads each.

The client is the same for both: it streams /v1/completions over HTTP (SSE), so time to first
token and the gaps between tokens are what a client sees. Prompts are token ids (no tokenizer
difference), 100-200 tokens drawn with a fixed seed, and every completion is 64 tokens with EOS
ignored (each answer's `usage.completion_tokens` is checked). Cases:
  N streams      N clients, each sending its next request when the previous ends, over a set
                 of max(8, 3N) requests; aggregate output tok/s = output tokens / wall time,
                 TTFT p50 / p99 over the set. "1" runs the first 8 of those requests one at a
                 time: the sequential baseline the 8-stream throughput is compared to.
                 Also the CPU seconds the server process used (all its threads): tokens per
                 CPU-second say what a token costs even when other work shares the machine.
  prefix         TTFT of a request whose first 1,000 tokens were never seen, then of a second
                 request sharing those 1,000 tokens (different tail): the prefix cache's gain.
Each server runs alone on the machine: rounds interleave them (start, warm up, every case, stop),
and the round with the best throughput counts for each case.

Anchors (not part of this repository): a llama-server binary built from the llama-cpp-python
sdist's vendored llama.cpp (`--llama-server`, or LLAMA_SERVER), llama-quantize next to it, and
LLAMA_CPP_SRC pointing at that llama.cpp tree for the GGUF conversion (tools/bench.py).
`--url NAME=http://host:port` measures a server that is already running instead of starting one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the checkpoint, its shapes and the GGUF conversion live there)

ROOT = Path(__file__).resolve().parent.parent
SHAPE = "smollm"
CTX = 2048  # per request: the checkpoint's max_position_embeddings


# ---- artifacts ----------------------------------------------------------------------------

def q8_gguf(llama_quantize: Path) -> Path:
    """Q8_0 GGUF of the checkpoint, quantized by llama.cpp's own tool (no Python binding needed)."""
    out = bench.CACHE / SHAPE / "model-Q8_0.gguf"
    if not out.exists():
        f32 = bench.gguf(SHAPE, "F32")
        tmp = out.with_suffix(".tmp")
        subprocess.run([str(llama_quantize), str(f32), str(tmp), "Q8_0"], check=True, capture_output=True)
        tmp.rename(out)
    return out


# ---- the request mix ------------------------------------------------------------------------

def vocab_size() -> int:
    return json.loads((bench.checkpoint(SHAPE) / "config.json").read_text())["vocab_size"]


def eos_ids() -> list[int]:
    hf = bench.checkpoint(SHAPE)
    ids = set()
    for name in ("config.json", "generation_config.json"):
        e = json.loads((hf / name).read_text()).get("eos_token_id")
        ids.update(e if isinstance(e, list) else [] if e is None else [e])
    return sorted(ids)


def request_set(n: int, vocab: int, lo: int, hi: int, seed: int = 0) -> list[list[int]]:
    """n prompts of lo..hi token ids; a prefix of a longer set is the shorter set."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(lo, hi + 1, size=4096)
    return [rng.integers(10, vocab - 10, int(lens[i])).tolist() for i in range(n)]


def prefix_pairs(k: int, vocab: int, prefix_len: int, tail: int, seed: int) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(1000 + seed)
    pairs = []
    for _ in range(k):
        p = rng.integers(10, vocab - 10, prefix_len).tolist()
        pairs.append((p + rng.integers(10, vocab - 10, tail).tolist(), p + rng.integers(10, vocab - 10, tail).tolist()))
    return pairs


# ---- targets: something that streams a completion -------------------------------------------------

@dataclass
class Result:
    send: float
    first: float | None = None
    done: float | None = None
    tokens: int = 0          # usage.completion_tokens (or pieces counted when there is no usage)
    gaps: list[float] = field(default_factory=list)
    error: str | None = None


class HttpTarget:
    """Any OpenAI-compatible server: streams /v1/completions with the prompt as token ids."""

    def __init__(self, name: str, url: str, extra: dict):
        import httpx

        self.name, self.url, self.extra = name, url.rstrip("/"), extra
        self.model = httpx.get(self.url + "/v1/models", timeout=30.0).json()["data"][0]["id"]
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(600.0),
                                        limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))

    async def complete(self, prompt: list[int], max_tokens: int) -> Result:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                "stream": True, "stream_options": {"include_usage": True}, **self.extra}
        r = Result(send=time.perf_counter())
        last, pieces, usage = None, 0, None
        try:
            async with self.client.stream("POST", self.url + "/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    r.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                    return r
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    now = time.perf_counter()
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    # A token's chunk; not the closing one that only carries finish_reason.
                    if any(c.get("text") or (c.get("delta") or {}).get("content") or c.get("finish_reason") is None
                           for c in chunk.get("choices") or ()):
                        pieces += 1
                        if r.first is None:
                            r.first = now
                        else:
                            r.gaps.append(now - last)
                        last = now
        except Exception as e:  # a failed request is reported, not fatal to the run
            r.error = f"{type(e).__name__}: {e}"
            return r
        r.done = time.perf_counter()
        r.tokens = int(usage["completion_tokens"]) if usage else pieces
        return r

    async def aclose(self):
        await self.client.aclose()


class EngineTarget:
    """llmos.Engine in this process, for when there is no `llmos serve` to talk to."""

    def __init__(self, model_dir: Path, threads: int):
        import llmos

        self.name = "llmos"
        self.model = llmos.load(str(model_dir), threads=threads)
        self.engine = llmos.Engine(self.model, max_running=64)

    async def complete(self, prompt: list[int], max_tokens: int) -> Result:
        r = Result(send=time.perf_counter())
        last = None
        try:
            req = self.engine.submit(prompt, max_new_tokens=max_tokens, eos_token_id=[], do_sample=False)
            async for piece in req:
                now = time.perf_counter()
                r.tokens += len(piece.token_ids)
                if r.first is None:
                    r.first = now
                else:
                    r.gaps.append(now - last)
                last = now
        except Exception as e:
            r.error = f"{type(e).__name__}: {e}"
            return r
        r.done = time.perf_counter()
        return r

    async def aclose(self):
        self.engine.close()


# ---- servers this script starts --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, log: Path, env: dict | None = None):
        self.name, self.cmd, self.port, self.log = name, cmd, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.logf = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, env=env)
        self.peak_rss_mb = None

    def wait_ready(self, timeout: float = 300.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s; see {self.log}")

    def stop(self) -> None:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak_rss_mb = int(line.split()[1]) / 1024
        except OSError:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logf.close()


def start_llama_server(binary: Path, gguf: Path, slots: int, threads: int, log: Path) -> Server:
    port = free_port()
    cmd = [str(binary), "-m", str(gguf), "-np", str(slots), "-c", str(slots * CTX), "-t", str(threads),
           "-tb", str(threads), "--cont-batching", "--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    return Server("llama-server", cmd, port, log)


def start_llmos_server(model_dir: Path, threads: int, log: Path, extra_args: list[str]) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "llmos", "serve", str(model_dir), "--port", str(port),
           "--max-concurrency", "64", "--max-queue", "512", "--threads", str(threads), *extra_args]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    return Server("llmos", cmd, port, log, env)


# ---- cases -------------------------------------------------------------------------------------

def cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system, all threads) a process has used: on a shared machine, what its
    tokens cost independently of how much of the CPU it was given."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


async def run_streams(target, prompts: list[list[int]], streams: int, max_tokens: int,
                      seconds: float = 0.0) -> dict:
    """seconds > 0: no request starts after that long (those running finish), so a starved
    machine still ends the case; the rate counts only the requests that ran."""
    queue = list(enumerate(prompts))
    results: list[Result | None] = [None] * len(prompts)
    t0 = time.perf_counter()

    async def worker():
        while queue and not (seconds > 0 and time.perf_counter() - t0 > seconds):
            i, p = queue.pop(0)
            results[i] = await target.complete(p, max_tokens)

    await asyncio.gather(*(worker() for _ in range(streams)))
    wall = time.perf_counter() - t0
    results = [r for r in results if r is not None]
    ok = [r for r in results if r.error is None]
    errors = [r.error for r in results if r.error is not None]
    short = sum(1 for r in ok if r.tokens != max_tokens)
    ttft = [r.first - r.send for r in ok if r.first is not None]
    gaps = [g for r in ok for g in r.gaps]
    return {"streams": streams, "requests": len(results), "wall_s": wall,
            "out_tokens": sum(r.tokens for r in ok), "tok_s": sum(r.tokens for r in ok) / wall,
            "ttft_p50_ms": 1e3 * pct(ttft, 50), "ttft_p99_ms": 1e3 * pct(ttft, 99),
            "itl_p50_ms": 1e3 * pct(gaps, 50), "itl_p99_ms": 1e3 * pct(gaps, 99),
            "errors": len(errors), "first_error": errors[0] if errors else None, "wrong_length": short}


async def run_prefix(target, pairs, max_tokens: int) -> dict:
    cold, warm, errors = [], [], []
    for a, b in pairs:
        ra = await target.complete(a, max_tokens)
        rb = await target.complete(b, max_tokens)
        for r, out in ((ra, cold), (rb, warm)):
            if r.error is None and r.first is not None:
                out.append(r.first - r.send)
            else:
                errors.append(r.error)
    c, w = pct(cold, 50), pct(warm, 50)
    return {"prefix_tokens": len(pairs[0][0]) if pairs else 0, "pairs": len(pairs),
            "ttft_cold_ms": 1e3 * c, "ttft_warm_ms": 1e3 * w, "ratio": c / w if w else float("nan"),
            "errors": len(errors), "first_error": errors[0] if errors else None}


async def run_all(target, cfg, vocab: int, round_i: int, pid: int | None) -> dict:
    lo, hi = cfg.prompt_len
    await target.complete(request_set(1, vocab, lo, hi, seed=99)[0], 4)  # warm up
    out = {}
    for s in cfg.streams:
        # One stream runs the first 8 requests of every set: its rate does not depend on how many.
        n = max(8, cfg.per_stream * s) if s > 1 else 8
        prompts = request_set(n, vocab, lo, hi)
        c0 = cpu_seconds(pid)
        out[str(s)] = r = await run_streams(target, prompts, s, cfg.max_tokens, cfg.case_seconds)
        c1 = cpu_seconds(pid)
        r["server_cpu_s"] = None if c0 is None or c1 is None else c1 - c0
        r["tok_per_cpu_s"] = r["out_tokens"] / r["server_cpu_s"] if r["server_cpu_s"] else None
        print(f"  {target.name:12s} streams={s:<3d} {fmt_row(out[str(s)])}", flush=True)
    # Fresh prefixes each round: a server restarted per round starts with an empty cache anyway.
    pairs = prefix_pairs(cfg.prefix_pairs, vocab, cfg.prefix_len, cfg.prefix_tail, seed=round_i)
    out["prefix"] = await run_prefix(target, pairs, cfg.prefix_max_tokens)
    p = out["prefix"]
    print(f"  {target.name:12s} prefix {p['prefix_tokens']} tok: cold {p['ttft_cold_ms']:.0f} ms, "
          f"warm {p['ttft_warm_ms']:.0f} ms, {p['ratio']:.1f}x errors={p['errors']}", flush=True)
    return out


def fmt_row(r: dict) -> str:
    s = (f"{r['tok_s']:7.1f} tok/s  TTFT p50 {r['ttft_p50_ms']:6.0f} ms p99 {r['ttft_p99_ms']:6.0f} ms  "
         f"ITL p50 {r['itl_p50_ms']:5.1f} ms  ({r['requests']} req, {r['wall_s']:.1f} s)")
    if r.get("tok_per_cpu_s"):
        s += f"  {r['tok_per_cpu_s']:.1f} tok per server CPU-s"
    if r["errors"] or r["wrong_length"]:
        s += f"  errors={r['errors']} wrong_length={r['wrong_length']} {r['first_error'] or ''}"
    return s


# ---- machine facts ---------------------------------------------------------------------------

def cpu_info() -> dict:
    model, flags = "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    keep = [f for f in flags if f in ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni") or f.startswith(("avx512", "amx"))]
    return {"model": model, "cpus": os.cpu_count(), "simd_flags": keep}


def llama_server_facts(binary: Path, log: Path | None) -> dict:
    facts = {}
    try:
        v = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
        facts["version"] = " ".join((v.stdout + v.stderr).split())[:300]
    except (OSError, subprocess.SubprocessError) as e:
        facts["version"] = f"unknown ({e})"
    if log is not None and log.exists():
        for line in log.read_text(errors="replace").splitlines():
            if "system_info" in line:
                facts["system_info"] = line.split("system_info:", 1)[-1].strip()
                break
    cache = binary.resolve().parent.parent / "CMakeCache.txt"
    if cache.exists():
        # GGML_NATIVE means -march=native: the GGML_AVX* options are then unused (OFF) by design.
        keys = ("CMAKE_BUILD_TYPE:", "GGML_NATIVE:", "LLAMA_CURL:", "GGML_OPENMP:", "LLAMA_OPENSSL:")
        facts["cmake"] = [ln for ln in cache.read_text().splitlines() if ln.startswith(keys)]
    return facts


# ---- main --------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="llmos,llama-server")
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--per-stream", type=int, default=3, help="requests per stream in each case")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", default="100,200")
    ap.add_argument("--prefix-len", type=int, default=1000)
    ap.add_argument("--prefix-tail", type=int, default=24)
    ap.add_argument("--prefix-pairs", type=int, default=3)
    ap.add_argument("--prefix-max-tokens", type=int, default=4)
    ap.add_argument("--case-seconds", type=float, default=0.0,
                    help="start no request after this long in a case (0: run every request)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slots", type=int, default=32, help="llama-server -np")
    ap.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER", "/work/bench/llama-build/bin/llama-server"))
    ap.add_argument("--llmos-mode", choices=["serve", "engine"], default="serve",
                    help="serve: `llmos serve` over HTTP; engine: llmos.Engine in this process")
    ap.add_argument("--llmos-extra", default=None,
                    help="JSON fields added to llmos's requests; default: a logit_bias of -100 on the EOS "
                         "ids (OpenAI's own way to rule a token out; llama-server gets its ignore_eos)")
    ap.add_argument("--llmos-args", default="", help="more arguments for `llmos serve` (e.g. --kv-dtype float16)")
    ap.add_argument("--url", action="append", default=[], help="NAME=URL of a running server (not started here)")
    ap.add_argument("--logs", default=str(bench.CACHE / "serve-logs"))
    ap.add_argument("--json")
    ap.add_argument("--dry", action="store_true", help="small and quick: checks the harness")
    cfg = ap.parse_args()
    cfg.streams = [int(s) for s in cfg.streams.split(",")]
    cfg.prompt_len = tuple(int(x) for x in cfg.prompt_len.split(","))
    if cfg.dry:
        cfg.streams, cfg.rounds, cfg.per_stream, cfg.max_tokens = [1, 4], 1, 1, 8
        cfg.prefix_len, cfg.prefix_pairs = 256, 1
    servers = [s for s in cfg.servers.split(",") if s]
    urls = dict(u.split("=", 1) for u in cfg.url)
    logs = Path(cfg.logs)
    logs.mkdir(parents=True, exist_ok=True)
    binary = Path(cfg.llama_server)

    vocab = vocab_size()
    extras = {"llama-server": {"ignore_eos": True},
              "llmos": json.loads(cfg.llmos_extra) if cfg.llmos_extra else
              {"logit_bias": {str(e): -100 for e in eos_ids()}}}
    llmos_dir = bench.llmos_quantized(SHAPE, "int8") if "llmos" in servers else None
    gguf = q8_gguf(binary.parent / "llama-quantize") if "llama-server" in servers and "llama-server" not in urls else None

    cpu = cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['cpus']} logical CPUs), SIMD: {' '.join(cpu['simd_flags'])}")
    print(f"threads {cfg.threads}; {cfg.max_tokens}-token completions, prompts {cfg.prompt_len[0]}-{cfg.prompt_len[1]} "
          f"tokens, EOS ignored; llama-server -np {cfg.slots} -c {cfg.slots * CTX}", flush=True)

    results: dict[str, list[dict]] = {s: [] for s in servers}
    facts: dict = {"cpu": cpu}
    for round_i in range(cfg.rounds):
        for name in servers:
            # Other work on the machine shows in every number: say how much there was.
            print(f"round {round_i + 1}/{cfg.rounds}: {name} (load average {os.getloadavg()[0]:.1f})", flush=True)
            server = None
            try:
                if name in urls:
                    target = HttpTarget(name, urls[name], extras.get(name, {}))
                elif name == "llama-server":
                    server = start_llama_server(binary, gguf, cfg.slots, cfg.threads, logs / f"llama-server-{round_i}.log")
                    server.wait_ready()
                    target = HttpTarget(name, server.url, extras[name])
                elif name == "llmos" and cfg.llmos_mode == "engine":
                    target = EngineTarget(llmos_dir, cfg.threads)
                elif name == "llmos":
                    server = start_llmos_server(llmos_dir, cfg.threads, logs / f"llmos-{round_i}.log",
                                                cfg.llmos_args.split())
                    server.wait_ready()
                    target = HttpTarget(name, server.url, extras[name])
                else:
                    raise SystemExit(f"unknown server {name}")

                async def go():
                    try:
                        return await run_all(target, cfg, vocab, round_i, server.proc.pid if server else None)
                    finally:
                        await target.aclose()

                res = asyncio.run(go())
            finally:
                if server is not None:
                    server.stop()
                    print(f"  {name} peak RSS {server.peak_rss_mb or float('nan'):.0f} MB", flush=True)
            res["load_average_after"] = os.getloadavg()[0]
            if server is not None:
                res["peak_rss_mb"] = server.peak_rss_mb
                if name == "llama-server":
                    facts["llama-server"] = llama_server_facts(binary, server.log)
            results[name].append(res)

    report = summarize(results, cfg)
    print(report)
    if "llama-server" in facts:
        f = facts["llama-server"]
        print(f"llama-server: {f.get('version')}\n  system_info: {f.get('system_info')}\n  cmake: {'; '.join(f.get('cmake', []))}")
    if cfg.json:
        Path(cfg.json).write_text(json.dumps({"config": {k: v for k, v in vars(cfg).items()}, "facts": facts,
                                              "rounds": results}, indent=2, default=str))
    return 0


def best(rounds: list[dict], key: str) -> dict | None:
    rows = [r[key] for r in rounds if key in r]
    if not rows:
        return None
    if key == "prefix":
        return min(rows, key=lambda r: r["ttft_warm_ms"] if r["ttft_warm_ms"] == r["ttft_warm_ms"] else 1e18)
    return max(rows, key=lambda r: r["tok_s"])


def summarize(results: dict[str, list[dict]], cfg) -> str:
    names = list(results)
    both = {"llmos", "llama-server"} <= set(names)
    lines = ["", "| streams | server | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | tok per server CPU-s |"
             + (" llmos / llama-server tok/s |" if both else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if both else "")]
    rows: dict = {}
    for s in cfg.streams:
        rows[s] = {n: best(results[n], str(s)) for n in names}
        a, b = rows[s].get("llmos"), rows[s].get("llama-server")
        ratio = f"{a['tok_s'] / b['tok_s']:.2f}x" if both and a and b else ""
        for k, n in enumerate(names):
            r = rows[s][n]
            label = ("1 (sequential)" if s == 1 else str(s)) if k == 0 else ""
            cells = ["-"] * 5 if r is None else [
                f"{r['tok_s']:.1f}", f"{r['ttft_p50_ms']:.0f}", f"{r['ttft_p99_ms']:.0f}", f"{r['itl_p50_ms']:.1f}",
                f"{r['tok_per_cpu_s']:.1f}" if r.get("tok_per_cpu_s") else "-"]
            lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |" + (f" {ratio if k == 0 else ''} |" if both else ""))
    lines.append("")
    for n in names:
        if 1 in rows and 8 in rows and rows[1].get(n) and rows[8].get(n):
            lines.append(f"{n}: 8 streams / sequential throughput = {rows[8][n]['tok_s'] / rows[1][n]['tok_s']:.2f}x")
        p = best(results[n], "prefix")
        if p:
            lines.append(f"{n}: prefix {p['prefix_tokens']} tokens: TTFT cold {p['ttft_cold_ms']:.0f} ms, "
                         f"shared prefix {p['ttft_warm_ms']:.0f} ms ({p['ratio']:.1f}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
