"""Opening an ONNX file so that every way it can be broken becomes an llmos error.

onnxruntime reports a truncated protobuf, a missing external-data file or a graph with no
decoder layout as a generic failure (or, for some, by crashing); these checks run first, on
the protobuf alone, and name the file and the part at fault.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from llmos.errors import ModelFileError, ModelFormatError
from llmos.backends.onnx.layout import DecoderLayout, Tensor, describe

_ELEM_TYPES = {
    TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
    TensorProto.DOUBLE: "float64", TensorProto.INT64: "int64", TensorProto.INT32: "int32",
    TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.BOOL: "bool",
}


def load_proto(file: str, *, with_weights: bool = False) -> onnx.ModelProto:
    """Parses `file`; external data is checked for presence and size (and loaded when
    `with_weights`)."""
    if not os.path.isfile(file):
        raise ModelFileError(f"{file}: file not found", file=file)
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelFileError(f"{file}: cannot read ({e.strerror})", file=file) from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelFormatError(f"{file}: not an ONNX model (the protobuf does not parse: {e})", file=file) from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelFormatError(f"{file}: not an ONNX model (no graph in the file)", file=file)
    if model.ir_version <= 0 or not model.opset_import:
        raise ModelFormatError(f"{file}: not an ONNX model (no ir_version / opset_import)", file=file)
    _check_external_data(model, file)
    if with_weights:
        try:
            onnx.load_external_data_for_model(model, os.path.dirname(os.path.abspath(file)))
        except (OSError, ValueError) as e:
            raise ModelFileError(f"{file}: cannot load its external data ({e})", file=file) from None
    return model


def _check_external_data(model: onnx.ModelProto, file: str) -> None:
    base = os.path.dirname(os.path.abspath(file))
    sizes: dict[str, int] = {}
    for t in _all_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        path = os.path.normpath(os.path.join(base, location))
        if not location or os.path.isabs(location) or not path.startswith(base + os.sep):
            raise ModelFormatError(f"{file}: tensor '{t.name}' points outside the model folder for its external "
                                   f"data ({location!r})", file=file, field=t.name)
        if path not in sizes:
            if not os.path.isfile(path):
                raise ModelFileError(f"{path}: external data file of {os.path.basename(file)} is missing "
                                     f"(needed for tensor '{t.name}')", file=path, field=t.name)
            sizes[path] = os.path.getsize(path)
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        if end > sizes[path]:
            raise ModelFileError(f"{path}: external data file of {os.path.basename(file)} is truncated: tensor "
                                 f"'{t.name}' needs bytes up to {end}, the file has {sizes[path]}",
                                 file=path, field=t.name)


def _all_tensors(model: onnx.ModelProto):
    def walk(graph):
        yield from graph.initializer
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t
                elif a.type == onnx.AttributeProto.GRAPH:
                    yield from walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        yield from walk(sub)
    yield from walk(model.graph)


def _value_info(v: onnx.ValueInfoProto) -> Tensor:
    tt = v.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return Tensor(v.name, _ELEM_TYPES.get(tt.elem_type, f"type{tt.elem_type}"), shape)


def decoder_layout(model: onnx.ModelProto, file: str) -> DecoderLayout:
    inits = {t.name for t in model.graph.initializer}
    inputs = [_value_info(v) for v in model.graph.input if v.name not in inits]
    return describe(inputs, [_value_info(v) for v in model.graph.output], file)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer (and Constant node value) as numpy, by name."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out
