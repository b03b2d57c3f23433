"""Where llmos keeps things on disk: $LLMOS_HOME (default ~/.cache/llmos) and its folders."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The llmos folder: $LLMOS_HOME, or ~/.cache/llmos. Holds models/ (the registry),
    downloads/, tmp/, cache/ and training/."""
    value = os.environ.get("LLMOS_HOME")
    return Path(os.path.expanduser(value)) if value else Path.home() / ".cache" / "llmos"


def cache_dir(kind: str) -> Path:
    """$LLMOS_HOME/cache/<kind>: derived files that can be rebuilt (the weight hashes of LoRA base models...)."""
    return home() / "cache" / kind


# The model that ships inside the package (runtime/default_model/): its registry name, which
# resolves to that folder everywhere a model name is accepted and cannot name an entry.
BUNDLED_MODEL_NAME = "default"


def bundled_model_dir() -> Path:
    return Path(__file__).resolve().parent / "runtime" / "default_model"
