"""Sibling linear layers -> one wider linear layer and a Split.

Linear layers (leangraph::MatMulBiasAct with a constant [K, N] weight) that read the same value,
with the same activation and all with or all without a constant bias of that layer's width (shape
[N], or [1, N]; a scalar bias of shape [] or [1] is broadcast to [N] first, which is exact: the
layer adds the same number to every column), become one MatMulBiasAct
whose weight (and bias) are theirs concatenated along N, followed by ``Split`` on the last axis
into the original outputs. In a transformer these are the query, key and value projections: one
GEMM of width 3N instead of three of width N (bigger GEMMs run closer to peak), and for int8 the
shared activations are quantized once instead of three times.

Exact up to round-off: every output column is the same dot product over K as before.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir

from leangraph.ir.registry import DOMAIN
from leangraph.passes.base import PassResult, graph_pass
from leangraph.passes.fusion._checks import rank, row_vector

MODULE_PATH = "leangraph.module_path"


def _linear_key(node: ir.Node):
    """What siblings must share (their input, activation, whether they have a bias), or None when
    ``node`` is not a linear layer with constant weights and a constant [N] bias (or none)."""
    if node.domain != DOMAIN or node.op_type != "MatMulBiasAct" or node.inputs[0] is None:
        return None
    weight = node.inputs[1]
    if weight is None or weight.const_value is None or len(weight.const_value.shape) != 2:
        return None
    if weight.is_graph_input():
        return None  # no constant, even with an initializer: that is its default
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and _bias_row(node) is None:
        return None  # a bias varying by row, or one that adds dims: it cannot be split by column
    activation = node.attributes["activation"].value if "activation" in node.attributes else "none"
    return (node.inputs[0], activation, bias is not None, weight.const_value.dtype, weight.const_value.shape[0])


def _bias_row(node: ir.Node) -> np.ndarray | None:
    """The node's bias as a [N] array (N its weight's width), else None."""
    # x @ W has x's rank (MatMul of a 1-D x gives a 1-D product)
    return row_vector(node.inputs[2], int(node.inputs[1].const_value.shape[1]), rank(node.inputs[0]))


def _constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def _fuse(graph: ir.Graph, siblings: list[ir.Node]) -> None:
    first = siblings[0]
    widths = [int(node.inputs[1].const_value.shape[1]) for node in siblings]
    name = first.name or "linear"
    inputs = [first.inputs[0],
              _constant(graph, f"{name}_siblings_weight",
                        np.concatenate([node.inputs[1].const_value.numpy() for node in siblings], axis=1))]
    if len(first.inputs) > 2 and first.inputs[2] is not None:
        inputs.append(_constant(graph, f"{name}_siblings_bias",
                                np.concatenate([_bias_row(node) for node in siblings])))
    fused = ir.node("MatMulBiasAct", inputs, {"activation": first.attributes["activation"].value}, domain=DOMAIN,
                    name=f"{name}_siblings")
    wide = fused.outputs[0]
    wide.name, wide.dtype = f"{name}_siblings_out", first.outputs[0].dtype
    if first.outputs[0].shape is not None:
        wide.shape = ir.Shape([*first.outputs[0].shape[:-1], sum(widths)])
    paths = [node.metadata_props.get(MODULE_PATH, "") for node in siblings]
    if any(paths):
        fused.metadata_props[MODULE_PATH] = " + ".join(p or n.name for p, n in zip(paths, siblings))
    sizes = _constant(graph, f"{name}_siblings_split", np.asarray(widths, dtype=np.int64))
    split = ir.node("Split", [wide, sizes], {"axis": -1}, num_outputs=len(siblings), name=f"{name}_siblings_split")
    # Before the first sibling: every sibling reads only the shared input and constants, and the
    # first one's users may come before the later siblings.
    graph.insert_before(siblings[0], [fused, split])
    for node, out in zip(siblings, split.outputs):
        old = node.outputs[0]
        name, out.dtype, out.shape = old.name, old.dtype, old.shape
        old.name = f"{name}_replaced"
        out.name = name
        ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
    graph.remove(siblings, safe=True)


@graph_pass("fuse_sibling_linears")
def fuse_sibling_linears(model: ir.Model) -> PassResult:
    """Linear layers reading the same value -> one wider linear layer + Split (e.g. Q, K, V)."""
    groups: dict[tuple, list[ir.Node]] = collections.defaultdict(list)
    for node in model.graph:
        key = _linear_key(node)
        if key is not None:
            groups[key].append(node)
    result = PassResult(False)
    for siblings in groups.values():
        if len(siblings) < 2:
            continue
        _fuse(model.graph, siblings)
        result.changed = True
        result.fired[f"{len(siblings)} linear layers"] += 1
    return result
