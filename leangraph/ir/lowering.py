"""Replace every `leangraph` op of a model by its decomposition into standard ONNX ops, for
backends (ONNX Runtime, exporters) that do not know our domain. Exact: the decomposition is the op's
definition. The model is changed in place and returned."""

from __future__ import annotations

import onnx_ir as ir

from leangraph.ir import registry
from leangraph.ir.verify import all_graphs


def lower_to_onnx(model: ir.Model) -> ir.Model:
    for graph in list(all_graphs(model.graph)):
        for node in list(graph):
            if node.domain != registry.DOMAIN:
                continue
            opdef = registry.lookup(node.op_type)
            tape = ir.tape.Tape()
            outputs = opdef.decompose(tape, list(node.inputs), opdef.attrs_of(node))
            for index, new_node in enumerate(tape.nodes):
                new_node.metadata_props.update(node.metadata_props)
                new_node.name = f"{node.name}/{index}_{new_node.op_type}"
            for old, new in zip(node.outputs, outputs):
                new.name, new.shape, new.type = old.name, old.shape, old.type
            ir.convenience.replace_nodes_and_values(graph, node, [node], tape.nodes, node.outputs, outputs)
    model.opset_imports.pop(registry.DOMAIN, None)
    return model
