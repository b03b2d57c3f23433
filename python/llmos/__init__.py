"""llmos: an embedded LLM runtime. Load a Hugging Face checkpoint and generate text from a
C++ core: `llmos.load(path).generate("Hello", max_new_tokens=20).text`."""

from . import errors
from .generation import Generation
from .model import Model, load

__version__ = "0.1.0"
__all__ = ["load", "Model", "Generation", "errors", "__version__"]
