"""Small ONNX models built by hand for tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper


def make_model(nodes, inputs, outputs, initializers=(), opset=20, name="tiny", domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def tensor(name, dtype=TensorProto.FLOAT, shape=(2, 3)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def add_relu_model(opset=20) -> onnx.ModelProto:
    """y = Relu(x + w), x: float[batch, 3], w an initializer."""
    w = onnx.numpy_helper.from_array(np.arange(3, dtype=np.float32) - 1, "w")
    return make_model(
        [helper.make_node("Add", ["x", "w"], ["s"], name="add"), helper.make_node("Relu", ["s"], ["y"], name="relu")],
        [tensor("x", shape=("batch", 3))],
        [tensor("y", shape=("batch", 3))],
        [w],
        opset=opset,
        name="add_relu",
    )
