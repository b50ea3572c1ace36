"""Shape and dtype inference for `leangraph` ops from their shape rules. Standard ONNX ops are
inferred by ONNX's own shape inference in the frontend; this fills in what it cannot see."""

from __future__ import annotations

import onnx_ir as ir

from leangraph.ir import registry
from leangraph.ir.registry import TensorInfo
from leangraph.ir.verify import all_graphs


def _to_shape(dims) -> ir.Shape | None:
    if dims is None:
        return None
    return ir.Shape([d if isinstance(d, int) else ir.SymbolicDim(d) for d in dims])


def infer_leangraph_shapes(model: ir.Model) -> None:
    """Set the dtype and shape of every leangraph op output whose rule can tell them."""
    for graph in all_graphs(model.graph):
        for node in graph:
            if node.domain != registry.DOMAIN:
                continue
            opdef = registry.lookup(node.op_type)
            infos = [TensorInfo.of(v) for v in node.inputs]
            try:
                results = opdef.shape_rule(infos, opdef.attrs_of(node))
            except (ValueError, TypeError, AttributeError, IndexError):
                continue  # the rule cannot tell with what is known: leave the outputs as they are
            for value, info in zip(node.outputs, results):
                if info.dtype is not None:
                    value.dtype = info.dtype
                if info.shape is not None:
                    value.shape = _to_shape(info.shape)
