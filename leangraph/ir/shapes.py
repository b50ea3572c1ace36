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


_BOOL_RESULTS = {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN",
                 "IsInf"}


def fill_missing_dtypes(model: ir.Model) -> int:
    """Give the standard-op outputs a rewrite created without a dtype the one ONNX would infer
    (a graph cut into backend pieces needs it on every value crossing a cut); returns how many."""
    filled = 0
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        for value in node.outputs:
            if value is None or value.dtype is not None:
                continue
            if node.op_type in ("Shape", "Size", "NonZero", "ArgMax", "ArgMin"):
                dtype = ir.DataType.INT64
            elif node.op_type in _BOOL_RESULTS:
                dtype = ir.DataType.BOOL
            elif node.op_type == "Cast":
                dtype = ir.DataType(node.attributes.get_int("to"))
            elif node.op_type == "ConstantOfShape":
                attr = node.attributes.get("value")
                dtype = attr.as_tensor().dtype if attr is not None else ir.DataType.FLOAT
            elif node.op_type in ("Where",):
                dtype = next((v.dtype for v in node.inputs[1:] if v is not None and v.dtype is not None), None)
            elif node.op_type in ("Concat", "Max", "Min", "Sum", "Mean"):  # all operands alike
                dtype = next((v.dtype for v in node.inputs if v is not None and v.dtype is not None), None)
            else:  # the data operand's (Reshape's shape, Gather's indices and Slice's bounds come after it)
                dtype = node.inputs[0].dtype if node.inputs and node.inputs[0] is not None else None
            if dtype is not None:
                value.dtype = dtype
                filled += 1
    return filled
