"""SentencePiece-style vocabularies for the GGUF tests: a Llama 2 / Mistral style tokenizer.json
(BPE with byte fallback over "▁"-marked text) trained with `tokenizers` on the test corpus, and
the GGUF token list llama.cpp's converter writes for such a vocabulary (tokens, scores, types).

Layout of the trained tokenizer, as the Llama 2 tokenizer.json has it: <unk>, <s>, </s>, then the
256 byte tokens <0x00>..<0xFF>, then the pieces in the order the BPE trainer created them (single
characters first, then one piece per merge). The normalizer puts "▁" before the text and for every
space (Prepend + Replace); the decoder undoes it (Replace, ByteFallback, Fuse, Strip one space).
"""

from __future__ import annotations

import json
from pathlib import Path

from checkpoints import CORPUS

SPECIALS = ["<unk>", "<s>", "</s>"]
BYTES = [f"<0x{i:02X}>" for i in range(256)]
N_FIXED = len(SPECIALS) + len(BYTES)


def llama_style_tokenizer(vocab_size: int):
    """A `tokenizers.Tokenizer` of exactly `vocab_size` tokens (padded with <extra_N> pieces if the
    corpus gives fewer merges)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    norm = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = norm
    # SentencePiece keeps "▁" at the start of pieces: train word by word
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - N_FIXED, min_frequency=1, show_progress=False,
                                  limit_alphabet=60)
    trainer_tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    pieces = [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1])]
    pieces += [f"<extra_{i}>" for i in range(vocab_size - N_FIXED - len(pieces))]
    vocab = {t: i for i, t in enumerate(SPECIALS + BYTES + pieces)}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = norm
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    assert tok.get_vocab_size() == vocab_size
    return tok


def with_llama_style_tokenizer(folder: str | Path, out: str | Path) -> Path:
    """A copy of checkpoint `folder` whose tokenizer is llama_style_tokenizer of its vocab size
    (bos <s>, eos </s>, the chat template kept)."""
    import shutil

    folder, out = Path(folder), Path(out)
    shutil.copytree(folder, out)
    cfg = json.loads((out / "config.json").read_text())
    llama_style_tokenizer(cfg["vocab_size"]).save(str(out / "tokenizer.json"))
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    tok_cfg.update(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token=None)
    tok_cfg.pop("added_tokens_decoder", None)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    cfg.update(bos_token_id=1, eos_token_id=2, pad_token_id=None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("generation_config.json", "special_tokens_map.json"):
        (out / name).unlink(missing_ok=True)
    return out


def gguf_vocab(tok_json: dict) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, token types) as llama.cpp's converter writes a SentencePiece BPE vocabulary:
    a SentencePiece BPE model scores each piece minus its merge rank, so pieces score -id here
    (the trainer numbers them in merge order); special and byte tokens score 0. Types: 2 unknown,
    3 control, 6 byte, 4 a non-special added token, else 1."""
    vocab = dict(tok_json["model"]["vocab"])
    added = {t["content"]: t for t in tok_json.get("added_tokens", [])}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    unk = tok_json["model"].get("unk_token")
    types, scores = [], []
    for i, t in enumerate(tokens):
        if t == unk:
            types.append(2)
        elif t in added:
            types.append(3 if added[t]["special"] else 4)
        elif t in BYTES:
            types.append(6)
        else:
            types.append(1)
        scores.append(-float(i) if types[-1] == 1 else 0.0)
    return tokens, scores, types
