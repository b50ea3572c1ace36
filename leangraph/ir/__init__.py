"""The IR: onnx-ir's in-memory model plus the `leangraph` op domain.

Standard ops keep ONNX semantics; our fused ops live in the ``leangraph`` domain, each with a
schema, a shape rule, a numpy reference implementation and a decomposition to ONNX (see
:mod:`leangraph.ir.registry`).
"""

import onnx_ir as ir

from leangraph.ir import ops as _ops  # noqa: F401  (registers the leangraph ops)
from leangraph.ir.lowering import lower_to_onnx
from leangraph.ir.registry import (
    DOMAIN, DOMAIN_VERSION, OpDef, TensorInfo, all_ops, attributes_of, lookup, register,
)
from leangraph.ir.shapes import fill_missing_dtypes, infer_leangraph_shapes
from leangraph.ir.stats import node_count, op_histogram, parameter_count
from leangraph.ir.verify import verify_model

def clone_model(model: ir.Model) -> ir.Model:
    """A copy whose graph can be rewritten freely: nodes and values are new, weight tensors are
    shared (nothing rewrites a tensor in place), and the in-memory ``meta`` (the captured output
    structure) comes along."""
    clone = model.clone()
    clone.meta.update(model.meta)
    return clone


TARGET_OPSET = 20
"""The default ONNX opset every model is converted to on import (what torch's exporter emits)."""

__all__ = [
    "DOMAIN",
    "DOMAIN_VERSION",
    "TARGET_OPSET",
    "OpDef",
    "TensorInfo",
    "all_ops",
    "attributes_of",
    "clone_model",
    "fill_missing_dtypes",
    "infer_leangraph_shapes",
    "lookup",
    "lower_to_onnx",
    "node_count",
    "op_histogram",
    "parameter_count",
    "register",
    "verify_model",
]
