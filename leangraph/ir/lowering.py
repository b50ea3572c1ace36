"""Replace every `leangraph` op of a model by its decomposition into standard ONNX ops, for
backends (ONNX Runtime, exporters) that do not know our domain. Exact: the decomposition is the op's
definition. The model is changed in place and returned."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import onnx_ir as ir
from onnx_ir.passes.common import CommonSubexpressionEliminationPass, RemoveUnusedNodesPass

from leangraph.ir import registry
from leangraph.ir.verify import all_graphs

Decomposition = Callable[[ir.tape.Tape, list, dict], list]


def lower_to_onnx(model: ir.Model, decompositions: Mapping[str, Decomposition] | None = None) -> ir.Model:
    """``decompositions``: a backend's own lowering of some ops (op type -> function with the
    signature of ``OpDef.decompose``), e.g. to a runtime's contrib kernels; the ops' domains must
    then be in the model's opset imports (the caller adds them)."""
    for graph in list(all_graphs(model.graph)):
        for node in list(graph):
            if node.domain != registry.DOMAIN:
                continue
            opdef = registry.lookup(node.op_type)
            decompose = (decompositions or {}).get(node.op_type, opdef.decompose)
            tape = ir.tape.Tape()
            outputs = decompose(tape, list(node.inputs), opdef.attrs_of(node))
            for index, new_node in enumerate(tape.nodes):
                new_node.metadata_props.update(node.metadata_props)
                new_node.name = f"{node.name}/{index}_{new_node.op_type}"
                _name_subgraph_values(new_node)
            for old, new in zip(node.outputs, outputs):
                new.name, new.shape, new.type = old.name, old.shape, old.type
            ir.convenience.replace_nodes_and_values(graph, node, [node], tape.nodes, node.outputs, outputs)
    model.opset_imports.pop(registry.DOMAIN, None)
    # Decompositions of ops that read one mask compute its indices each; computed once (constants
    # up to 64 elements compared), and what a decomposition no longer reads (a Split it looked
    # through) dropped.
    CommonSubexpressionEliminationPass(size_limit=64)(model)
    RemoveUnusedNodesPass()(model)
    return model


def _name_subgraph_values(node: ir.Node) -> None:
    """Names for the nodes and values of a decomposition's branches (If), prefixed by the node's:
    each graph numbers its unnamed values itself (val_0, ...), and ONNX Runtime takes a branch's
    val_3 for the outer graph's."""
    for attr in node.attributes.values():
        if attr.type != ir.AttributeType.GRAPH:
            continue
        for index, inner in enumerate(attr.value):
            inner.name = f"{node.name}/{attr.name}/{index}_{inner.op_type}"
            for position, value in enumerate(inner.outputs):
                value.name = f"{inner.name}:{position}"
            _name_subgraph_values(inner)
