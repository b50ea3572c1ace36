"""Constant folding: evaluates nodes whose inputs are all constant (weights, shape arithmetic on
static dims) and replaces them by initializers, including shape computations that the symbolic
shapes make static (onnxscript's folder), and lifts Constant nodes into initializers. Exact: the
folded values are what the nodes computed.

Shape folding trusts the symbolic dims recorded in the graph; they come from torch.export or ONNX
shape inference, and verification runs the result on real inputs.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxscript.optimizer

from leangraph.passes.base import graph_pass


@graph_pass("constant_folding")
def constant_folding(model: ir.Model) -> bool:
    """Fold constant subgraphs and static shape arithmetic into initializers."""
    result = onnxscript.optimizer.fold_constants(model)
    if result.modified:
        onnxscript.optimizer.remove_unused_nodes(model)
    lifted = common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    return bool(result.modified or lifted.modified)
