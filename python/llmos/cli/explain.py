"""What `llmos app run --explain` prints around the reply: the rendered prompt and its token
count, the retrieved chunks, then each generated token with its logprob and the best
alternatives (one compact line per token), and the timings. Reads AppResult.explain (a dict)."""

from __future__ import annotations

import math

TOP_SHOWN = 3  # alternatives per token line; the explain data holds up to 5
CHUNK_CHARS = 160  # of each retrieved chunk's text


def heading(title: str) -> str:
    return f"── {title} " + "─" * max(0, 60 - len(title))


def prompt_section(explain: dict) -> list[str]:
    prompt = explain.get("prompt") or ""
    n = explain.get("prompt_tokens")
    lines = [heading(f"prompt ({n} tokens)" if n is not None else "prompt")]
    lines += prompt.splitlines() if isinstance(prompt, str) else _messages(prompt)
    chunks = explain.get("chunks") or []
    if chunks:
        lines.append(heading(f"retrieved chunks ({len(chunks)})"))
        lines += [citation_line(c) for c in chunks]
    return lines


def tokens_section(explain: dict) -> list[str]:
    tokens = explain.get("tokens") or []
    lines = [heading(f"tokens ({len(tokens)})"),
             f"{'#':>4}  {'token':<16} {'logprob':>8}  top alternatives"]
    for i, t in enumerate(tokens, 1):
        # an alternative without a finite logprob was impossible there (masked): not worth a column
        top = [a for a in (t.get("top") or [])
               if a.get("text") != t.get("text") and _lp(a.get("logprob")) not in ("?", "-inf")][:TOP_SHOWN]
        alts = "  ".join(f"{_token(a.get('text'))} {_lp(a.get('logprob'))}" for a in top)
        lines.append(f"{i:>4}  {_token(t.get('text')):<16} {_lp(t.get('logprob')):>8}  {alts}".rstrip())
    return lines


def timings_section(timings: dict, usage: dict | None = None) -> list[str]:
    parts = []
    if timings.get("ttft_s") is not None:
        parts.append(f"time to first token {timings['ttft_s'] * 1000:.0f} ms")
    if timings.get("tokens_per_s") is not None:
        parts.append(f"{timings['tokens_per_s']:.1f} tokens/s")
    if timings.get("total_s") is not None:
        parts.append(f"total {timings['total_s']:.2f} s")
    if usage:
        parts.append(f"{usage.get('prompt_tokens', '?')} prompt + {usage.get('completion_tokens', '?')} "
                     "generated tokens")
    return [heading("timings"), " · ".join(parts)]


def citation_line(c: dict) -> str:
    """`[1] docs/faq.md:3-9 (score 2.31)` and the start of the chunk's text."""
    lines = c.get("lines")
    where = f"{c.get('source', '?')}:{lines[0]}-{lines[1]}" if lines else str(c.get("source", "?"))
    score = f" (score {c['score']:.2f})" if isinstance(c.get("score"), (int, float)) else ""
    text = cut(" ".join(str(c.get("text", "")).split()), CHUNK_CHARS)
    return f"[{c.get('id', '?')}] {where}{score}" + (f"\n      {text}" if text else "")


def _messages(messages) -> list[str]:
    """A rendered prompt given as chat messages rather than one text."""
    out = []
    for m in messages or []:
        out.append(f"[{m.get('role')}]")
        out += str(m.get("content", "")).splitlines()
    return out


def _token(text) -> str:
    # repr shows the spaces and newlines that make the difference between two tokens
    return cut(repr(text if text is not None else ""), 16)


def _lp(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "?"
    if math.isinf(value):
        return "-inf" if value < 0 else "inf"
    return f"{value:.2f}"


def cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
