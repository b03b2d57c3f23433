"""The small English model that ships inside the package (see default_model/MODEL_CARD.md).

It is what `llmos run` uses, and what tests and app templates load when no model is named:
it needs no download. `tools/train_default_model.py` reproduces it.
"""

from __future__ import annotations

import os

from .errors import ModelFileError

_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_model")


def default_model_path() -> str:
    """The folder of the bundled model (a Hugging Face checkpoint folder)."""
    if not os.path.isfile(os.path.join(_DIR, "model.safetensors")):
        raise ModelFileError(f"{_DIR}: the bundled default model is missing from this installation "
                             "(rebuild it with tools/train_default_model.py)", file=_DIR)
    return _DIR


def load_default(**options):
    """llmos.load() of the bundled model; options as for llmos.load (dtype, threads)."""
    from .model import load

    return load(default_model_path(), **options)
