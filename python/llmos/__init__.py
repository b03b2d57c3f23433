"""llmos: an embedded LLM runtime. Load a Hugging Face checkpoint and generate text from a
C++ core: `llmos.load(path).generate("Hello", max_new_tokens=20).text`.

The compiled core is imported on first use, so the pure-Python layers (tokenizer, chat
templates, errors) import without it.
"""

from . import errors
from .generation import Generation, GenerationConfig

__version__ = "0.1.0"
__all__ = ["load", "Model", "Generation", "GenerationConfig", "errors", "__version__"]


def __getattr__(name):
    if name in ("load", "Model"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'llmos' has no attribute {name!r}")
