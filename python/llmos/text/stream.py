"""Streaming text out of generated tokens: incremental detokenization and stop strings.

:class:`IncrementalDecoder` turns token ids into text one id at a time and never emits text that
a later token could still change; concatenating its output (plus :meth:`~IncrementalDecoder.flush`)
gives exactly ``tokenizer.decode(ids)``. :class:`StopMatcher` cuts a text stream before the first
stop string and holds back only what could still turn into one.
"""

from __future__ import annotations

from array import array
from functools import lru_cache
from typing import Any, Iterable, Sequence

from llmos.errors import InvalidInputError
from llmos.text.tokenizer import _check_ids, clean_up_tokenization

__all__ = ["IncrementalDecoder", "StopMatcher"]

_REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Decode a token stream piece by piece.

    ``push(id)`` returns the text that became final with this token (often ``""``);
    ``flush()`` returns the rest at the end of the stream. ``prefix_ids`` are ids already in the
    sequence (the prompt): their text is not emitted, but they give the decoder the context it
    needs, so the output equals ``decode(prefix + new)[len(decode(prefix)):]`` (e.g. the leading
    space of a sentencepiece word right after the prompt is kept).

    How: the decoder keeps a short window of recent ids and decodes just that window, emitting
    the part of its text not emitted yet. Text is held back while it can still change:

    * a trailing U+FFFD, which may be an incomplete UTF-8 sequence a later byte completes;
    * ``<0xXX>`` byte-fallback tokens, which the decoder merges into characters only as a whole
      run (an incomplete run turns *all* its bytes into U+FFFD), so nothing is decoded while the
      stream ends in such a run;
    * for tokenizers that clean up spaces before punctuation, a short tail that a clean-up rule
      could still match.

    The window is re-anchored every few tokens, so each push costs O(1) amortized.
    """

    _CONTEXT = 6  # ids kept before the newest ones when the window is re-anchored
    _WINDOW = 24  # re-anchor when the window grows to this many ids
    _TRIM = 1024  # drop consumed ids from the list past this many

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True, prefix_ids: Iterable[int] = ()):
        self._tokenizer = tokenizer
        self._skip = bool(skip_special_tokens)
        self._silent: frozenset[int] = tokenizer.special_token_ids if self._skip else frozenset()
        self._bytes: frozenset[int] = frozenset(getattr(tokenizer, "byte_fallback_ids", frozenset()))
        self._cleanup = _CleanupStream() if getattr(tokenizer, "clean_up_tokenization_spaces", False) else None
        prefix = _check_ids(prefix_ids)
        start = self._prefix_context_start(prefix)
        self._ids: list[int] = prefix[start:]
        self._start = 0
        self._emitted = len(self._decode(self._ids))

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip, clean_up_tokenization_spaces=False)

    def _makes_text(self, token_id: int) -> bool:
        """Whether the id reaches the decoder as a piece of its own that ends a byte run."""
        return (
            token_id not in self._silent
            and token_id not in self._bytes
            and self._tokenizer.id_to_token(token_id) is not None
        )

    def _prefix_context_start(self, prefix: list[int]) -> int:
        # Start the context on a text-producing token whose window decodes to something: the
        # decoder strips a leading space (or "▁") only at the very start of what it is given, and
        # that start must fall inside the prompt, not on the first generated word.
        pos = max(0, len(prefix) - self._CONTEXT)
        lowest = max(0, len(prefix) - 8 * self._CONTEXT)
        while pos > lowest and not (self._makes_text(prefix[pos]) and self._decode(prefix[pos:])):
            pos -= 1
        return pos

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text that is now final (may be empty)."""
        (token_id,) = _check_ids([token_id])
        self._ids.append(token_id)
        if not self._makes_text(token_id):
            return ""
        window = self._ids[self._start :]
        text = self._decode(window)
        end = len(text)
        # Without byte-fallback runs, only a last U+FFFD can still change (it may be an
        # incomplete multi-byte sequence); with them, the run has ended and all text is final.
        if not self._bytes and text.endswith(_REPLACEMENT):
            end -= 1
        out = ""
        if end > self._emitted:
            out = text[self._emitted : end]
            self._emitted = end
        if len(window) >= self._WINDOW:
            self._reanchor(text)
        return self._cleanup.feed(out) if self._cleanup is not None and out else out

    def _reanchor(self, text: str) -> None:
        tail = text[self._emitted :]
        pos = len(self._ids) - self._CONTEXT
        while pos > self._start and not self._makes_text(self._ids[pos]):
            pos -= 1  # never start inside a byte-fallback run
        if pos <= self._start:
            return
        new_text = self._decode(self._ids[pos:])
        # The re-anchored window must still end in the same unemitted tail and hold some
        # emitted text before it (that is where start-of-text effects like Strip land).
        if len(new_text) <= len(tail) or not new_text.endswith(tail):
            return
        self._start = pos
        self._emitted = len(new_text) - len(tail)
        if self._start > self._TRIM:
            del self._ids[: self._start]
            self._start = 0

    def flush(self) -> str:
        """Return all text not emitted yet. Call once, at the end of the stream."""
        text = self._decode(self._ids[self._start :])
        out = text[self._emitted :]
        self._emitted = len(text)
        if self._cleanup is not None:
            out = self._cleanup.feed(out) + self._cleanup.flush()
        return out


class _CleanupStream:
    """Streams transformers' ``clean_up_tokenization`` (" ." -> ".", " n't" -> "n't", ...).

    Every rule deletes the space that starts it and needs one of the characters below right
    after that space (or, through an earlier rule's deletion, a second space). So a cut is safe
    when no space in the few characters before it is followed by such a character or by the
    unknown future; text after the last safe cut is held back.
    """

    _LOOKBACK = 6
    _RISKY_NEXT = frozenset(".?!,'n ")

    def __init__(self) -> None:
        self._pending = ""
        self._context = ""  # the last raw characters already emitted

    def feed(self, text: str) -> str:
        full = self._context + self._pending + text
        offset = len(self._context)
        cut = len(full)
        while cut > offset and not self._safe(full, cut):
            cut -= 1
        head = full[offset:cut]
        self._pending = full[cut:]
        if head:
            self._context = full[max(0, cut - self._LOOKBACK) : cut]
        return clean_up_tokenization(head)

    def _safe(self, full: str, cut: int) -> bool:
        for q in range(max(0, cut - self._LOOKBACK), cut):
            if full[q] == " " and (q + 1 >= len(full) or full[q + 1] in self._RISKY_NEXT):
                return False
        return True

    def flush(self) -> str:
        out = clean_up_tokenization(self._pending)
        self._pending = ""
        return out


class StopMatcher:
    """Cut a text stream right before the first occurrence of any stop string.

    ``feed(text)`` returns ``(safe_text, stopped)``: ``safe_text`` can be shown now and will never
    be taken back; the tail that could still grow into a stop string is held. When a stop string
    appears, everything from its start on is dropped and ``stopped`` is True (later feeds return
    ``("", True)``). ``flush()`` returns the held tail at the end of a stream that did not stop.

    The cut is where the whole text's first occurrence starts, however the text is split into
    pieces: a stop string that completes while a longer one that started earlier is still possible
    is decided only once that one completes or fails (or at ``flush()``).

    Memory is linear in the stop strings: one Knuth–Morris–Pratt failure table per stop string and
    a held tail no longer than the longest stop; each character fed costs amortized O(1) per stop.
    """

    def __init__(self, stop: Sequence[str] | str | None):
        if stop is None:
            stops: list[str] = []
        elif isinstance(stop, str):
            stops = [stop]
        elif isinstance(stop, (list, tuple)):
            stops = list(stop)
        else:
            raise InvalidInputError(f"stop must be a list of strings, got {type(stop).__name__}", field="stop")
        for i, s in enumerate(stops):
            if not isinstance(s, str):
                raise InvalidInputError(f"stop[{i}] must be a string, got {type(s).__name__}", field=f"stop[{i}]")
            if not s:
                raise InvalidInputError(f"stop[{i}] is empty: stop strings must be non-empty", field=f"stop[{i}]")
        self._stops = tuple(dict.fromkeys(stops))
        self._failure = _failure_tables(self._stops)
        # Per stop string: the length of the longest suffix of the text so far that is a prefix of it.
        self._state = [0] * len(self._stops)
        self._held = ""
        # (start in _held, stop string) of the earliest occurrence found but not yet final.
        self._pending: tuple[int, str] | None = None
        self._stopped = False
        self._matched: str | None = None

    @property
    def stops(self) -> tuple[str, ...]:
        return self._stops

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def matched(self) -> str | None:
        """The stop string that ended the stream, if any."""
        return self._matched

    def feed(self, text: str) -> tuple[str, bool]:
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a str, got {type(text).__name__}", field="text")
        if self._stopped:
            return "", True
        if not self._stops:
            return text, False
        buf = self._held + text
        end = len(self._held)
        pending = self._pending
        states, stops, failures = self._state, self._stops, self._failure
        longest = max(states)
        for ch in text:
            end += 1
            longest = 0
            for k, s in enumerate(stops):
                st, fail = states[k], failures[k]
                while st and s[st] != ch:
                    st = fail[st - 1]
                if s[st] == ch:
                    st += 1
                if st == len(s):
                    if pending is None or end - st < pending[0]:
                        pending = (end - st, s)
                    st = fail[st - 1]
                states[k] = st
                if st > longest:
                    longest = st
            # Final once no occurrence still in progress started before the one found.
            if pending is not None and end - longest >= pending[0]:
                return self._stop(buf, pending)
        keep = longest if pending is None else max(longest, len(buf) - pending[0])
        cut = len(buf) - keep
        self._held = buf[cut:]
        self._pending = None if pending is None else (pending[0] - cut, pending[1])
        return buf[:cut], False

    def flush(self) -> str:
        """The held-back tail (empty after a stop); cut before a stop string found in it."""
        if self._pending is not None:
            out, _ = self._stop(self._held, self._pending)
            return out
        out, self._held = self._held, ""
        return out

    def _stop(self, buf: str, pending: tuple[int, str]) -> tuple[str, bool]:
        self._stopped, self._matched = True, pending[1]
        self._held, self._pending = "", None
        return buf[: pending[0]], True


@lru_cache(maxsize=4)
def _failure_tables(stops: tuple[str, ...]) -> tuple[array, ...]:
    """The tables of one request's stop strings, shared (read-only) by the matchers of all its
    sequences: a batch of thousands would otherwise hold thousands of copies."""
    return tuple(_failure_table(s) for s in stops)


def _failure_table(s: str) -> array:
    """KMP's failure function: fail[i] is the length of the longest proper prefix of s[:i + 1]
    that is also its suffix."""
    fail = array("i", [0]) * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k - 1]
        if s[i] == s[k]:
            k += 1
        fail[i] = k
    return fail
