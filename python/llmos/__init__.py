"""llmos: an embedded LLM runtime. Load a Hugging Face checkpoint and generate text from a
C++ core: `llmos.load(path).generate("Hello", max_new_tokens=20).text`.

The package is layered, each layer a folder that imports only from the layers below it
(docs/architecture.md draws them; tests/test_layers.py checks them). The names here are the
public API; they are imported on first use, so `import llmos` stays cheap and works without
the optional extras (onnx, train, eval), and no layer depends on this file.
"""

import importlib

from llmos import errors
from llmos.version import __version__

__all__ = ["load", "quantize", "Model", "Engine", "Generation", "GenerationConfig", "CancelToken", "errors", "export_onnx",
           "convert_onnx", "registry", "train", "evaluate", "default_model", "onnx", "App", "__version__"]

# public name -> (module, attribute or None for the module itself)
_LAZY = {
    "load": ("llmos.runtime.load", "load"),
    "Model": ("llmos.runtime.model", "Model"),
    "Engine": ("llmos.runtime.engine", "Engine"),
    "Generation": ("llmos.runtime.generation", "Generation"),
    "GenerationConfig": ("llmos.runtime.generation", "GenerationConfig"),
    "CancelToken": ("llmos.runtime.model", "CancelToken"),
    "quantize": ("llmos.runtime.quantize", "quantize"),
    "export_onnx": ("llmos.onnx", "export_onnx"),
    "convert_onnx": ("llmos.onnx", "convert_onnx"),
    "onnx": ("llmos.onnx", None),
    "registry": ("llmos.registry", None),
    "train": ("llmos.train", None),
    "evaluate": ("llmos.evaluate", None),
    "default_model": ("llmos.runtime.default_model", None),
    "App": ("llmos.apps.app", "App"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'llmos' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
