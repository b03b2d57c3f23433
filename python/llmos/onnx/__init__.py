"""ONNX: export a checkpoint as an ONNX decoder and convert ONNX decoders back (running them
is the onnxruntime backend's job: llmos/backends/onnx/).

    llmos.export_onnx("ckpt/", "out/", precision="int4")   # model.onnx + tokenizer + config
    llmos.load("out/")                                      # a Model on the onnxruntime backend
    llmos.convert_onnx("out/", "ckpt2/")                    # safetensors for the C++ core

The onnx / onnxruntime packages are imported only when one of these is used.
"""

from __future__ import annotations

from llmos.backends.onnx.layout import find_onnx_file, is_onnx_model
from llmos.extras import require

__all__ = ["export_onnx", "convert_onnx", "is_onnx_model", "find_onnx_file"]


def __getattr__(name):
    if name in ("export_onnx", "convert_onnx"):
        require("onnx", f"llmos.{name}")
    if name == "export_onnx":
        from llmos.onnx.export import export_onnx

        return export_onnx
    if name == "convert_onnx":
        from llmos.onnx.convert import convert_onnx

        return convert_onnx
    raise AttributeError(f"module 'llmos.onnx' has no attribute {name!r}")
