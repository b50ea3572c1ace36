"""A compact, stable text form of a graph: one line per node, for diffs and the CLI.

    %linear = leangraph::MatMulBiasAct(%layer_norm, %W, %bias) {activation=gelu}   # encoder.layer.0.intermediate

Value names are kept by passes wherever possible, so a unified diff of two printouts shows what a
pass changed.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from leangraph.ir.stats import op_key
from leangraph.ir.verify import all_graphs

_MODULE_PATH = "leangraph.module_path"


def _value(value: ir.Value | None) -> str:
    if value is None:
        return "''"
    const = value.const_value
    if const is not None and not value.is_graph_input() and const.size <= 4:
        try:
            array = const.numpy()
        except Exception:  # external or unreadable tensor: print the name only
            return f"%{value.name}"
        if array.dtype.kind in "fiub":
            return f"%{value.name}{{{np.array2string(array.reshape(-1), separator=',', precision=4)}}}"
    return f"%{value.name}"


def _attr(attr: ir.Attr) -> str:
    if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        return f"{attr.name}=<graph>"
    if attr.type == ir.AttributeType.TENSOR:
        return f"{attr.name}=<tensor {attr.value.dtype.name}{list(attr.value.shape)}>"
    value = attr.value
    if isinstance(value, float):
        value = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        value = "[" + ",".join(str(v) for v in value) + "]"
    return f"{attr.name}={value}"


def format_node(node: ir.Node) -> str:
    outputs = ", ".join(f"%{v.name}" for v in node.outputs)
    inputs = ", ".join(_value(v) for v in node.inputs)
    attrs = " {" + ", ".join(_attr(a) for a in node.attributes.values()) + "}" if node.attributes else ""
    module = node.metadata_props.get(_MODULE_PATH, "")
    line = f"{outputs} = {op_key(node)}({inputs}){attrs}"
    return f"{line:<100}  # {module}" if module else line


def format_model(model: ir.Model) -> list[str]:
    """Every node of every graph, one per line, after a header naming inputs and outputs."""
    lines = []
    for graph in all_graphs(model.graph):
        signature = ", ".join(f"%{v.name}" for v in graph.inputs)
        lines.append(f"graph {graph.name or ''}({signature}) -> ({', '.join('%' + v.name for v in graph.outputs)})")
        lines.extend("  " + format_node(node) for node in graph)
    return lines
