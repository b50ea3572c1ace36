"""Counts the report and the demo print: nodes, op histogram, parameters."""

from __future__ import annotations

import collections
import math

import onnx_ir as ir

from leangraph.ir.verify import all_graphs


def op_key(node: ir.Node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def node_count(model: ir.Model) -> int:
    return sum(len(graph) for graph in all_graphs(model.graph))


def op_histogram(model: ir.Model) -> collections.Counter[str]:
    return collections.Counter(op_key(n) for graph in all_graphs(model.graph) for n in graph)


def parameter_count(model: ir.Model) -> int:
    """Elements held in initializers (weights, biases, constant tables)."""
    total = 0
    for value in model.graph.initializers.values():
        if value.shape is not None and all(isinstance(d, int) for d in value.shape):
            total += math.prod(value.shape)
    return total
