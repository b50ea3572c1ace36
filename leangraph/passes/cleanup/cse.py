"""Common-subexpression elimination: nodes with the same op, attributes and inputs are computed
once (onnx-ir's pass; it leaves non-deterministic ops such as RandomNormal alone). Exact."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from leangraph.ir import node_count
from leangraph.passes.base import graph_pass


@graph_pass("cse")
def cse(model: ir.Model) -> bool:
    """Merge duplicate computations, then drop the copies."""
    before = node_count(model)
    result = common.CommonSubexpressionEliminationPass()(model)
    if result.modified:
        common.RemoveUnusedNodesPass()(model)
    return result.modified or node_count(model) != before
