"""A small ONNX graph builder: named nodes, deduplicated constants, opset-aware op spellings.

Only what the decoder export needs. Node names are scoped ("/model/layers.0/attn/...") so a
graph read in Netron, in an onnxruntime profile or by `convert_onnx` shows where each node
came from.
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
# The lowest opset whose standard ops cover the decoder (LayerNormalization arrived in 17).
MIN_OPSET = 17

NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.bool_): TensorProto.BOOL,
}


class GraphBuilder:
    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.uses_ms_domain = False
        self._scope: list[str] = []
        self._names: dict[str, int] = {}
        self._consts: dict[tuple, str] = {}
        self.metadata: dict = {}  # facts about the graph for the export's llmos_onnx.json

    # ---- naming ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def scope(self, name: str):
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def node_name(self, tag: str) -> str:
        """A fresh node name in the current scope: "/model/layers.0/attn/MatMul_1"."""
        prefix = "/".join(self._scope)
        return self._unique(f"/{prefix}/{tag}" if prefix else f"/{tag}")

    def _unique(self, base: str) -> str:
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    # ---- values -----------------------------------------------------------------------------

    def input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, name: str, elem_type: int, shape: list) -> str:
        """Exposes `value` as graph output `name` (through an Identity when they differ)."""
        if value != name:
            # Tensors made for this output already carry its name (op(names=...)).
            self.nodes.append(helper.make_node("Identity", [value], [name], name=self._unique(f"/{name}/Identity")))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, value, dtype=np.float32) -> str:
        """A small constant, one initializer per distinct value."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.weight(self._unique(f"const_{arr.dtype.name}_{len(self._consts)}"), arr)
        return self._consts[key]

    # ---- nodes ------------------------------------------------------------------------------

    def op(self, op_type: str, inputs: list[str], *, outputs: int = 1, domain: str = "", tag: str | None = None,
           names: list[str] | None = None, **attrs):
        """Adds a node; returns its output name (or names). `names` fixes output names (graph
        outputs written directly, without an Identity)."""
        name = self.node_name(tag or op_type)
        if names:
            outputs = len(names)
        outs = list(names) if names else [f"{name}/output_{i}" for i in range(outputs)]
        if domain == MS_DOMAIN:
            self.uses_ms_domain = True
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, domain=domain or None, **attrs))
        return outs[0] if outputs == 1 else outs

    # Ops whose spelling changed across opsets.

    def reduce_mean(self, x: str, axis: int) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const([axis], np.int64)], keepdims=1)
        return self.op("ReduceMean", [x], axes=[axis], keepdims=1)

    def split(self, x: str, sizes: list[int], axis: int) -> list[str]:
        return self.op("Split", [x, self.const(sizes, np.int64)], outputs=len(sizes), axis=axis)

    def reshape(self, x: str, shape: list[int]) -> str:
        return self.op("Reshape", [x, self.const(shape, np.int64)])

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        return self.op("Unsqueeze", [x, self.const(axes, np.int64)])

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return self.op("Slice", [x, self.const([start], np.int64), self.const([end], np.int64),
                                 self.const([axis], np.int64)])

    def dim(self, x: str, axis: int) -> str:
        """Size of one axis of `x` as an int64 scalar."""
        return self.op("Gather", [self.op("Shape", [x]), self.const(axis, np.int64)], axis=0)

    def cast(self, x: str, elem_type: int) -> str:
        return self.op("Cast", [x], to=elem_type)

    # ---- model ------------------------------------------------------------------------------

    def model(self, name: str, producer: str, version: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        if self.uses_ms_domain:
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        # The lowest IR version that carries these opsets, so older runtimes still read the file.
        ir = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
        return helper.make_model(graph, opset_imports=opsets, producer_name=producer, producer_version=version,
                                 ir_version=ir)
