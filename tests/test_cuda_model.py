"""The decoder's forward pass on the GPU (cpp/model/decoder_cuda.cc) against the same checkpoint
on the CPU: logits of every position, greedy tokens, beam search (which copies caches), prompts
longer than a piece and than the first cache, the serving engine, the refusals. One named bound
per comparison.

Without a CUDA build and a GPU every test here skips, loudly, with the reason; tools/gpu_check.sh
runs them on a GPU machine with LLMOS_REQUIRE_GPU=1, where a skip is a failure.
"""

import os

import numpy as np
import pytest

from llmos import _core
from llmos.errors import DeviceUnavailableError

pytestmark = pytest.mark.cuda

# ---- bounds (relative L2 over all logits) ----------------------------------------------------
# float32 both sides, the same weights: the sums run in another order (warp reductions on the
# GPU, SIMD lanes on the CPU) and errors grow through the layers: ~1e-6 measured per layer.
FLOAT32_REL = 1e-4
# float16 / bfloat16 weights: the GPU keeps activations in float32, the CPU's AMX / bf16 GEMM
# rounds them to bfloat16 (2^-9 per value) before each product.
HALF_REL = 2e-2
# Quantized weights: the GPU multiplies float32 activations by the dequantized weights, the CPU
# quantizes activations to int8 per block of 32 (about 1/127 per value) for its integer kernels.
QUANT_REL = 5e-2

_REASON = _core.cuda_unavailable_reason(0)
if _REASON:
    if os.environ.get("LLMOS_REQUIRE_GPU") == "1":
        raise RuntimeError(f"LLMOS_REQUIRE_GPU=1 but the core cannot use a GPU: {_REASON}")
    pytest.skip(f"no usable GPU, so the GPU forward pass is not checked here: {_REASON}", allow_module_level=True)

DENSE_KINDS = ["llama", "llama_gqa", "llama_tied", "llama3_rope", "mistral_swa", "qwen2", "qwen3",
               "phi3_partial_rotary", "gemma", "gemma2", "gemma3_text", "smollm3", "olmo2", "granite"]


def rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def pair(llmos, path, **kw):
    cpu = llmos.load(str(path), threads=2, device="cpu", **kw)
    gpu = llmos.load(str(path), threads=2, device="cuda", **kw)
    assert gpu.device == "cuda:0" and gpu.isa == "cuda" and cpu.device == "cpu"
    return cpu, gpu


def ids_for(model, n, seed=0):
    return np.random.default_rng(seed).integers(0, model.backend.arch.vocab_size, n).astype(np.int64)


@pytest.mark.parametrize("kind", DENSE_KINDS)
def test_float32_logits_and_greedy_tokens_match_the_cpu(checkpoint, llmos, kind):
    cpu, gpu = pair(llmos, checkpoint(kind))
    ids = ids_for(cpu, 40)
    want, got = cpu.backend.logits(ids), gpu.backend.logits(ids)
    assert got.shape == want.shape
    assert rel(got, want) < FLOAT32_REL, kind
    a = cpu.generate(ids.tolist(), max_new_tokens=24, min_new_tokens=24, do_sample=False)
    b = gpu.generate(ids.tolist(), max_new_tokens=24, min_new_tokens=24, do_sample=False)
    assert b.token_ids == a.token_ids, kind


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_weights_match_the_cpu(checkpoint, llmos, dtype):
    cpu, gpu = pair(llmos, checkpoint("llama", dtype))
    ids = ids_for(cpu, 32)
    assert rel(gpu.backend.logits(ids), cpu.backend.logits(ids)) < HALF_REL


@pytest.mark.parametrize("quant", ["int8", "int4", "int4-asym"])
def test_quantized_weights_match_the_cpu(checkpoint, llmos, quant):
    cpu, gpu = pair(llmos, checkpoint("qwen2"), quant=quant)
    ids = ids_for(cpu, 32)
    assert rel(gpu.backend.logits(ids), cpu.backend.logits(ids)) < QUANT_REL, quant


def test_long_prompt_runs_in_pieces_and_grows_the_cache(checkpoint, llmos):
    # 600 tokens: three pieces of the GPU's 256, and a cache that grows from 256 positions twice.
    cpu, gpu = pair(llmos, checkpoint("llama", max_position_embeddings=1024))
    assert cpu.backend.arch.max_position_embeddings == 1024
    ids = ids_for(cpu, 600, seed=1)
    a = cpu.generate(ids.tolist(), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    b = gpu.generate(ids.tolist(), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert b.token_ids == a.token_ids
    want, got = cpu.backend.logits(ids), gpu.backend.logits(ids)
    assert rel(got, want) < FLOAT32_REL


def test_beam_search_copies_caches_on_the_device(checkpoint, llmos):
    cpu, gpu = pair(llmos, checkpoint("qwen3"))
    ids = ids_for(cpu, 16, seed=2).tolist()
    kw = dict(max_new_tokens=12, num_beams=3, num_return_sequences=3, do_sample=False)
    a = cpu.generate(ids, **kw)
    b = gpu.generate(ids, **kw)
    assert [x.token_ids for x in b] == [x.token_ids for x in a]


def test_seeded_sampling_is_the_cpus(checkpoint, llmos):
    # Sampling runs on the host from the logits the GPU returns: the same seed draws the same
    # tokens unless a draw lands within float error of a boundary, which 16 draws do not reach.
    cpu, gpu = pair(llmos, checkpoint("llama"))
    ids = ids_for(cpu, 16, seed=3).tolist()
    kw = dict(max_new_tokens=16, min_new_tokens=16, do_sample=True, temperature=0.8, top_k=50, top_p=0.9, seed=7)
    assert gpu.generate(ids, **kw).token_ids == cpu.generate(ids, **kw).token_ids


def test_the_serving_engine_runs_a_gpu_model(checkpoint, llmos):
    cpu, gpu = pair(llmos, checkpoint("llama"))
    prompts = [ids_for(cpu, n, seed=n).tolist() for n in (5, 11, 17)]
    want = [cpu.generate(p, max_new_tokens=10, min_new_tokens=10, do_sample=False).token_ids for p in prompts]
    with llmos.Engine(gpu) as engine:
        handles = [engine.submit(p, max_new_tokens=10, min_new_tokens=10, do_sample=False) for p in prompts]
        got = [h.result().token_ids for h in handles]
    assert got == want


def test_unsupported_architectures_stay_on_the_cpu_or_are_refused(checkpoint, llmos):
    path = str(checkpoint("mixtral"))
    with pytest.raises(DeviceUnavailableError, match="mixture-of-experts") as e:
        llmos.load(path, threads=1, device="cuda")
    assert e.value.field == "device"
    assert llmos.load(path, threads=1, device="auto").device == "cpu"


def test_auto_picks_the_gpu(checkpoint, llmos):
    assert llmos.load(str(checkpoint("llama")), threads=1).device == "cuda:0"


def test_decode_graphs_give_the_launches_results(checkpoint, llmos, monkeypatch):
    # The captured decode step (the default) against the same ops launched one by one
    # (LLMOS_CUDA_GRAPHS=0): the same kernels with the same splits, so the same bits. 250 prompt
    # tokens and 30 new ones cross the cache's first 256 positions (the step is captured again
    # for the grown cache) and the 256 keys of one attention split; a sliding-window model
    # checks the window against the position the graph reads on the device.
    path = str(checkpoint("mistral_swa", max_position_embeddings=1024))
    graphs = llmos.load(path, threads=1, device="cuda")
    monkeypatch.setenv("LLMOS_CUDA_GRAPHS", "0")
    plain = llmos.load(path, threads=1, device="cuda")
    ids = ids_for(graphs, 250, seed=4).tolist()
    kw = dict(max_new_tokens=30, min_new_tokens=30, do_sample=False, logprobs=True)
    a, b = graphs.generate(ids, **kw), plain.generate(ids, **kw)
    assert a.token_ids == b.token_ids
    assert np.array_equal(np.asarray(a.logprobs, np.float32), np.asarray(b.logprobs, np.float32))
    cpu = llmos.load(path, threads=2, device="cpu")
    assert cpu.generate(ids, **kw).token_ids == a.token_ids
