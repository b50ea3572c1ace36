"""Fixes for what ``onnx.version_converter`` gets wrong when it upgrades old models.

PRelu before opset 7 applied a 1-D slope of size C per channel (axis 1); from opset 7 on the slope
broadcasts numpy-style (aligned to the last axis). The converter bumps the version without
reshaping the slope, which changes the meaning (and ONNX Runtime then rejects the broadcast).
We reshape such slopes to [C, 1, ..., 1] before converting.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper


def _ranks(proto: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    ranks = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            ranks[info.name] = len(tensor_type.shape.dim)
    return ranks


def fix_per_channel_prelu(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Reshape 1-D PRelu slopes of pre-7 models to broadcast over axis 1, as they meant."""
    if opset >= 7 or not any(n.op_type == "PRelu" for n in proto.graph.node):
        return proto
    ranks = _ranks(proto)
    initializers = {init.name: init for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "PRelu" or node.input[1] not in initializers:
            continue
        slope = initializers[node.input[1]]
        rank = ranks.get(node.input[0])
        if len(slope.dims) != 1 or slope.dims[0] == 1 or rank is None or rank < 3:
            continue
        array = onnx.numpy_helper.to_array(slope)
        reshaped = np.reshape(array, (array.shape[0],) + (1,) * (rank - 2))
        slope.CopyFrom(onnx.numpy_helper.from_array(reshaped, slope.name))
        for info in [*proto.graph.input, *proto.graph.value_info]:
            if info.name == slope.name:
                info.type.tensor_type.ClearField("shape")
    return proto
