"""llmos: an embedded LLM runtime. Load a Hugging Face checkpoint and generate text from a
C++ core: `llmos.load(path).generate("Hello", max_new_tokens=20).text`.

The compiled core is imported on first use, so the pure-Python layers (tokenizer, chat
templates, errors) import without it.
"""

from . import errors
from .generation import Generation, GenerationConfig

__version__ = "0.1.0"
__all__ = ["load", "quantize", "Model", "Generation", "GenerationConfig", "errors", "export_onnx", "convert_onnx",
           "__version__"]


def __getattr__(name):
    if name in ("load", "Model"):
        from . import model

        return getattr(model, name)
    if name == "quantize":
        from .quantize_checkpoint import quantize

        return quantize
    if name in ("export_onnx", "convert_onnx"):  # onnx is imported only when used
        from . import onnx

        return getattr(onnx, name)
    raise AttributeError(f"module 'llmos' has no attribute {name!r}")
