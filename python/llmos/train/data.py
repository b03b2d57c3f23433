"""Training data: files -> token ids with a loss mask.

Three shapes are read:

* plain text (``.txt``, ``.md``, or JSONL lines ``{"text": ...}``): every token is a target;
  documents are concatenated (EOS between them) and cut into blocks of ``max_seq_len``.
* chat JSONL ``{"messages": [...]}``: the conversation is rendered with the checkpoint's own chat
  template (the code that renders it for generation), and only the assistant turns are targets.
* prompt/completion JSONL ``{"prompt": ..., "completion": ...}``: only the completion (and the
  EOS after it) is a target.

Where one target span ends and context begins is found in characters of the rendered text; the
tokens are then produced segment by segment so that every context prefix is tokenized exactly
as generation will tokenize it (see `_segment_ids`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from llmos.errors import ChatTemplateError, DatasetError
from llmos.io.files import hash_file
from llmos.io.jsonl import read_jsonl

IGNORE = -100  # the label torch's cross-entropy skips
TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where the token is context, else the token itself

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


@dataclass
class Dataset:
    examples: list[Example]
    files: list[str]
    sha256: str  # of the files' bytes, to recognise the same data when resuming
    truncated: int = 0  # examples cut at max_seq_len
    dropped: int = 0  # examples left with no target after truncation
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)

    @property
    def n_targets(self) -> int:
        return sum(e.n_targets for e in self.examples)


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})", file=path) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text ({e.reason})", file=path, line=line) from None


def files_sha256(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.basename(p).encode() + b"\0")
        try:
            hash_file(p, h)
        except OSError as e:
            raise DatasetError(f"{p}: cannot read ({e.strerror or e})", file=p) from None
    return h.hexdigest()


def is_text_file(path: str) -> bool:
    return path.lower().endswith(TEXT_SUFFIXES)


def _check_path(path: str) -> None:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such data file", file=path)
    if not (is_text_file(path) or path.lower().endswith(JSONL_SUFFIXES)):
        raise DatasetError(f"{path}: expected a .txt file or a .jsonl file (one JSON object per line)",
                           file=path)


# ---- tokenization with exact boundaries --------------------------------------------------


def _segment_ids(tokenizer, text: str, bounds: Sequence[int], targets: Sequence[bool], *,
                 add_special_tokens: bool) -> tuple[list[int], list[int]]:
    """Token ids and labels for ``text`` cut at ``bounds`` (segment k = text[bounds[k]:bounds[k+1]],
    a target when targets[k]).

    Each segment's ids are what tokenizing the text through its end adds after the ids so far:
    so the context before a target is exactly ``tokenize(prefix)``, which is what generation feeds
    the model. Where a token would straddle a boundary (the prefix's ids are not a prefix of the
    longer text's ids), the segment is tokenized on its own instead: the ids still spell the same
    text and no target token carries context characters.
    """
    ids: list[int] = []
    labels: list[int] = []
    for k, is_target in enumerate(targets):
        a, b = bounds[k], bounds[k + 1]
        if a == b:
            continue
        through = tokenizer.encode(text[:b], add_special_tokens=add_special_tokens)
        if through[:len(ids)] == ids:
            seg = through[len(ids):]
        else:
            seg = tokenizer.encode(text[a:b], add_special_tokens=False)
        ids += seg
        labels += seg if is_target else [IGNORE] * len(seg)
    return ids, labels


def chat_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns.

    A turn's span runs from the end of the prompt that asks for it (the conversation so far
    rendered with ``add_generation_prompt=True``) to the end of the conversation rendered through
    that turn, so it holds the reply and the template's end-of-turn marker - what the model must
    learn to produce, and nothing the runtime puts in the prompt. Templates that render earlier
    turns differently from the last one (e.g. dropping earlier reasoning) fall back to the reply
    text itself.
    """
    full = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m.get("role") != "assistant" or i == 0:
            continue  # an opening assistant message has no prompt: it is context
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[:i + 1], add_generation_prompt=False)
        if (full.startswith(through) and through.startswith(before) and len(before) >= cursor
                and len(through) > len(before)):
            spans.append((len(before), len(through)))
            cursor = len(through)
            continue
        content = m.get("content")
        if not isinstance(content, str) or not content:
            continue
        at = full.find(content, cursor)
        if at < 0:
            continue
        spans.append((at, at + len(content)))
        cursor = at + len(content)
    return full, spans


def chat_example(tokenizer, messages: list[dict]) -> Example:
    full, spans = chat_spans(tokenizer, messages)
    bounds, targets = [0], []
    for a, b in spans:
        bounds += [a, b]
        targets += [False, True]
    bounds.append(len(full))
    targets.append(False)
    # Chat templates write BOS themselves; the runtime tokenizes rendered chats without specials.
    ids, labels = _segment_ids(tokenizer, full, bounds, targets, add_special_tokens=False)
    return Example(ids, labels)


def prompt_completion_example(tokenizer, prompt: str, completion: str) -> Example:
    text = prompt + completion
    ids, labels = _segment_ids(tokenizer, text, [0, len(prompt), len(text)], [False, True],
                               add_special_tokens=True)
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        labels.append(eos)
    return Example(ids, labels)


def pack(stream: list[int], max_seq_len: int) -> list[Example]:
    """Blocks of ``max_seq_len`` tokens, every token a target (the model shifts labels itself)."""
    out = []
    for i in range(0, len(stream), max_seq_len):
        block = stream[i:i + max_seq_len]
        if len(block) >= 2:
            out.append(Example(block, list(block)))
    return out


def _messages(obj: Any, path: str, line: int) -> list[dict]:
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise DatasetError(f"{path}:{line}: 'messages' must be a non-empty list", file=path, line=line,
                           field="messages")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise DatasetError(f"{path}:{line}: messages[{j}] must be an object with a string 'role'",
                               file=path, line=line, field=f"messages[{j}]")
        if "content" in m and m["content"] is not None and not isinstance(m["content"], (str, list)):
            raise DatasetError(f"{path}:{line}: messages[{j}].content must be a string",
                               file=path, line=line, field=f"messages[{j}].content")
    return msgs


def _string(obj: dict, key: str, path: str, line: int) -> str:
    v = obj.get(key)
    if not isinstance(v, str):
        raise DatasetError(f"{path}:{line}: '{key}' must be a string, got {type(v).__name__}",
                           file=path, line=line, field=key)
    return v


def load_dataset(paths: str | Sequence[str], tokenizer, max_seq_len: int) -> Dataset:
    """Reads and tokenizes the training files (see the module docstring for the formats)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [os.fspath(paths)]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise DatasetError("no data files given")
    for p in paths:
        _check_path(p)
    if max_seq_len < 2:
        raise DatasetError(f"max_seq_len must be at least 2, got {max_seq_len}", field="max_seq_len")
    eos = tokenizer.eos_token_id
    stream: list[int] = []  # plain text, packed at the end
    singles: list[Example] = []
    kinds: dict[str, int] = {}

    def document(text: str) -> None:
        stream.extend(tokenizer.encode(text, add_special_tokens=True))
        if eos is not None:
            stream.append(eos)

    for path in paths:
        if is_text_file(path):
            text = read_text(path)
            if text.strip():
                document(text)
                kinds["text"] = kinds.get("text", 0) + 1
            continue
        for line, obj in read_jsonl(path):
            if "messages" in obj:
                msgs = _messages(obj, path, line)
                try:
                    ex = chat_example(tokenizer, msgs)
                except ChatTemplateError as e:
                    raise DatasetError(f"{path}:{line}: {e}", file=path, line=line, field="messages") from e
                singles.append(ex)
                kind = "chat"
            elif "prompt" in obj and "completion" in obj:
                singles.append(prompt_completion_example(tokenizer, _string(obj, "prompt", path, line),
                                                         _string(obj, "completion", path, line)))
                kind = "prompt/completion"
            elif "text" in obj:
                document(_string(obj, "text", path, line))
                kind = "text"
            else:
                keys = ", ".join(sorted(obj)) or "none"
                raise DatasetError(f"{path}:{line}: expected 'messages', 'prompt'+'completion' or 'text' "
                                   f"(keys found: {keys})", file=path, line=line)
            kinds[kind] = kinds.get(kind, 0) + 1
    examples = pack(stream, max_seq_len)
    truncated = dropped = 0
    for ex in singles:
        if len(ex.input_ids) > max_seq_len:
            truncated += 1
            ex = Example(ex.input_ids[:max_seq_len], ex.labels[:max_seq_len])
        # The first label never counts (nothing predicts it), so a lone target is no target.
        if sum(1 for t in ex.labels[1:] if t != IGNORE) == 0:
            dropped += 1
            continue
        examples.append(ex)
    if not examples:
        raise DatasetError(f"{', '.join(paths)}: no training examples (the data is empty, or every example "
                           "lost its targets at max_seq_len)", file=paths[0])
    return Dataset(examples, paths, files_sha256(paths), truncated, dropped, kinds)
