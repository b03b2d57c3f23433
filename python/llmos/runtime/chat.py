"""Fitting a chat history into the model's context.

A conversation grows turn by turn until its prompt no longer fits. ``fit_conversation`` either
says by how much (ContextLengthError) or drops the oldest whole turns — a user message and the
replies and tool results that follow it — keeping the leading system messages and the last turn,
so that templates that insist on user/assistant alternation still render.
"""

from __future__ import annotations

from typing import Callable, Sequence

from llmos.errors import ContextLengthError, InvalidInputError

TRUNCATE_CHOICES = (None, "error", "oldest")
_SYSTEM_ROLES = ("system", "developer")


def fit_conversation(messages: Sequence[dict], n_tokens: Callable[[list], int], room: int, *,
                     truncate: str | None, need: str = "") -> list:
    """``messages`` (or its newest turns, with truncate="oldest") whose prompt of ``n_tokens``
    tokens fits in ``room``; ``need`` says what else takes context (named in the error)."""
    if truncate not in TRUNCATE_CHOICES:
        raise InvalidInputError(f"truncate: expected None, 'error' or 'oldest', got {truncate!r}", field="truncate")
    total = n_tokens(messages)  # renders first, so malformed messages get the template's own error
    messages = list(messages)
    if total <= room:
        return messages
    if truncate != "oldest":
        raise ContextLengthError(
            f"messages: the conversation is {total} tokens, {total - room} over the {room} tokens that fit{need}; "
            "drop old turns, or pass truncate='oldest' to drop the oldest turns and keep the system message",
            field="messages")
    head, turns = _split_turns(messages)

    def kept(dropped: int) -> list:
        return head + [m for turn in turns[dropped:] for m in turn]

    # The fewest oldest turns to drop (tokens shrink as turns go); the last turn always stays.
    lo, hi = 1, len(turns) - 1
    if hi < lo or n_tokens(kept(hi)) > room:
        last = n_tokens(kept(len(turns) - 1))
        raise ContextLengthError(
            f"messages: even the system message and the last turn alone are {last} tokens, {last - room} over the "
            f"{room} tokens that fit{need}", field="messages")
    while lo < hi:
        mid = (lo + hi) // 2
        if n_tokens(kept(mid)) <= room:
            hi = mid
        else:
            lo = mid + 1
    return kept(lo)


def _split_turns(messages: list) -> tuple[list, list[list]]:
    """(leading system messages, turns): a turn starts at each user message."""
    n_head = 0
    while n_head < len(messages) and messages[n_head].get("role") in _SYSTEM_ROLES:
        n_head += 1
    turns: list[list] = []
    for m in messages[n_head:]:
        if m.get("role") == "user" or not turns:
            turns.append([m])
        else:
            turns[-1].append(m)
    return messages[:n_head], turns
