"""Dead-code elimination: removes Identity nodes (rewiring their readers), nodes whose outputs
nothing reads, unused initializers and unused model-local functions. Always exact.

A graph that would return one value twice (a Scan body ``return sum, Identity(sum)``, once its
Identity is gone) gets an Identity back for the repeat: ONNX Runtime's Scan returns garbage for
the second (uninitialized memory: ONNX's test_scan9_sum, found by the operator cases)."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from leangraph.ir import node_count
from leangraph.ir.verify import all_graphs
from leangraph.passes.base import graph_pass


@graph_pass("dce")
def dce(model: ir.Model) -> bool:
    """Remove Identity nodes, and nodes, initializers and functions no graph output depends on."""
    nodes, initializers = node_count(model), len(model.graph.initializers)
    functions = len(model.functions)
    common.IdentityEliminationPass()(model)
    common.RemoveUnusedNodesPass()(model)
    common.RemoveUnusedFunctionsPass()(model)
    for graph in list(all_graphs(model.graph)):
        _return_each_value_once(graph)
    return (node_count(model), len(model.graph.initializers), len(model.functions)) != (nodes, initializers, functions)


def _return_each_value_once(graph: ir.Graph) -> None:
    seen = set()
    for index, value in enumerate(graph.outputs):
        if value in seen:
            copy = ir.node("Identity", [value], name=f"{value.name}_repeat{index}")
            copy.outputs[0].name = f"{value.name}_repeat{index}"
            copy.outputs[0].dtype, copy.outputs[0].shape = value.dtype, value.shape
            copy.outputs[0].type = value.type
            graph.append(copy)
            graph.outputs[index] = copy.outputs[0]
        seen.add(value)
