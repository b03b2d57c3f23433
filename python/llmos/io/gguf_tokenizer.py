"""The `tokenizers` tokenizer of a GGUF file's vocabulary (the tokenizer.ggml.* metadata), built to
tokenize as llama.cpp does for that vocabulary type:

* "gpt2": byte-level BPE; the vocabulary and merges as the file has them, the pre-tokenizer
  regexes of its tokenizer.ggml.pre (llama.cpp's llama-vocab.cpp and unicode.cpp: "gpt-2",
  "llama-bpe" / "llama3", "qwen2", and "default", llama.cpp's own chain of four).
* "llama": SentencePiece BPE (Llama 2, Mistral, Gemma...): tokens, scores and token types, no
  merges. llama.cpp's tokenizer starts from the UTF-8 characters and repeatedly joins the
  adjacent pair whose concatenation is a token with the highest score (the leftmost on a tie),
  then spells every symbol that is not a token in its <0xNN> byte tokens. That is a BPE whose
  merges are every pair (a, b) with a, b and a + b normal tokens, ranked by the score of a + b
  (ties: the lower id first), with byte fallback: the merges transformers derives for the same
  vocabularies. Spaces become "▁"; add_space_prefix (default true) puts one "▁" before every
  run of text that starts the input or follows a special token, as llama.cpp does (and the
  Llama 2 tokenizer.json's Prepend normalizer). Decoding maps "▁" back to a space, byte tokens
  to their bytes, and drops that first space.

Every count read from the file is checked against llmos.limits before it sizes anything.
"""

from __future__ import annotations

from llmos import limits
from llmos.errors import ModelFormatError

MODELS = ("gpt2", "llama")  # tokenizer.ggml.model values llmos builds

# tokenizer.ggml.pre -> the pre-tokenizer regex of that family (llama.cpp's llama-vocab.cpp).
_PRE_REGEX = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
_PRE_REGEX["llama3"] = _PRE_REGEX["llama-bpe"]
_GPT2_PRE = ("gpt-2", "gpt2")
# llama.cpp's "default" BPE pre-tokenizer: these regexes applied one after the other, each
# splitting the pieces the previous one left (what a file whose tokenizer the converter did not
# recognise gets)
_DEFAULT_PRE = (r"[\p{P}\$\+<=>\^~\|]+",
                r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
                r"\p{N}+", r"[0-9][0-9][0-9]")

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"  # SentencePiece's "▁"


def tokenizer_json(g) -> str:
    """tokenizer.json text for GgufFile `g`."""
    model = g.value("tokenizer.ggml.model", required=True)
    if model not in MODELS:
        raise ModelFormatError(f"{g.path}: tokenizer.ggml.model={model!r} is not supported; supported: "
                               f"{', '.join(repr(m) for m in MODELS)} (byte-level BPE and SentencePiece BPE); "
                               "convert from the Hugging Face folder instead", file=g.path,
                               field="tokenizer.ggml.model")
    tokens = _strings(g, "tokenizer.ggml.tokens", g.value("tokenizer.ggml.tokens", required=True))
    types = _per_token(g, "tokenizer.ggml.token_type", len(tokens), NORMAL)
    tok = _byte_level_bpe(g, tokens) if model == "gpt2" else _sentencepiece_bpe(g, tokens, types)
    # llama.cpp adds BOS by default to SentencePiece vocabularies, not to byte-level BPE ones
    _add_special_tokens(g, tok, tokens, types, add_bos_default=(model == "llama"))
    return tok.to_str()


def _strings(g, key: str, values) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ModelFormatError(f"{g.path}: {key} is not a list of strings", file=g.path, field=key)
    limits.check("gguf_max_vocab", len(values), what=f"{g.path}: {key}")
    return values


def _per_token(g, key: str, n: int, default):
    """The per-token array `key` (token_type, scores): one entry per token."""
    values = g.value(key)
    if values is None:
        return [default] * n
    if not isinstance(values, list) or len(values) != n:
        got = f"{len(values)} entries" if isinstance(values, list) else type(values).__name__
        raise ModelFormatError(f"{g.path}: {key} has {got} for {n} tokens", file=g.path, field=key)
    return values


def _byte_level_bpe(g, tokens: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    merges = _strings(g, "tokenizer.ggml.merges", g.value("tokenizer.ggml.merges", []))
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep:
            raise ModelFormatError(f"{g.path}: merge {m!r} is not 'A B'", file=g.path, field="tokenizer.ggml.merges")
        pairs.append((a, b))
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    pre = g.value("tokenizer.ggml.pre", "default")
    if pre in _GPT2_PRE:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pre == "default":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _DEFAULT_PRE]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif pre in _PRE_REGEX:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_PRE_REGEX[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        raise ModelFormatError(f"{g.path}: tokenizer.ggml.pre={pre!r} is not supported; supported: "
                               f"{', '.join(sorted({'default', *_GPT2_PRE, *_PRE_REGEX}))}", file=g.path,
                               field="tokenizer.ggml.pre")
    tok.decoder = decoders.ByteLevel()
    return tok


def sentencepiece_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Every pair (a, b) of normal tokens whose concatenation is a normal token, best first: the
    higher score of a + b, then its lower id (then the shorter a, for a fixed order)."""
    normal = {t: i for i, t in enumerate(tokens) if types[i] in (NORMAL, USER_DEFINED)}
    ranked = []
    for piece, i in normal.items():
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in normal and b in normal:
                ranked.append((-float(scores[i]), i, k, a, b))
    ranked.sort(key=lambda r: r[:3])
    return [(a, b) for *_, a, b in ranked]


def _sentencepiece_bpe(g, tokens: list[str], types: list[int]):
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = _per_token(g, "tokenizer.ggml.scores", len(tokens), 0.0)
    if not all(isinstance(s, (int, float)) for s in scores):
        raise ModelFormatError(f"{g.path}: tokenizer.ggml.scores is not a list of numbers", file=g.path,
                               field="tokenizer.ggml.scores")
    vocab = {t: i for i, t in enumerate(tokens)}
    unk_id = g.value("tokenizer.ggml.unknown_token_id")
    if unk_id is None:
        unk_id = next((i for i, ty in enumerate(types) if ty == UNKNOWN), None)
    unk = tokens[int(unk_id)] if unk_id is not None and 0 <= int(unk_id) < len(tokens) else None
    tok = Tokenizer(models.BPE(vocab=vocab, merges=sentencepiece_merges(tokens, scores, types), unk_token=unk,
                               fuse_unk=True, byte_fallback=True))
    space_prefix = bool(g.value("tokenizer.ggml.add_space_prefix", True))
    # A normalizer runs on each run of text between added tokens: the prefix goes before every one.
    steps = [normalizers.Prepend(SPACE)] if space_prefix else []
    tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", SPACE)])
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if space_prefix else []))
    return tok


def _add_special_tokens(g, tok, tokens: list[str], types: list[int], *, add_bos_default: bool) -> None:
    """Control, unknown (3, 2) and user-defined (4) tokens match whole, before the model; the
    BOS / EOS the file asks to add (add_bos_token, add_eos_token) are added."""
    from tokenizers import AddedToken, processors

    added = [AddedToken(tokens[i], special=(ty != USER_DEFINED), normalized=False)
             for i, ty in enumerate(types) if ty in (CONTROL, USER_DEFINED, UNKNOWN)]
    tok.add_tokens(added)
    around = []
    for key, where in (("bos", 0), ("eos", 1)):
        tid = g.value(f"tokenizer.ggml.{key}_token_id")
        default = add_bos_default if key == "bos" else False
        if g.value(f"tokenizer.ggml.add_{key}_token", default) and tid is not None and 0 <= int(tid) < len(tokens):
            around.append((where, tokens[int(tid)], int(tid)))
    if around:
        bos = [t for w, t, _ in around if w == 0]
        eos = [t for w, t, _ in around if w == 1]
        single = " ".join(bos + ["$A"] + eos)
        pair = " ".join(bos + ["$A"] + eos + bos + ["$B"] + eos)
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=sorted({(t, i) for _, t, i in around}))
