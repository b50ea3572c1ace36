"""Small graph-building helpers the KV-reuse rewrites share."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def int64_const(graph: ir.Graph, name: str, values) -> ir.Value:
    """An int64 initializer; one by that name already there is reused if it holds the same values
    (the same target or axis may be reached more than once)."""
    array = np.asarray(values, np.int64)
    existing = graph.initializers.get(name)
    if existing is not None and existing.const_value is not None and np.array_equal(existing.const_value.numpy(), array):
        return existing
    value = ir.Value(name=name, const_value=ir.tensor(array))
    value.shape, value.type = ir.Shape(list(array.shape)), ir.TensorType(ir.DataType.INT64)
    graph.register_initializer(value)
    return value
