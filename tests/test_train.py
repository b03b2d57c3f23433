"""llmos.train: full fine-tuning, LoRA (merged and as an adapter), resuming, from-scratch, the
loss masks of chat and prompt/completion data, and bad input.

Every run is a few steps on the tiny random checkpoints of tests/checkpoints.py; the trained
model must load in the C++ core with logits equal to the torch model that was trained.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from checkpoints import CORPUS, IM_END_ID

PROBE = "The quick brown fox jumps over the lazy dog. Once upon a time there was a robot."


def _text_file(tmp_path, name="data.txt", repeat=2):
    p = tmp_path / name
    p.write_text(CORPUS * repeat, encoding="utf-8")
    return p


def _logits_match(torch_model, folder, load_llmos, text=PROBE, atol=1e-4):
    import torch

    m = load_llmos(folder)
    ids = m.tokenizer.encode(text)
    ours = m.logits(ids)
    torch_model = torch_model.eval()
    with torch.no_grad():
        ref = torch_model(torch.tensor([ids])).logits[0].float().numpy()
    np.testing.assert_allclose(ours, ref, atol=atol, rtol=0)
    return m


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- full fine-tuning and LoRA ------------------------------------------------------------------


def test_full_finetune_lowers_the_loss_and_loads_in_the_core(checkpoint, tmp_path, load_llmos):
    from llmos.train import train

    base = checkpoint("llama")
    data = _text_file(tmp_path)
    losses = []
    # One batch holds the whole (tiny) dataset, so every step sees the same tokens.
    r = train(str(base), str(data), out=str(tmp_path / "ft"), epochs=12, lr=3e-3, max_seq_len=64, batch_size=32,
              progress=False, on_step=lambda step, loss: losses.append(loss), eval_data=str(data))
    assert r.steps == 12 and len(losses) == 12
    assert losses[-1] < 0.7 * losses[0]
    assert r.eval_loss is not None and r.eval_loss < losses[0]
    out = tmp_path / "ft"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json", "README.md"):
        assert (out / f).is_file(), f
    m = _logits_match(r.model, out, load_llmos)
    # The chat template travels with the model.
    assert m.tokenizer.chat_template == load_llmos(base).tokenizer.chat_template


def test_lora_merged_matches_the_trained_adapter(checkpoint, tmp_path, load_llmos):
    import torch
    from llmos.train.lora import lora_modules
    from llmos.train import train

    base = checkpoint("llama")
    r = train(str(base), str(_text_file(tmp_path)), out=str(tmp_path / "merged"), lora="r=4,alpha=8",
              epochs=3, lr=1e-2, max_seq_len=64, batch_size=32, progress=False)
    mods = lora_modules(r.model)
    assert len(mods) == 2 * 7  # q k v o gate up down in both layers
    assert any(float(m.lora_B.detach().abs().sum()) > 0 for m in mods.values())
    # Only the adapters trained: every base weight is the checkpoint's.
    base_model = __import__("transformers").AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    trained = {k.replace(".base.", "."): v for k, v in r.model.state_dict().items() if "lora_" not in k}
    for k, v in base_model.state_dict().items():
        assert torch.equal(trained[k], v), k
    m = _logits_match(r.model, tmp_path / "merged", load_llmos)
    assert not np.allclose(m.logits(m.tokenizer.encode(PROBE)), load_llmos(base).logits(m.tokenizer.encode(PROBE)))


def test_adapter_kept_and_applied_later(checkpoint, tmp_path, load_llmos):
    from llmos.adapters.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, apply_adapter
    from llmos.train import train

    base = checkpoint("llama")
    adapter = tmp_path / "adapter"
    r = train(str(base), str(_text_file(tmp_path)), out=str(adapter), lora="r=4,alpha=8", keep_adapter=True,
              epochs=2, lr=1e-2, max_seq_len=64, batch_size=32, progress=False)
    assert r.adapter and sorted(p.name for p in adapter.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and len(cfg["base_model"]["weights_sha256"]) == 64
    out = apply_adapter(str(base), str(adapter), str(tmp_path / "applied"))
    _logits_match(r.model, out, load_llmos)


def test_adapter_for_another_base_is_refused(checkpoint, tmp_path):
    from llmos.errors import AdapterError
    from llmos.adapters.lora import apply_adapter
    from llmos.train import train

    adapter = tmp_path / "adapter"
    train(str(checkpoint("llama")), str(_text_file(tmp_path)), out=str(adapter), lora="r=2,alpha=4",
          keep_adapter=True, max_steps=1, max_seq_len=32, batch_size=4, progress=False)
    # Same architecture, other weights: the identity check catches it.
    with pytest.raises(AdapterError, match="different base model") as e:
        apply_adapter(str(checkpoint("llama", seed=7)), str(adapter), str(tmp_path / "x"))
    assert "trained for" in str(e.value)
    # Other shapes (GQA: k/v projections are half as tall).
    with pytest.raises(AdapterError, match=r"tensor .*k_proj.* is \[32, 64\], the adapter needs \[64, 64\]"):
        apply_adapter(str(checkpoint("llama_gqa")), str(adapter), str(tmp_path / "y"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # Not an adapter at all.
    with pytest.raises(AdapterError, match="not a LoRA adapter"):
        apply_adapter(str(checkpoint("llama")), str(checkpoint("llama")), str(tmp_path / "z"))


# ---- resuming ------------------------------------------------------------------------------------


def test_interrupted_run_resumes_to_the_same_weights(checkpoint, tmp_path):
    import torch
    from llmos.train import STATE_FILE, train

    base, data = checkpoint("llama"), _text_file(tmp_path, repeat=3)
    kw = dict(epochs=2, lr=2e-3, max_seq_len=32, batch_size=4, progress=False, seed=3)
    straight = train(str(base), str(data), out=str(tmp_path / "a"), **kw)
    assert straight.steps > 8  # several steps per epoch, so the resumed run must re-find its batch

    ckpt = tmp_path / "ckpt"

    def stop(step, loss):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(str(base), str(data), out=str(tmp_path / "b"), checkpoint_dir=str(ckpt), on_step=stop, **kw)
    state = torch.load(ckpt / STATE_FILE, weights_only=True)
    assert state["step"] == 5 and not (tmp_path / "b").exists()
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")]  # no temp file left behind
    seen = []
    resumed = train(str(base), str(data), out=str(tmp_path / "b"), checkpoint_dir=str(ckpt),
                    on_step=lambda s, loss: seen.append(s), **kw)
    assert seen[0] == 6 and resumed.steps == straight.steps
    a, b = _weights(straight.model), _weights(resumed.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert not ckpt.exists()  # finished runs clean up

    # A checkpoint of another run is not silently mixed in.
    with pytest.raises(KeyboardInterrupt):
        train(str(base), str(data), out=str(tmp_path / "c"), checkpoint_dir=str(ckpt), on_step=stop, **kw)
    from llmos.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="different training run"):
        train(str(base), str(data), out=str(tmp_path / "c"), checkpoint_dir=str(ckpt), **{**kw, "lr": 1e-3})


# ---- loss masks ----------------------------------------------------------------------------------


CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one, please?"},
    {"role": "assistant", "content": "Green, like the sea at dawn."},
]


def _spans(ex):
    """Runs of consecutive target positions as (start, end)."""
    out, start = [], None
    for i, t in enumerate(ex.labels + [-100]):
        if t != -100 and start is None:
            start = i
        elif t == -100 and start is not None:
            out.append((start, i))
            start = None
    return out


def test_chat_loss_is_on_assistant_tokens_only(checkpoint):
    from llmos.text.tokenizer import Tokenizer
    from llmos.train.data import chat_example

    tok = Tokenizer.from_dir(checkpoint("llama"))
    ex = chat_example(tok, CHAT)
    # The ids are the tokenized rendering, and the labels are the ids where they count.
    rendered = tok.apply_chat_template(CHAT, add_generation_prompt=False)
    assert tok.decode(ex.input_ids, skip_special_tokens=False) == rendered
    assert all(label in (-100, i) for label, i in zip(ex.labels, ex.input_ids))
    spans = _spans(ex)
    texts = [tok.decode(ex.input_ids[a:b], skip_special_tokens=False) for a, b in spans]
    assert texts == ["Blue.<|im_end|>\n", "Green, like the sea at dawn.<|im_end|>\n"]
    assert IM_END_ID in ex.labels
    # What precedes each reply is exactly the prompt the runtime builds to ask for it.
    for (a, _), upto in zip(spans, (3, 5)):
        prompt = tok.encode(tok.apply_chat_template(CHAT[:upto - 1], add_generation_prompt=True),
                            add_special_tokens=False)
        assert ex.input_ids[:a] == prompt


def test_prompt_completion_loss_is_on_the_completion(checkpoint):
    from llmos.text.tokenizer import Tokenizer
    from llmos.train.data import prompt_completion_example

    tok = Tokenizer.from_dir(checkpoint("llama"))
    ex = prompt_completion_example(tok, "Q: what is two and two?\nA:", " four")
    (a, b), = _spans(ex)
    assert ex.input_ids[:a] == tok.encode("Q: what is two and two?\nA:")
    assert tok.decode(ex.input_ids[a:b], skip_special_tokens=False) == " four<|endoftext|>"
    assert b == len(ex.input_ids)


def test_chat_data_trains_through_the_cli_and_registers(checkpoint, tmp_path, monkeypatch, load_llmos, capsys):
    from llmos import registry
    from llmos.cli import main

    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"messages": CHAT}) for _ in range(4)) + "\n", encoding="utf-8")
    rc = main(["train", str(checkpoint("llama")), "--data", str(data), "--lora", "r=2,alpha=4", "--max-steps", "2",
               "--batch-size", "2", "--max-seq-len", "128", "--out", "tiny-chat", "--quiet", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["out"] == "tiny-chat:latest" and result["steps"] == 2
    folder = registry.resolve("tiny-chat")
    entry = registry.show("tiny-chat")
    assert entry.chat_template and entry.family == "llama"
    load_llmos(folder).chat([{"role": "user", "content": "hi"}], max_new_tokens=3)
    assert not (tmp_path / "home" / "training" / "tiny-chat").exists()  # its checkpoint is gone


# ---- from scratch --------------------------------------------------------------------------------


def test_from_scratch_builds_a_tokenizer_and_a_model(tmp_path, load_llmos):
    from llmos.train import train_from_scratch

    data = _text_file(tmp_path, repeat=4)
    cfg = tmp_path / "small.json"
    cfg.write_text(json.dumps({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 2, "vocab_size": 300, "max_position_embeddings": 64,
                               "generation": {"do_sample": False, "max_new_tokens": 5}}))
    r = train_from_scratch(str(cfg), str(data), str(data), out=str(tmp_path / "new"), max_steps=6, max_seq_len=64,
                           batch_size=4, progress=False)
    out = tmp_path / "new"
    m = _logits_match(r.model, out, load_llmos)
    assert m.config.vocab_size == len(m.tokenizer) <= 300
    assert m.tokenizer.decode(m.tokenizer.encode("Once upon a time")) == "Once upon a time"
    assert m.tokenizer.chat_template and "<|im_start|>" in m.apply_chat_template([{"role": "user", "content": "x"}])
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["max_new_tokens"] == 5 and len(gen["eos_token_id"]) == 2
    assert len(m.generate("Once", seed=0).token_ids) <= 5


# ---- bad input -------------------------------------------------------------------------------------


def test_bad_jsonl_line_names_file_and_line(checkpoint, tmp_path, capsys):
    from llmos.errors import DatasetError
    from llmos.train import train
    from llmos.cli import main

    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "fine"}\n\n{"text": "also fine"}\n{"text": "broken"\n', encoding="utf-8")
    with pytest.raises(DatasetError) as e:
        train(str(checkpoint("llama")), str(data), out=str(tmp_path / "x"), progress=False)
    assert e.value.line == 4 and e.value.file == str(data)
    assert f"{data}:4: not valid JSON" in str(e.value)
    rc = main(["train", str(checkpoint("llama")), "--data", str(data), "--out", str(tmp_path / "x"), "--no-resume"])
    assert rc == 2 and f"{data}:4: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    other = tmp_path / "odd.jsonl"
    other.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"question": "?"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"odd.jsonl:2: expected 'messages', 'prompt'\+'completion' or 'text'"):
        train(str(checkpoint("llama")), str(other), out=str(tmp_path / "x"), progress=False)


def test_bad_options_fail_before_training(checkpoint, tmp_path):
    from llmos.errors import InvalidInputError
    from llmos.train import train

    data = _text_file(tmp_path)
    with pytest.raises(InvalidInputError, match="--lora: unknown key 'rank'"):
        train(str(checkpoint("llama")), str(data), lora="rank=4", progress=False)
    with pytest.raises(InvalidInputError, match="keep_adapter needs LoRA"):
        train(str(checkpoint("llama")), str(data), keep_adapter=True, progress=False)
    with pytest.raises(InvalidInputError, match="epochs"):
        train(str(checkpoint("llama")), str(data), epochs=0, progress=False)


def test_full_disk_while_writing_loses_nothing(checkpoint, tmp_path, monkeypatch):
    import errno

    import transformers
    from llmos.errors import DiskFullError
    from llmos.train import STATE_FILE, train

    base, data, ckpt = checkpoint("llama"), _text_file(tmp_path), tmp_path / "ckpt"
    kw = dict(out=str(tmp_path / "out"), checkpoint_dir=str(ckpt), max_steps=3, max_seq_len=32, batch_size=4,
              progress=False)

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as mp:
        mp.setattr(transformers.PreTrainedModel, "save_pretrained", full)
        with pytest.raises(DiskFullError, match="disk is full"):
            train(str(base), str(data), **kw)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no half-written folder
    assert (ckpt / STATE_FILE).is_file()  # the finished training is kept...
    steps = []
    r = train(str(base), str(data), on_step=lambda s, loss: steps.append(s), **kw)
    assert steps == [] and r.steps == 3 and (tmp_path / "out" / "model.safetensors").is_file()  # ...and only written
    assert r.train_loss is not None


@pytest.mark.parametrize("kind", ["llama", "gpt2"])  # gpt2: Conv1D weights, merged transposed
def test_load_with_an_adapter_merges_in_memory(kind, checkpoint, tmp_path, monkeypatch, llmos):
    """llmos.load(base, adapter=...) gives the trained model's logits and writes no merged
    checkpoint: only the base's identity hash is cached."""
    import torch
    from llmos.adapters.lora import apply_adapter
    from llmos.errors import AdapterError
    from llmos.train import train

    home = tmp_path / "home"
    monkeypatch.setenv("LLMOS_HOME", str(home))
    base, adapter = checkpoint(kind), tmp_path / "adapter"
    r = train(str(base), str(_text_file(tmp_path)), out=str(adapter), lora="r=2,alpha=4", keep_adapter=True,
              max_steps=2, lr=1e-2, max_seq_len=32, batch_size=4, progress=False)
    m = llmos.load(str(base), threads=1, adapter=str(adapter))
    ids = m.tokenizer.encode(PROBE)
    with torch.no_grad():
        ref = r.model.eval()(torch.tensor([ids])).logits[0].float().numpy()
    np.testing.assert_allclose(m.logits(ids), ref, atol=1e-4, rtol=0)
    assert not np.allclose(m.logits(ids), llmos.load(str(base), threads=1).logits(ids), atol=1e-4)
    on_disk = llmos.load(apply_adapter(str(base), str(adapter), str(tmp_path / "applied")), threads=1)
    np.testing.assert_allclose(m.logits(ids), on_disk.logits(ids), atol=1e-5, rtol=0)
    assert sorted(p.name for p in (home / "cache").iterdir()) == ["identity"]
    assert len(list((home / "cache" / "identity").iterdir())) == 1
    assert llmos.load(str(base), threads=1, adapter=str(adapter)).logits(ids).tolist() == m.logits(ids).tolist()
    with pytest.raises(AdapterError, match="different base model"):
        llmos.load(str(checkpoint(kind, seed=7)), adapter=str(adapter))


def test_a_resumed_run_reports_the_time_and_tokens_of_all_its_runs(checkpoint, tmp_path):
    """The summary of a resumed run (`wrote model ... (N steps, T s ...)`) counts the earlier
    runs too: their time and tokens are kept in the checkpoint."""
    import time

    from llmos.train import train

    base, data = checkpoint("llama"), _text_file(tmp_path, repeat=3)
    kw = dict(epochs=1, lr=2e-3, max_seq_len=32, batch_size=4, progress=False, seed=3)
    straight = train(str(base), str(data), out=str(tmp_path / "a"), **kw)
    assert straight.steps > 4

    slept = 0.75

    def slow_then_stop(step, loss):
        time.sleep(slept)
        if step == 3:
            raise KeyboardInterrupt

    kw.update(out=str(tmp_path / "b"), checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(KeyboardInterrupt):
        train(str(base), str(data), on_step=slow_then_stop, **kw)
    resumed = train(str(base), str(data), **kw)
    assert resumed.steps == straight.steps
    assert resumed.tokens == straight.tokens  # every step's tokens, counted once
    assert resumed.seconds >= 3 * slept  # the interrupted run's time is in the total
