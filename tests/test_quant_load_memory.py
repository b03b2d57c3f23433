"""Quantizing at load never holds the float weights: the peak RSS of llmos.load(float
checkpoint, quant=...) stays within the quantized weights plus a small slack.

Metric: peak RSS growth over the load, measured in a fresh process (VmHWM after
/proc/self/clear_refs "5" resets it, minus VmRSS just before the load). Bound: the quantized
bytes (codes + scales of every matrix) + the largest float tensor + 24 MB (the interpreter's
allocations during load, the tokenizer, the float norms and the core's runtime buffers).
The checkpoint's 32768 x 1024 float32 embedding (128 MiB) is most of it. Measured (MB):
quantized 40 (int8) / 37 (int4), bound 192 / 189; a loader that converts the embedding whole
to float32 before quantizing holds it twice (its file pages and the copy) and grows 307;
quantizing slab by slab grows 99 / 96.
"""

import json
import os
import subprocess
import sys

import pytest

SLACK_MB = 24

CHILD = r"""
import json, sys
import llmos

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise SystemExit(field + " missing")

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS
before = status("VmRSS")
m = llmos.load(sys.argv[1], quant=sys.argv[2], threads=2)
peak = status("VmHWM")
qbytes = sum(sum(a.nbytes for a in mat[4:] if a is not None) for mat in m.backend.quantized_matrices())
print(json.dumps({"growth_mb": peak - before, "quantized_mb": qbytes / 2**20}))
"""


@pytest.fixture(scope="module")
def big_embedding(checkpoint):
    # Few small layers and one large embedding: the largest tensor dominates the float weights.
    return checkpoint("qwen2", "float32", vocab_size=32768, hidden_size=1024, num_hidden_layers=1,
                      num_attention_heads=8, num_key_value_heads=2, intermediate_size=1024,
                      tie_word_embeddings=True)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantizing_at_load_does_not_hold_the_float_weights(big_embedding, quant):
    largest_mb = 32768 * 1024 * 4 / 2**20
    out = subprocess.run([sys.executable, "-c", CHILD, str(big_embedding), quant], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    bound = r["quantized_mb"] + largest_mb + SLACK_MB
    assert r["growth_mb"] < bound, (f"{quant}: load grew RSS by {r['growth_mb']:.0f} MB, over quantized "
                                    f"{r['quantized_mb']:.0f} + largest float tensor {largest_mb:.0f} + {SLACK_MB}")
