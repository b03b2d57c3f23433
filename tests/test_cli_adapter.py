"""A LoRA adapter folder (`llmos train --lora ... --adapter-only`) is usable from the command
line: alone as the model (it names its base) or with --adapter, in generate, run and eval, with
the same results as llmos.load(base, adapter=...). A merged model keeps the base's dtype, as
`llmos train --help` says."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from checkpoints import CORPUS

PROMPT = "Once upon a time"


def _llmos(*args, cwd, env=None):
    out = subprocess.run([sys.executable, "-m", "llmos", *args], capture_output=True, text=True, cwd=cwd,
                         env=env, timeout=300)
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    return out


@pytest.fixture
def adapter(checkpoint, tmp_path, monkeypatch):
    """(base folder, ./fr-adapter in tmp_path) after a few LoRA steps that move the logits."""
    from llmos.train import train

    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))
    base = checkpoint("llama")
    data = tmp_path / "data.txt"
    data.write_text(CORPUS * 2, encoding="utf-8")
    train(str(base), str(data), out=str(tmp_path / "fr-adapter"), lora="r=4,alpha=8", keep_adapter=True,
          max_steps=4, lr=2e-2, max_seq_len=32, batch_size=4, progress=False)
    return base, tmp_path / "fr-adapter"


def test_an_adapter_runs_from_the_cli_as_in_python(adapter, tmp_path, llmos):
    from llmos.evaluate import perplexity

    base, folder = adapter
    merged = llmos.load(str(base), adapter=str(folder), threads=1)
    sampling = ["--max-new-tokens", "10", "--temperature", "1.0", "--seed", "3"]
    expected = merged.generate(PROMPT, max_new_tokens=10, do_sample=True, temperature=1.0, seed=3).text
    for args in (["generate", "--model", "./fr-adapter"], ["generate", "--model", str(base), "--adapter", "./fr-adapter"]):
        out = _llmos(*args, PROMPT, *sampling, cwd=tmp_path)
        assert out.returncode == 0 and out.stdout == expected + "\n", (args, out.stdout, out.stderr[-1000:])
    out = _llmos("run", "--adapter", "./fr-adapter", PROMPT, *sampling, cwd=tmp_path)  # on the adapter's base
    assert out.returncode == 0 and out.stdout == PROMPT + expected + "\n", out.stderr[-1000:]

    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"text": CORPUS[:300]}) + "\n", encoding="utf-8")
    want = perplexity(merged, [CORPUS[:300]])["perplexity"]
    without = perplexity(llmos.load(str(base), threads=1), [CORPUS[:300]])["perplexity"]
    assert abs(want - without) > 1e-3 * without  # the adapter changes the model: the test can tell
    for args in (["./fr-adapter"], [str(base), "--adapter", "./fr-adapter"]):
        out = _llmos("eval", *args, "--metric", "perplexity", "--data", str(texts), "--json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-1000:]
        assert json.loads(out.stdout)["score"] == pytest.approx(want, rel=1e-9)


def test_an_adapter_whose_base_is_gone_says_how_to_name_it(adapter, tmp_path):
    _, folder = adapter
    moved = tmp_path / "elsewhere" / "fr-adapter"
    shutil.copytree(folder, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model"].update(path=str(tmp_path / "gone"), name_or_path="./gone")
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    out = _llmos("generate", "--model", str(moved), PROMPT, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert "base model" in out.stderr and "is not found" in out.stderr and "--adapter" in out.stderr


@pytest.mark.parametrize("lora", [True, False], ids=["lora-merged", "full"])
def test_a_trained_model_keeps_the_base_dtype(lora, checkpoint, tmp_path):
    from safetensors import safe_open

    from llmos.cli import main

    base = checkpoint("llama", "bfloat16")
    data = tmp_path / "data.txt"
    data.write_text(CORPUS, encoding="utf-8")
    out = tmp_path / "trained"
    args = ["train", str(base), "--data", str(data), "--out", str(out), "--max-steps", "1", "--max-seq-len", "32",
            "--batch-size", "4", "--no-resume", "--quiet"] + (["--lora", "r=2,alpha=4"] if lora else [])
    assert main(args) == 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes == {"BF16"}
    assert json.loads((out / "config.json").read_text()).get("dtype") == "bfloat16"
    assert os.path.isfile(out / "tokenizer.json")


def test_quantize_and_export_onnx_take_an_adapter(adapter, tmp_path, llmos):
    import numpy as np

    base, folder = adapter
    merged = llmos.load(str(base), adapter=str(folder), threads=1)
    ids = merged.tokenizer.encode(CORPUS[:200])
    want = merged.logits(ids)
    assert np.abs(want - llmos.load(str(base), threads=1).logits(ids)).max() > 1e-2  # the adapter matters

    out = _llmos("quantize", "./fr-adapter", "--to", "int8", "--quiet", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("wrote fr-adapter:int8 "), out.stderr[-1000:]
    q = llmos.load("fr-adapter:int8", threads=1).logits(ids)
    # The same float weights quantized the same way: the blocks, hence the logits, are identical.
    np.testing.assert_array_equal(q, llmos.load(str(base), adapter=str(folder), quant="int8", threads=1).logits(ids))

    out = _llmos("export-onnx", str(base), "./onnx", "--adapter", "./fr-adapter", "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-1000:]
    np.testing.assert_allclose(llmos.load(str(tmp_path / "onnx"), threads=1).logits(ids), want, atol=1e-4, rtol=0)

    data = tmp_path / "data.txt"
    out = _llmos("train", "./fr-adapter", "--data", str(data), "--no-resume", "--quiet", cwd=tmp_path)
    assert out.returncode == 2 and "is a LoRA adapter, not a model" in out.stderr
