"""Structural checks of an IR model, with messages that name the model, node and op.

:func:`verify_model` raises on the first problem found, in this order: an op nobody defines (unknown
domain, unknown op, or a leangraph op with the wrong arity/attributes), a value nobody produces
(a missing initializer or input), a cycle. ONNX's own checker runs after these, for the rest.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import networkx as nx
import onnx
import onnx_ir as ir

from leangraph.errors import InvalidGraphError, UnsupportedOpError, describe_node
from leangraph.ir import registry

STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
ONNXRUNTIME_DOMAIN = "com.microsoft"
"""ONNX Runtime's contrib ops: what its transformers optimizer and quantizer write (Attention,
SkipLayerNormalization, BiasGelu, DynamicQuantizeMatMul...). A model holding them is accepted;
they run on ONNX Runtime."""


@functools.cache
def onnxruntime_contrib_ops() -> frozenset[str]:
    """The op types ONNX Runtime has a schema for in its contrib domain."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
    except ImportError:
        return frozenset()
    return frozenset(schema.name for schema in ort_state.get_all_operator_schema()
                     if schema.domain == ONNXRUNTIME_DOMAIN)


def model_name(model: ir.Model) -> str:
    return model.graph.name or "<unnamed>"


def all_graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    """The graph and, recursively, every subgraph held in a node attribute (If, Loop, Scan)."""
    yield graph
    for node in graph:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from all_graphs(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.value:
                    yield from all_graphs(sub)


def check_op(node: ir.Node, model: ir.Model) -> None:
    """Raise :class:`UnsupportedOpError` unless ``node``'s op is defined for this model."""
    domain = node.domain
    name = model_name(model)
    if (domain, node.op_type, node.overload) in model.functions:
        return
    if domain in STANDARD_DOMAINS:
        onnx_domain = "" if domain == "ai.onnx" else domain
        if onnx.defs.has(node.op_type, onnx_domain):
            return
        raise UnsupportedOpError(
            f"{describe_node(node, name)}: '{node.op_type}' is not an operator of the ONNX "
            f"domain '{domain or 'ai.onnx'}'",
            hint="check the op name (ONNX op names are case-sensitive), or re-export the model",
        )
    if domain == registry.DOMAIN:
        opdef = registry.lookup(node.op_type)
        opdef.check_arity(node)
        opdef.attrs_of(node)
        return
    if domain == ONNXRUNTIME_DOMAIN and node.op_type in onnxruntime_contrib_ops():
        return  # ONNX Runtime runs it (the partitioner gives it to ONNX Runtime), and passes may rewrite it
    raise UnsupportedOpError(
        f"{describe_node(node, name)}: domain '{domain}' is unknown to leangraph "
        f"(it runs the ONNX domains, '{registry.DOMAIN}', ONNX Runtime's '{ONNXRUNTIME_DOMAIN}' ops, and "
        "functions defined in the model)",
        hint="export the model with standard ONNX ops, or include the function definitions "
        "of custom ops in the model",
    )


def undefined_inputs(graph: ir.Graph) -> Iterator[tuple[ir.Node, ir.Value]]:
    """(node, value) for every node input that no node, graph input or initializer provides."""
    for node in graph:
        for value in node.inputs:
            if value is None or value.producer() is not None:
                continue
            if value.is_graph_input() or value.is_initializer():
                continue
            yield node, value


def find_cycle(graph: ir.Graph) -> list[ir.Node] | None:
    """The nodes on one cycle of the graph's data flow, or None when it is acyclic."""
    flow = nx.DiGraph()
    for node in graph:
        flow.add_node(node)
        for value in node.inputs:
            if value is not None and value.producer() is not None and value.producer().graph is graph:
                flow.add_edge(value.producer(), node)
    try:
        return [edge[0] for edge in nx.find_cycle(flow)]
    except nx.NetworkXNoCycle:
        return None


def verify_model(model: ir.Model) -> None:
    """Check ops, value definitions and acyclicity of every graph in ``model``."""
    name = model_name(model)
    for graph in all_graphs(model.graph):
        for node in graph:
            check_op(node, model)
        for node, value in undefined_inputs(graph):
            raise InvalidGraphError(
                f"{describe_node(node, name)} reads '{value.name}', which is neither a graph input, "
                f"an initializer, nor the output of any node (a missing initializer?)",
                hint="add the initializer to the model, or load the model with its external data",
            )
        cycle = find_cycle(graph)
        if cycle:
            path = " -> ".join(f"'{n.name}' ({n.op_type})" for n in [*cycle, cycle[0]])
            raise InvalidGraphError(
                f"the graph of model '{name}' has a cycle: {path}",
                hint="a data-flow graph must be acyclic; fix the node inputs that close the loop",
            )
    for function in model.functions.values():
        for node in function:
            check_op(node, model)
