"""Linear layers to int8: leangraph::MatMulBiasAct -> leangraph::DynamicQuantLinear, or
leangraph::StaticQuantLinear, for the layers an assignment names (the search in
``mixed_precision.py`` chooses them); or to bfloat16, leangraph::Bf16Linear.

Weights are quantized once, per output channel, symmetric (scale = max |w| / 127, or / 63 for 7-bit
weights, over the channel); activations per call (see the op), or with a fixed scale from the range
:func:`activation_ranges` saw on calibration data. Lossy: runs only when the user allowed a loss,
and the search checks the result against the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from leangraph.ir import clone_model
from leangraph.ir.ops.bf16_linear import to_bfloat16
from leangraph.ir.ops.quant_linear import quantize_weight
from leangraph.ir.ops.static_quant_linear import calibrated_scale
from leangraph.ir.registry import DOMAIN


def candidate_layers(model: ir.Model) -> list[ir.Node]:
    """Linear layers with constant float32 matrix weights (and constant bias, if any). A graph input
    with a default is not constant: the caller may pass another value."""
    layers = []
    for node in model.graph:
        if node.domain != DOMAIN or node.op_type != "MatMulBiasAct":
            continue
        if any(value is not None and value.is_graph_input() for value in node.inputs[1:]):
            continue
        weight = node.inputs[1].const_value
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if (weight is not None and len(weight.shape) == 2 and node.inputs[1].dtype == ir.DataType.FLOAT
                and (bias is None or (bias.const_value is not None and len(bias.const_value.shape) == 1))):
            layers.append(node)
    return layers


def activation_ranges(model: ir.Model, input_sets: Sequence[Sequence[np.ndarray]],
                      compile_model: Callable[[ir.Model], Any]) -> dict[str, tuple[float, float]]:
    """Per candidate layer, the [min, max] its input took over ``input_sets`` (the unquantized model,
    compiled by ``compile_model`` with those inputs as extra outputs)."""
    probe = clone_model(model)
    layers = candidate_layers(probe)
    graph_inputs = [v.name for v in probe.graph.inputs]
    watched = []
    for node in layers:
        value = node.inputs[0]
        if value.name not in graph_inputs and value not in probe.graph.outputs and value not in watched:
            watched.append(value)
    probe.graph.outputs.extend(watched)
    compiled = compile_model(probe)
    names = graph_inputs + [v.name for v in probe.graph.outputs]
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    for inputs in input_sets:
        values = dict(zip(names, [*inputs, *compiled.run_flat(inputs)]))
        for node in layers:
            array = np.asarray(values[node.inputs[0].name])
            if array.size:
                low[node.name] = min(low.get(node.name, np.inf), float(array.min()))
                high[node.name] = max(high.get(node.name, -np.inf), float(array.max()))
    return {name: (low[name], high[name]) for name in low}


def quantize_layers(model: ir.Model, names: Collection[str], activation_bits: int = 7, weight_bits: int = 8,
                    static_activations: bool = False, *, ranges: Mapping[str, tuple[float, float]] | None = None) -> int:
    """Rewrite the named candidate layers in place; returns how many were rewritten. The bits are
    the kernel's (see leangraph::DynamicQuantLinear: 7/8 for fbgemm, 8/7 for ONNX Runtime without
    VNNI); ``static_activations`` takes each layer's calibrated range from ``ranges`` (8 bits)."""

    def int8(node: ir.Node):
        if static_activations and (ranges is None or node.name not in ranges):
            raise ValueError(f"layer '{node.name}' has no calibrated activation range for static quantization")
        quantized, scale = quantize_weight(node.inputs[1].const_value.numpy(), weight_bits)
        constants = {f"{node.inputs[1].name}_int8": quantized, f"{node.inputs[1].name}_scale": scale}
        if not static_activations:
            return "DynamicQuantLinear", constants, [ir.AttrInt64("activation_bits", activation_bits)]
        a_scale, a_zero = calibrated_scale(*ranges[node.name])
        return "StaticQuantLinear", {f"{node.name}_a_scale": np.array(a_scale),
                                     f"{node.name}_a_zero": np.array(a_zero), **constants}, []

    return _rewrite_layers(model, names, int8)


def bf16_layers(model: ir.Model, names: Collection[str]) -> int:
    """Rewrite the named candidate layers in place as leangraph::Bf16Linear (weights rounded to
    bfloat16 once); returns how many were rewritten."""
    return _rewrite_layers(model, names, lambda node: (
        "Bf16Linear", {f"{node.inputs[1].name}_bf16": to_bfloat16(node.inputs[1].const_value.numpy())}, []))


def _rewrite_layers(model: ir.Model, names: Collection[str], rewrite) -> int:
    """Replace each named candidate layer by the op ``rewrite(node)`` gives as (op type, constants
    that take the weight's place, attributes besides the activation); returns how many."""
    count = 0
    for node in candidate_layers(model):
        if node.name not in names:
            continue
        op_type, arrays, attributes = rewrite(node)
        constants = []
        for name, array in arrays.items():
            value = ir.Value(name=name, shape=ir.Shape(array.shape),
                             type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), const_value=ir.tensor(array))
            model.graph.register_initializer(value)
            constants.append(value)
        replacement = ir.Node(
            DOMAIN, op_type, [node.inputs[0], *constants, *node.inputs[2:]],
            attributes=[ir.AttrString("activation", node.attributes.get_string("activation", "none")), *attributes],
            name=node.name, metadata_props=dict(node.metadata_props))
        ir.convenience.replace_nodes_and_values(model.graph, node, [node], [replacement], node.outputs,
                                                replacement.outputs)
        count += 1
    return count
