"""The small English model that ships inside the package (see MODEL_CARD.md beside this file).

It is what `llmos run` uses, and what tests and app templates load when no model is named:
it needs no download. `tools/train_default_model.py` reproduces it.
"""

from __future__ import annotations

import os

from llmos.errors import ModelFileError
from llmos.paths import bundled_model_dir
from llmos.runtime.load import load

_DIR = str(bundled_model_dir())  # the checkpoint files sit beside this module


def default_model_path() -> str:
    """The folder of the bundled model (a Hugging Face checkpoint folder)."""
    if not os.path.isfile(os.path.join(_DIR, "model.safetensors")):
        raise ModelFileError(f"{_DIR}: the bundled default model is missing from this installation "
                             "(rebuild it with tools/train_default_model.py)", file=_DIR)
    return _DIR


def load_default(**options):
    """llmos.load() of the bundled model; options as for llmos.load (dtype, threads)."""
    return load(default_model_path(), **options)
