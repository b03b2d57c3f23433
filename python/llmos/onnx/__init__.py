"""ONNX: export a checkpoint as an ONNX decoder, run ONNX decoders, convert them back.

    llmos.export_onnx("ckpt/", "out/", precision="int4")   # model.onnx + tokenizer + config
    llmos.load("out/")                                      # an OnnxModel, same API as Model
    llmos.convert_onnx("out/", "ckpt2/")                    # safetensors for the C++ core

The onnx / onnxruntime packages are imported only when one of these is used.
"""

from __future__ import annotations

from .layout import find_onnx_file, is_onnx_model

__all__ = ["export_onnx", "convert_onnx", "OnnxModel", "is_onnx_model", "find_onnx_file"]


def __getattr__(name):
    if name == "export_onnx":
        from .export import export_onnx

        return export_onnx
    if name == "convert_onnx":
        from .convert import convert_onnx

        return convert_onnx
    if name == "OnnxModel":
        from .runtime import OnnxModel

        return OnnxModel
    raise AttributeError(f"module 'llmos.onnx' has no attribute {name!r}")
