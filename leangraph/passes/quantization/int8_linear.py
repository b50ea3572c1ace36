"""Linear layers to int8: leangraph::MatMulBiasAct -> leangraph::DynamicQuantLinear for the layers
an assignment names (the search in ``mixed_precision.py`` chooses them).

Weights are quantized once, per output channel, symmetric (scale = max |w| / 127, or / 63 for 7-bit
weights, over the channel); activations per call (see the op). Lossy: runs only when the user
allowed a loss, and the search checks the result against the budget.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx_ir as ir

from leangraph.ir.ops.quant_linear import quantize_weight
from leangraph.ir.registry import DOMAIN


def candidate_layers(model: ir.Model) -> list[ir.Node]:
    """Linear layers with constant float32 matrix weights (and constant bias, if any)."""
    layers = []
    for node in model.graph:
        if node.domain != DOMAIN or node.op_type != "MatMulBiasAct":
            continue
        weight = node.inputs[1].const_value
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if (weight is not None and len(weight.shape) == 2 and node.inputs[1].dtype == ir.DataType.FLOAT
                and (bias is None or (bias.const_value is not None and len(bias.const_value.shape) == 1))):
            layers.append(node)
    return layers


def quantize_layers(model: ir.Model, names: Collection[str], activation_bits: int = 7, weight_bits: int = 8) -> int:
    """Rewrite the named candidate layers in place; returns how many were rewritten. The bits are
    the kernel's (see leangraph::DynamicQuantLinear: 7/8 for fbgemm, 8/7 for ONNX Runtime)."""
    count = 0
    for node in candidate_layers(model):
        if node.name not in names:
            continue
        quantized, scale = quantize_weight(node.inputs[1].const_value.numpy(), weight_bits)
        constants = []
        for suffix, array in (("int8", quantized), ("scale", scale)):
            value = ir.Value(name=f"{node.inputs[1].name}_{suffix}", shape=ir.Shape(array.shape),
                             type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), const_value=ir.tensor(array))
            model.graph.register_initializer(value)
            constants.append(value)
        replacement = ir.Node(
            DOMAIN, "DynamicQuantLinear", [node.inputs[0], *constants, *node.inputs[2:]],
            attributes=[ir.AttrString("activation", node.attributes.get_string("activation", "none")),
                        ir.AttrInt64("activation_bits", activation_bits)],
            name=node.name, metadata_props=dict(node.metadata_props))
        ir.convenience.replace_nodes_and_values(model.graph, node, [node], [replacement], node.outputs,
                                                replacement.outputs)
        count += 1
    return count
