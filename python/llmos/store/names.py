"""Registry names: ``name[:tag]`` references and where an entry lives under LLMOS_HOME."""

from __future__ import annotations

import os
import re
from pathlib import Path

from llmos.errors import InvalidInputError
from llmos.paths import BUNDLED_MODEL_NAME, bundled_model_dir, home

DEFAULT_TAG = "latest"


NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,79}")


TAG_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")


def parse_ref(ref: str) -> tuple[str, str]:
    """``name[:tag]`` -> (name, tag). Names are case-insensitive and stored lowercase."""
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidInputError(f"model name: expected 'name' or 'name:tag', got {ref!r}", field="name")
    text = ref.strip().lower()
    name, sep, tag = text.partition(":")
    tag = tag if sep else DEFAULT_TAG
    if not NAME_RE.fullmatch(name):
        raise InvalidInputError(
            f"model name {ref!r}: a name is 1-80 characters of a-z, 0-9, '.', '_' and '-', starting with a "
            "letter or digit (an optional ':tag' follows)", field="name")
    if not TAG_RE.fullmatch(tag):
        raise InvalidInputError(
            f"model name {ref!r}: a tag is 1-128 characters of a-z, 0-9, '.', '_' and '-', starting with a "
            "letter or digit", field="name")
    return name, tag


def slug(text: str, pattern: re.Pattern = NAME_RE) -> str:
    """A valid name or tag made from arbitrary text (a folder or repository name)."""
    s = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    s = s[:80].rstrip("-._") or "model"
    return s if pattern.fullmatch(s) else "model"


def entry_dir(name: str, tag: str) -> Path:
    return home() / "models" / name / tag


def looks_like_path(text: str) -> bool:
    return (os.sep in text or (os.altsep is not None and os.altsep in text) or text.startswith(("~", "."))
            or os.path.isabs(text) or text.lower().endswith(".onnx"))


def check_new_name(name: str) -> str:
    """`name` (from parse_ref) if an entry may be created under it; the bundled model's name
    is reserved."""
    if name == BUNDLED_MODEL_NAME:
        raise InvalidInputError(f"model name '{name}' is reserved for the bundled model (it already resolves to "
                                f"{bundled_model_dir()}); choose another name", field="name")
    return name
