"""The optional parts of llmos and the packages each needs: checked before any work starts,
so a missing extra is one clear error naming the `pip install` that fixes it, never a
ModuleNotFoundError halfway through (after generating every output, say)."""

from __future__ import annotations

import importlib.util

from llmos.errors import NotAvailableError

# extra -> the import names it installs (pyproject.toml's [project.optional-dependencies])
EXTRAS = {
    "train": ("torch", "transformers"),
    "onnx": ("onnx", "onnxruntime"),
    "gpu": ("onnx", "onnxruntime"),  # onnxruntime-gpu installs the onnxruntime module
    "eval": ("sacrebleu", "rouge_score"),
    "serve": ("fastapi", "uvicorn", "prometheus_client", "pydantic"),
    "structured": ("llguidance",),
    "apps": ("bm25s", "pypdf"),
    "ray": ("ray",),
    "parquet": ("pyarrow",),
    "gguf": ("gguf",),
}


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raises NotAvailableError unless every module of `extra` (or the given subset) can be
    imported; `what` names the feature for the message ("llmos train")."""
    needed = EXTRAS[extra] if modules is None else modules
    missing = [m for m in needed if not _importable(m)]
    if missing:
        raise NotAvailableError(f"{what} needs the '{extra}' extra (missing: {', '.join(missing)}): "
                                f"pip install 'llmos[{extra}]'", field=extra)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder refused it, or a broken half-installed package
        return False
