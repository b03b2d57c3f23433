"""The app templates with knowledge, tools or long JSON replies are written for a 1,024-token
context. Where this build's bundled model has less, a stand-in serves them: the bundled weights
with a 1,024-token context in config.json (RoPE has no fixed length)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

LONG_CONTEXT = 1024


def long_context_model(folder: Path) -> str:
    """"default" when the bundled model has the long context, else the stand-in's folder."""
    from llmos.runtime.default_model import default_model_path

    src = Path(default_model_path())
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if config["max_position_embeddings"] >= LONG_CONTEXT:
        return "default"
    folder.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json":
            os.symlink(f, folder / f.name)
    config["max_position_embeddings"] = LONG_CONTEXT
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return str(folder)


def use_model(app_file: Path, model: str) -> None:
    """Points an app file's `model:` at `model`."""
    text = app_file.read_text(encoding="utf-8")
    app_file.write_text(re.sub(r"(?m)^model: .*$", f"model: {model}", text, count=1), encoding="utf-8")
