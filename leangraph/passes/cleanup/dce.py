"""Dead-code elimination: removes Identity nodes (rewiring their readers), nodes whose outputs
nothing reads, unused initializers and unused model-local functions. Always exact."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from leangraph.ir import node_count
from leangraph.passes.base import graph_pass


@graph_pass("dce")
def dce(model: ir.Model) -> bool:
    """Remove Identity nodes, and nodes, initializers and functions no graph output depends on."""
    nodes, initializers = node_count(model), len(model.graph.initializers)
    functions = len(model.functions)
    common.IdentityEliminationPass()(model)
    common.RemoveUnusedNodesPass()(model)
    common.RemoveUnusedFunctionsPass()(model)
    return (node_count(model), len(model.graph.initializers), len(model.functions)) != (nodes, initializers, functions)
