"""llmos.text.tokenizer.Tokenizer against transformers.AutoTokenizer (5.24) on tiny saved tokenizers."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

import tokenizer_factory as tf

from llmos.errors import ChatTemplateError, ConfigError, InvalidInputError, TokenizerError
from llmos.text.tokenizer import Tokenizer, clean_up_tokenization

import transformers

TEXTS = [
    "",
    "Hello world!",
    " Hello",
    "  two  spaces  ",
    "\nnewline first\n\nand\ttabs",
    "I can't believe it's 2024; we've 3.14159 reasons.",
    "你好，世界！今天天气很好。",
    "東京は日本の首都です",
    "Emoji 😀😃 🚀🌍 👍🏽 🇫🇷 ❤️",
    "Ünïcödé àccents: café, naïve, Straße ½",
    "rare chars ꙮ 𝔘𝔫𝔦 ☃ \u200b zero width",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "Hi</s>there <s> x</s>",
    "<bos><start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
    "text<|endoftext|>more <unk> <pad>",
    "def f(x):\n    return x * 2  # comment",
]

KINDS = {
    "bytelevel": lambda d: tf.make_bytelevel_bpe(d),
    "bytelevel_bos": lambda d: tf.make_bytelevel_bpe(
        d,
        special_tokens=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token=None,
        add_bos_in_post_processor=True,
        chat_template=tf.LLAMA3_TEMPLATE,
    ),
    "llama": lambda d: tf.make_llama_style(d),
    "llama_legacy_normalizer": lambda d: tf.make_llama_style(d, legacy_normalizer=True),
    "llama_eos": lambda d: tf.make_llama_style(d, add_eos=True, extra_special_tokens=("[INST]", "[/INST]")),
    # transformers 5 rebuilds these as LlamaTokenizer instead of using tokenizer.json as written
    "llama_class_legacy_false": lambda d: tf.make_llama_style(
        d, legacy_normalizer=True, tokenizer_class="LlamaTokenizer", config_updates={"legacy": False}
    ),
    "llama_class_legacy_true": lambda d: tf.make_llama_style(
        d, legacy_normalizer=True, tokenizer_class="LlamaTokenizerFast", config_updates={"legacy": True}
    ),
    "llama_class_no_prefix": lambda d: tf.make_llama_style(
        d, tokenizer_class="LlamaTokenizer", config_updates={"add_prefix_space": False}
    ),
    "gemma": lambda d: tf.make_gemma_style(d),
    "gemma_class": lambda d: tf.make_gemma_style(d, tokenizer_class="GemmaTokenizer"),
    "llama_v4_layout": lambda d: tf.make_llama_style(d, legacy_layout=True),
    "bytelevel_v4_layout": lambda d: tf.make_bytelevel_bpe(d, legacy_layout=True),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {name: make(root / name) for name, make in KINDS.items()}


@pytest.fixture(scope="module")
def pair(saved):
    cache = {}

    def get(name):
        if name not in cache:
            path = saved[name]
            cache[name] = (Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(str(path)))
        return cache[name]

    return get


def _random_ids(rng: random.Random, ours: Tokenizer, n: int) -> list[int]:
    specials = sorted(ours.special_token_ids)
    byte_ids = sorted(ours.byte_fallback_ids)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.15 and specials:
            out.append(rng.choice(specials))
        elif r < 0.35 and byte_ids:
            out.append(rng.choice(byte_ids))
        else:
            out.append(rng.randrange(ours.vocab_size))
    return out


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_matches_auto_tokenizer(pair, kind):
    ours, ref = pair(kind)
    assert ours.vocab_size == len(ref) == len(ours)
    assert ours.special_tokens_map == ref.special_tokens_map
    assert ours.bos_token_id == ref.bos_token_id
    assert ours.eos_token_id == ref.eos_token_id
    assert ours.pad_token_id == ref.pad_token_id
    assert ours.special_token_ids == frozenset(ref.all_special_ids) | {
        i for i, t in ref.added_tokens_decoder.items() if t.special
    }
    assert ours.chat_template == ref.chat_template
    for text in TEXTS:
        for add in (True, False):
            expected = ref(text, add_special_tokens=add)["input_ids"]
            assert ours.encode(text, add_special_tokens=add) == expected, (text, add)
        ids = ref(text)["input_ids"]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    assert ours.encode_batch(TEXTS) == ref(TEXTS)["input_ids"]
    rng = random.Random(kind)
    for _ in range(40):
        ids = _random_ids(rng, ours, rng.randrange(1, 30))
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), ids
    for i in range(0, ours.vocab_size, 7):
        token = ours.id_to_token(i)
        assert token == ref.convert_ids_to_tokens(i)
        assert ours.token_to_id(token) == ref.convert_tokens_to_ids(token)


def test_bos_comes_from_post_processor_not_add_bos_token(tmp_path):
    """transformers 5 ignores add_bos_token when tokenizer.json exists: the post-processor decides."""
    no_bos = tf.make_llama_style(tmp_path / "a", add_bos=False, config_updates={"add_bos_token": True})
    with_bos = tf.make_llama_style(tmp_path / "b", add_bos=True, config_updates={"add_bos_token": False})
    for path, starts_with_bos in ((no_bos, False), (with_bos, True)):
        ours = Tokenizer.from_dir(path)
        ref = transformers.AutoTokenizer.from_pretrained(str(path))
        assert ours.encode("Hi there") == ref("Hi there")["input_ids"]
        assert (ours.encode("Hi there")[0] == ours.bos_token_id) is starts_with_bos
    data = json.loads((no_bos / "tokenizer.json").read_text())
    data["post_processor"] = None
    (no_bos / "tokenizer.json").write_text(json.dumps(data))
    ref = transformers.AutoTokenizer.from_pretrained(str(no_bos))
    assert Tokenizer.from_dir(no_bos).encode("Hi there") == ref("Hi there")["input_ids"]


def test_special_tokens_missing_from_tokenizer_json_are_added(tmp_path):
    # a brand-new token gets the next id; an existing vocabulary piece becomes a special token
    path = tf.make_bytelevel_bpe(
        tmp_path / "t",
        config_updates={"bos_token": "<|newbos|>", "additional_special_tokens": ["<|tool|>", "Hel"]},
    )
    ours = Tokenizer.from_dir(path)
    ref = transformers.AutoTokenizer.from_pretrained(str(path))
    assert len(ours) == len(ref) == 402
    for text in ("x<|newbos|>y<|tool|>z", "Hello world", "<|newbos|>"):
        ids = ref(text)["input_ids"]
        assert ours.encode(text) == ids
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert ours.bos_token_id == ref.bos_token_id == 400


def test_special_tokens_map_file_and_added_token_dicts(tmp_path):
    path = tf.make_bytelevel_bpe(tmp_path / "t", config_updates={"bos_token": {"content": "<|im_start|>", "__type": "AddedToken"}})
    (path / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": {"content": "<|endoftext|>", "lstrip": False}, "pad_token": "<|im_end|>"})
    )
    ours = Tokenizer.from_dir(path)
    ref = transformers.AutoTokenizer.from_pretrained(str(path))
    assert ours.special_tokens_map == ref.special_tokens_map
    assert ours.eos_token == "<|endoftext|>" and ours.pad_token == "<|im_end|>" and ours.bos_token == "<|im_start|>"
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)


def test_eos_and_bos_ids_from_generation_and_model_config(tmp_path):
    path = tf.make_bytelevel_bpe(tmp_path / "t", bos_token=None, eos_token="<|im_end|>")
    tf.write_json(path / "config.json", {"model_type": "qwen2", "bos_token_id": 0, "eos_token_id": 0})
    ours = Tokenizer.from_dir(path)
    assert ours.eos_token_ids == [2, 0]  # the tokenizer's own EOS first
    assert ours.bos_token_id == 0  # no bos_token in the tokenizer: config.json's id

    tf.write_json(path / "generation_config.json", {"eos_token_id": [2, 1], "pad_token_id": 0})
    ours = Tokenizer.from_dir(path)
    assert ours.eos_token_ids == [2, 1]  # generation_config.json wins over config.json
    assert ours.pad_token_id == 0  # the tokenizer's own pad token (<|endoftext|>)

    no_eos = tf.make_bytelevel_bpe(tmp_path / "u", eos_token=None, pad_token=None)
    tf.write_json(no_eos / "generation_config.json", {"eos_token_id": 1, "bos_token_id": 0, "pad_token_id": 0})
    ours = Tokenizer.from_dir(no_eos)
    assert ours.eos_token_ids == [1] and ours.eos_token_id == 1 and ours.eos_token is None
    assert ours.bos_token_id == 0 and ours.pad_token_id == 0

    tf.write_json(no_eos / "generation_config.json", {"eos_token_id": "2"})
    with pytest.raises(ConfigError) as info:
        Tokenizer.from_dir(no_eos)
    assert info.value.field == "eos_token_id" and info.value.file.endswith("generation_config.json")


def test_chat_template_locations(tmp_path):
    # transformers 5 writes chat_template.jinja (+ additional_chat_templates/NAME.jinja);
    # transformers 4 kept them in tokenizer_config.json (a string, or a list of {name, template}).
    templates = {"default": "D{{ messages[0]['content'] }}", "tool_use": "T{{ tools | length }}"}
    for legacy in (False, True):
        path = tf.make_bytelevel_bpe(tmp_path / f"t{legacy}", chat_template=templates, legacy_layout=legacy)
        assert (path / "chat_template.jinja").exists() is not legacy
        ours = Tokenizer.from_dir(path)
        ref = transformers.AutoTokenizer.from_pretrained(str(path))
        assert ours.chat_templates == ref.chat_template == templates
        assert ours.chat_template == templates["default"]
        msgs = [{"role": "user", "content": "hi"}]
        tools = [{"type": "function", "function": {"name": "f"}}]
        assert ours.apply_chat_template(msgs) == ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert ours.apply_chat_template(msgs, tools=tools) == ref.apply_chat_template(msgs, tools=tools, tokenize=False)
    path = tf.make_bytelevel_bpe(tmp_path / "single", legacy_layout=True)
    ours = Tokenizer.from_dir(path)
    assert ours.chat_template == tf.CHATML_TEMPLATE
    assert ours.chat_template_origin.endswith("tokenizer_config.json:chat_template")
    # a chat_template.jinja file wins over the config entry
    (path / "chat_template.jinja").write_text("FILE")
    ours = Tokenizer.from_dir(path)
    assert ours.chat_template == "FILE" == transformers.AutoTokenizer.from_pretrained(str(path)).chat_template
    assert ours.chat_template_origin == str(path / "chat_template.jinja")


def test_no_chat_template(tmp_path):
    path = tf.make_bytelevel_bpe(tmp_path / "t", chat_template=None)
    ours = Tokenizer.from_dir(path)
    assert ours.chat_template is None and ours.chat_templates == {}
    with pytest.raises(ChatTemplateError):
        ours.apply_chat_template([{"role": "user", "content": "x"}])


def test_model_max_length_and_config_flags(tmp_path):
    path = tf.make_bytelevel_bpe(tmp_path / "t")
    assert Tokenizer.from_dir(path).model_max_length is None  # transformers writes int(1e30) for "none"
    path = tf.make_bytelevel_bpe(tmp_path / "u", config_updates={"model_max_length": 2048, "split_special_tokens": True})
    ours = Tokenizer.from_dir(path)
    ref = transformers.AutoTokenizer.from_pretrained(str(path))
    assert ours.model_max_length == 2048
    text = "a<|im_end|>b"
    assert ours.encode(text) == ref(text)["input_ids"]
    assert 2 not in ours.encode(text)


def _wordpiece_dir(path: Path) -> Path:
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    tok = Backend(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.train_from_iterator(list(tf.CORPUS) * 3, trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "[SEP]"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]")
    fast.save_pretrained(str(path))
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg["clean_up_tokenization_spaces"] = True
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return path


def test_clean_up_tokenization_spaces(tmp_path):
    # Applied for a WordPiece model; transformers 5 skips it for BPE models.
    wp = _wordpiece_dir(tmp_path / "wp")
    ours, ref = Tokenizer.from_dir(wp), transformers.AutoTokenizer.from_pretrained(str(wp))
    assert ours.clean_up_tokenization_spaces
    for text in ("I can't go , it's late . ok ?", "we 're here !", "don ' t"):
        ids = ref(text)["input_ids"]
        assert ours.encode(text) == ids
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
        assert ours.decode(ids, clean_up_tokenization_spaces=False) == ref.decode(ids, clean_up_tokenization_spaces=False)
    bpe = tf.make_bytelevel_bpe(tmp_path / "bpe", config_updates={"clean_up_tokenization_spaces": True})
    ours, ref = Tokenizer.from_dir(bpe), transformers.AutoTokenizer.from_pretrained(str(bpe))
    assert not ours.clean_up_tokenization_spaces
    ids = ours.encode("a , b .")
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True) == "a , b ."
    assert clean_up_tokenization("a , b . we 're") == "a, b. we're"


def test_transformers_compat_off_uses_file_verbatim(saved):
    path = saved["llama_class_legacy_false"]
    compat = Tokenizer.from_dir(path)
    verbatim = Tokenizer.from_dir(path, transformers_compat=False)
    from tokenizers import Tokenizer as Backend

    raw = Backend.from_file(str(path / "tokenizer.json"))
    text = " Hello</s>there"
    assert verbatim.encode(text) == raw.encode(text).ids
    assert compat.encode(text) != verbatim.encode(text)


def test_missing_or_broken_files(tmp_path, saved):
    with pytest.raises(TokenizerError) as info:
        Tokenizer.from_dir(tmp_path / "nope")
    assert info.value.file == str(tmp_path / "nope")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerError, match="tokenizer.json") as info:
        Tokenizer.from_dir(empty)
    assert info.value.file == str(empty / "tokenizer.json")

    def broken(name: str, file: str, content: str | bytes) -> Path:
        path = tmp_path / name
        shutil.copytree(saved["llama_v4_layout"], path)  # no chat_template.jinja to shadow the config
        target = path / file
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    cases = [
        ("trunc", "tokenizer.json", '{"version": "1.0", "model": {', TokenizerError, "tokenizer.json"),
        ("notobj", "tokenizer.json", "[1, 2]", TokenizerError, "tokenizer.json"),
        ("latin1", "tokenizer.json", b"\xff\xfe{}", TokenizerError, "tokenizer.json"),
        ("badmodel", "tokenizer.json", '{"model": {"type": "BPE", "vocab": {}, "merges": ["a b"]}}', TokenizerError, "tokenizer.json"),
        ("badcfg", "tokenizer_config.json", "{not json", TokenizerError, "tokenizer_config.json"),
        ("cfglist", "tokenizer_config.json", "[]", TokenizerError, "tokenizer_config.json"),
        ("badbos", "tokenizer_config.json", '{"bos_token": 5, "added_tokens_decoder": {}}', TokenizerError, "tokenizer_config.json"),
        ("badtpl", "tokenizer_config.json", '{"chat_template": 5}', ChatTemplateError, "tokenizer_config.json"),
        ("badmodelcfg", "config.json", "{", ConfigError, "config.json"),
    ]
    for name, file, content, error, expected_file in cases:
        with pytest.raises(error) as info:
            Tokenizer.from_dir(broken(name, file, content))
            pytest.fail(f"case {name} loaded")
        assert info.value.file is not None and info.value.file.endswith(expected_file), name
        assert expected_file in str(info.value), name


def test_panicking_tokenizer_file_becomes_tokenizer_error(tmp_path, saved):
    """The Rust library panics (pyo3 PanicException, a BaseException) on some crafted files."""
    data = json.loads((saved["bytelevel"] / "tokenizer.json").read_text())
    at_load = dict(data, normalizer={"type": "Precompiled", "precompiled_charsmap": "AAAA"})
    at_use = dict(
        data,
        post_processor={
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<missing>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {},
        },
    )
    for name, content in (("load", at_load), ("use", at_use)):
        path = tmp_path / name
        shutil.copytree(saved["bytelevel"], path)
        (path / "tokenizer.json").write_text(json.dumps(content))
        with pytest.raises(TokenizerError) as info:
            Tokenizer.from_dir(path)
        assert info.value.file == str(path / "tokenizer.json")


def test_invalid_arguments(pair):
    ours, _ = pair("bytelevel")
    for bad in (None, b"bytes", 5, ["a"]):
        with pytest.raises(InvalidInputError):
            ours.encode(bad)
    with pytest.raises(InvalidInputError):
        ours.encode_batch("not a list")
    with pytest.raises(InvalidInputError):
        ours.encode_batch(["ok", 3])
    for bad in ([-1], [2**32], ["a"], [1.5], "abc", [True]):
        with pytest.raises(InvalidInputError) as info:
            ours.decode(bad)
        assert info.value.field == "ids"
    import numpy as np

    ids = ours.encode("Hello 你好")
    assert ours.decode(np.array(ids, dtype=np.int64)) == ours.decode(ids) == "Hello 你好"
    assert ours.decode(ids[0]) == ours.decode([ids[0]])
    assert ours.decode([ours.vocab_size + 10]) == ""  # unknown ids give no text, like transformers
    assert ours.id_to_token(ours.vocab_size + 10) is None
    assert ours.token_to_id("definitely-not-a-token") is None
