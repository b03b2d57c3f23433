"""Tiny Hugging Face tokenizers for tests, written to a directory the way transformers saves them.

Each ``make_*`` function trains a small BPE on an in-file corpus (English, code, Chinese,
Japanese, emoji, odd whitespace) with the ``tokenizers`` library, wraps it in
``transformers.PreTrainedTokenizerFast`` and calls ``save_pretrained``, so the directory holds
exactly the files transformers 5 writes (``tokenizer.json``, ``tokenizer_config.json``,
``chat_template.jinja``). ``vocab_size`` is the total, added tokens included (``len(tokenizer)``),
so a test checkpoint's ``config.vocab_size`` can match it. Training is deterministic.

Only tests import this module: it needs ``transformers``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# Real-world-style chat templates (shortened where the original is long, syntax kept).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2.5-style: tools rendered with tojson, whitespace control, loop.first/last.
QWEN_TOOLS_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Qwen3-style: namespace, reversed loop with break, reasoning_content, string methods.
QWEN3_TEMPLATE = """{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
        {%- break %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == "user" or message.role == "system" %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and reasoning_content %}
            {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Llama-3.1-style header with strftime_now and a date default.
LLAMA31_DATE_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# Zephyr: relies on trim_blocks (newlines after block tags are dropped).
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

CORPUS: tuple[str, ...] = (
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "I can't believe it's already 2024; we've got 3.14159 reasons to celebrate.",
    "def add(a, b):\n    return a + b  # simple function\n\n\tindented with a tab",
    "你好，世界！今天天气很好。我们一起去公园散步吧。",
    "机器学习和自然语言处理是人工智能的重要分支。",
    "こんにちは世界。東京は日本の首都です。",
    "Emoji time 😀😃😄 🚀🌍 ❤️ 👍🏽 🇫🇷 and more 🎉!",
    "Mixed 混合 text with emoji 🙂 and spaces   between  words.",
    "   leading spaces, trailing spaces   ",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 12345.",
    "Ünïcödé àccents: café, naïve, résumé, Straße, ½ ¼ ¾ ©®™.",
    "Stop words: The end. ### Done\n\nUser: next question?",
    "JSON {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
    "The model said: <think>reasoning here</think> final answer.",
)

_BYTELEVEL_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_LLAMA_SPECIALS = ("<unk>", "<s>", "</s>")
_GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")


def _corpus(extra: Iterable[str]) -> list[str]:
    # Repeated so that merge counts are well above one and training is not dominated by ties.
    return [*CORPUS, *extra] * 4


def _bpe_from_json(vocab: dict[str, int], merges: list, **kwargs: Any) -> models.BPE:
    merge_pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    return models.BPE(vocab=vocab, merges=merge_pairs, **kwargs)


def _pad_vocab(vocab: dict[str, int], size: int) -> None:
    # Unreachable filler entries so that the total size is exactly what the caller asked for.
    i = 0
    while len(vocab) < size:
        name = f"<|filler_{i}|>"
        if name not in vocab:
            vocab[name] = len(vocab)
        i += 1


def _save(
    tok: Tokenizer,
    directory: str | Path,
    *,
    chat_template: str | dict[str, str] | None,
    special: dict[str, str | None],
    extra_special_tokens: Sequence[str] = (),
    tokenizer_class: str | None = None,
    config_updates: dict[str, Any] | None = None,
    legacy_layout: bool = False,
) -> Path:
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {k: v for k, v in special.items()}
    if extra_special_tokens:
        kwargs["extra_special_tokens"] = list(extra_special_tokens)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(str(directory))

    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if tokenizer_class is not None:
        config["tokenizer_class"] = tokenizer_class
    if legacy_layout:
        _to_legacy_layout(directory, config)
    if config_updates:
        config.update(config_updates)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return directory


def _to_legacy_layout(directory: Path, config: dict[str, Any]) -> None:
    """Rewrite a transformers-5 save into the transformers-4 layout.

    v4 kept the chat template inside tokenizer_config.json, wrote ``added_tokens_decoder`` there and
    a ``special_tokens_map.json`` next to it.
    """
    jinja = directory / "chat_template.jinja"
    if jinja.exists():
        config["chat_template"] = jinja.read_text(encoding="utf-8")
        jinja.unlink()
    templates_dir = directory / "additional_chat_templates"
    if templates_dir.is_dir():
        entries = [{"name": "default", "template": config.pop("chat_template")}] if "chat_template" in config else []
        for path in sorted(templates_dir.glob("*.jinja")):
            entries.append({"name": path.stem, "template": path.read_text(encoding="utf-8")})
            path.unlink()
        templates_dir.rmdir()
        config["chat_template"] = entries
    tokenizer_json = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in tokenizer_json["added_tokens"]
    }
    special_map = {
        k: {"content": config[k], "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
        for k in ("bos_token", "eos_token", "unk_token", "pad_token")
        if config.get(k)
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2), encoding="utf-8")
    config.pop("backend", None)


def make_bytelevel_bpe(
    directory: str | Path,
    vocab_size: int = 400,
    *,
    special_tokens: Sequence[str] = _BYTELEVEL_SPECIALS,
    bos_token: str | None = None,
    eos_token: str | None = "<|im_end|>",
    pad_token: str | None = "<|endoftext|>",
    unk_token: str | None = None,
    add_bos_in_post_processor: bool = False,
    add_prefix_space: bool = False,
    chat_template: str | dict[str, str] | None = CHATML_TEMPLATE,
    tokenizer_class: str | None = None,
    config_updates: dict[str, Any] | None = None,
    legacy_layout: bool = False,
    extra_corpus: Iterable[str] = (),
) -> Path:
    """GPT-2 / Qwen / Llama-3 style byte-level BPE. Special tokens get the lowest ids."""
    specials = list(dict.fromkeys([*special_tokens, *(t for t in (bos_token, eos_token, pad_token, unk_token) if t)]))
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size must be at least {256 + len(specials)} for a byte-level BPE")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    tok.train_from_iterator(_corpus(extra_corpus), trainer)
    state = json.loads(tok.to_str())
    vocab = dict(state["model"]["vocab"])
    _pad_vocab(vocab, vocab_size)
    final = Tokenizer(_bpe_from_json(vocab, state["model"]["merges"]))
    final.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    final.decoder = decoders.ByteLevel()
    if add_bos_in_post_processor:
        if bos_token is None:
            raise ValueError("add_bos_in_post_processor needs a bos_token")
        final.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B", special_tokens=[(bos_token, vocab[bos_token])]
        )
    else:
        final.post_processor = processors.ByteLevel(trim_offsets=False)
    final.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    assert final.get_vocab_size(with_added_tokens=True) == vocab_size
    return _save(
        final,
        directory,
        chat_template=chat_template,
        special={"bos_token": bos_token, "eos_token": eos_token, "pad_token": pad_token, "unk_token": unk_token},
        tokenizer_class=tokenizer_class,
        config_updates=config_updates,
        legacy_layout=legacy_layout,
    )


def _sentencepiece_like_vocab(
    specials: Sequence[str], vocab_size: int, limit_alphabet: int, extra_corpus: Iterable[str]
) -> tuple[dict[str, int], list]:
    """specials, then the 256 ``<0xXX>`` byte tokens, then trained pieces (``▁`` marks a word start)."""
    base = len(specials) + 256
    if vocab_size < base + 40:
        raise ValueError(f"vocab_size must be at least {base + 40} for a byte-fallback BPE")
    lines = ["▁" + line.replace("\n", " ").replace(" ", "▁") for line in _corpus(extra_corpus)]
    # The trainer's own limit_alphabet breaks ties between equally rare characters differently from
    # run to run; choosing the alphabet here keeps the ids stable. Dropped characters are encoded
    # with byte fallback.
    counts = Counter(ch for line in lines for ch in line)
    # The trainer keeps every alphabet character even past vocab_size: leave room for merges.
    n_alphabet = max(1, min(limit_alphabet, (vocab_size - base) // 2))
    alphabet = {ch for ch, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_alphabet]}
    alphabet.add("▁")
    lines = ["".join(ch if ch in alphabet else "▁" for ch in line) for line in lines]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - base, special_tokens=[], show_progress=False)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.train_from_iterator(lines, trainer)
    state = json.loads(tok.to_str())
    vocab: dict[str, int] = {}
    for s in specials:
        vocab[s] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(state["model"]["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [m for m in state["model"]["merges"]]
    _pad_vocab(vocab, vocab_size)
    return vocab, merges


def make_llama_style(
    directory: str | Path,
    vocab_size: int = 420,
    *,
    legacy_normalizer: bool = False,
    add_bos: bool = True,
    add_eos: bool = False,
    limit_alphabet: int = 90,
    chat_template: str | dict[str, str] | None = LLAMA2_TEMPLATE,
    extra_special_tokens: Sequence[str] = (),
    tokenizer_class: str | None = None,
    config_updates: dict[str, Any] | None = None,
    legacy_layout: bool = False,
    extra_corpus: Iterable[str] = (),
) -> Path:
    """Llama-2 / Mistral style: sentencepiece-like BPE with byte fallback, ``<s>`` added by the post-processor.

    ``legacy_normalizer=True`` writes the old converter's output (Prepend+Replace normalizer, no
    pre-tokenizer); otherwise a Metaspace pre-tokenizer (prepend_scheme="first") as newer files have.
    Rare characters (beyond ``limit_alphabet``) are encoded as ``<0xXX>`` byte tokens.
    ``extra_special_tokens`` are added after the base vocabulary (``vocab_size`` counts them).
    """
    n_extra = len(extra_special_tokens)
    vocab, merges = _sentencepiece_like_vocab(_LLAMA_SPECIALS, vocab_size - n_extra, limit_alphabet, extra_corpus)
    tok = Tokenizer(_bpe_from_json(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if legacy_normalizer:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    single = ("<s> " if add_bos else "") + "$A" + (" </s>" if add_eos else "")
    pair = single + (" <s>" if add_bos else "") + " $B" + (" </s>" if add_eos else "")
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _LLAMA_SPECIALS])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in extra_special_tokens])
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    updates = {"add_bos_token": add_bos, "add_eos_token": add_eos, "legacy": legacy_normalizer}
    updates.update(config_updates or {})
    return _save(
        tok,
        directory,
        chat_template=chat_template,
        special={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None},
        extra_special_tokens=extra_special_tokens,
        tokenizer_class=tokenizer_class,
        config_updates=updates,
        legacy_layout=legacy_layout,
    )


def make_gemma_style(
    directory: str | Path,
    vocab_size: int = 420,
    *,
    limit_alphabet: int = 90,
    chat_template: str | dict[str, str] | None = GEMMA_TEMPLATE,
    tokenizer_class: str | None = None,
    config_updates: dict[str, Any] | None = None,
    legacy_layout: bool = False,
    extra_corpus: Iterable[str] = (),
) -> Path:
    """Gemma style: spaces normalized to ``▁`` (no dummy prefix), byte fallback, ``<bos>`` from the post-processor.

    Ids: <pad>=0 <eos>=1 <bos>=2 <unk>=3 <mask>=4 <start_of_turn>=5 <end_of_turn>=6, bytes from 7.
    """
    vocab, merges = _sentencepiece_like_vocab(_GEMMA_SPECIALS, vocab_size, limit_alphabet, extra_corpus)
    tok = Tokenizer(_bpe_from_json(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _GEMMA_SPECIALS])
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    updates = {"add_bos_token": True, "add_eos_token": False}
    updates.update(config_updates or {})
    return _save(
        tok,
        directory,
        chat_template=chat_template,
        special={"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"},
        extra_special_tokens=("<start_of_turn>", "<end_of_turn>"),
        tokenizer_class=tokenizer_class,
        config_updates=updates,
        legacy_layout=legacy_layout,
    )


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as JSON (for config.json / generation_config.json side files in tests)."""
    path = Path(path)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    return path
