"""Tools of the @NAME@ app: each function here that the app names can be called by the model.
Type hints and the docstring become the tool's JSON schema, so keep them accurate."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

# Handoffs are appended here (one JSON object a line) for a person to pick up.
QUEUE = Path(__file__).with_name("@NAME@_handoffs.jsonl")


def handoff(reason: str, email: str = "") -> str:
    """Hand the conversation over to a person on the support team.

    Args:
        reason: what the customer needs, in one sentence.
        email: the address the team should reply to, if the customer gave one.
    """
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "reason": reason[:500], "email": email[:200]}
    with QUEUE.open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    reply = "by email" if email else "here as soon as possible"
    return f"A person from the support team has the request and will reply {reply}."
