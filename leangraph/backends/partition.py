"""Cutting a graph into pieces, each run by one backend.

Every node goes to the first backend of the preference chain whose ``supports(node)`` accepts it
(the last backend of a chain is a fallback that accepts everything, ONNX Runtime normally). The
nodes are then ordered topologically, preferring at every step a ready node of the backend already
being filled (Kahn's algorithm with that tie-break), and cut where the backend changes. Pieces are
contiguous in a topological order, so running them one after another is always valid; the
preference keeps their number small.

Each piece becomes a model of its own (onnx-ir's ``extract``): its inputs are what it reads from
the graph inputs or from earlier pieces, its outputs what later pieces or the graph outputs read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence

import networkx as nx
import numpy as np
import onnx_ir as ir

from leangraph.backends.base import Backend, Executable
from leangraph.errors import OptionError
from leangraph.ir.stats import op_key


@dataclasses.dataclass
class Partition:
    backend: str
    nodes: list[ir.Node]
    inputs: list[str]
    outputs: list[str]

    @property
    def key(self) -> str:
        """Names the piece across save and load: its backend and a digest of its node names."""
        digest = hashlib.sha256("\n".join(node.name or "" for node in self.nodes).encode()).hexdigest()
        return f"{self.backend}-{digest[:20]}"

    @property
    def ops(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[op_key(node)] = counts.get(op_key(node), 0) + 1
        return counts


@dataclasses.dataclass(frozen=True)
class Fallback:
    """A node that did not go to the preferred backend, and the op that caused it."""

    node: str
    op: str
    wanted: str
    used: str


BACKEND_CHOICE = "leangraph.backend"
"""Node metadata: the backend a measurement chose for the node (cost_model/backend_choice.py), honoured by
:func:`assign` when that backend is in the chain and supports the node."""


def assign(model: ir.Model, chain: Sequence[Backend]) -> tuple[dict[ir.Node, str], list[Fallback]]:
    """Each node's backend (its recorded choice, else the first in ``chain`` that supports it) and
    the fallbacks that made."""
    if not chain:
        raise OptionError("an empty backend chain cannot run anything", hint="name at least one backend")
    assignment, fallbacks = {}, []
    for node in model.graph:
        chosen = node.metadata_props.get(BACKEND_CHOICE)
        preferred = [b for b in chain if b.name == chosen] + list(chain)
        for backend in preferred:
            if backend.supports(node):
                assignment[node] = backend.name
                break
        else:
            raise OptionError(
                f"no backend of {[b.name for b in chain]} supports node '{node.name}' ({op_key(node)})",
                hint="end the chain with a backend that runs every ONNX op (onnxruntime or reference)",
            )
        if assignment[node] != chain[0].name and chosen != assignment[node]:
            fallbacks.append(Fallback(node.name, op_key(node), chain[0].name, assignment[node]))
    return assignment, fallbacks


def _order(model: ir.Model, assignment: dict[ir.Node, str]) -> list[ir.Node]:
    flow = nx.DiGraph()
    index = {node: i for i, node in enumerate(model.graph)}
    flow.add_nodes_from(index)
    for node in model.graph:
        for value in node.inputs:
            if value is not None and value.producer() in index:
                flow.add_edge(value.producer(), node)
    waiting = {node: flow.in_degree(node) for node in flow}
    ready = [node for node, n in waiting.items() if n == 0]
    order, current = [], None
    while ready:
        same = [node for node in ready if assignment[node] == current]
        node = min(same or ready, key=index.__getitem__)
        ready.remove(node)
        order.append(node)
        current = assignment[node]
        for successor in flow.successors(node):
            waiting[successor] -= 1
            if waiting[successor] == 0:
                ready.append(successor)
    return order


def partition(model: ir.Model, assignment: dict[ir.Node, str]) -> list[Partition]:
    """The pieces, in an order in which they can run one after another."""
    groups: list[tuple[str, list[ir.Node]]] = []
    for node in _order(model, assignment):
        if groups and groups[-1][0] == assignment[node]:
            groups[-1][1].append(node)
        else:
            groups.append((assignment[node], [node]))
    graph_outputs = {v.name for v in model.graph.outputs}
    pieces = []
    for position, (backend, nodes) in enumerate(groups):
        produced = {v.name for node in nodes for v in node.outputs}
        inputs = []
        for node in nodes:
            for value in node.inputs:
                if value is None or value.name in produced or value.name in inputs:
                    continue
                if value.is_graph_input():  # an initializer that is also an input is a default: pass it on
                    inputs.append(value.name)
                    continue
                if value.is_initializer() or (value.const_value is not None and value.producer() is None):
                    continue
                inputs.append(value.name)
        later = {v.name for _, other in groups[position + 1 :] for node in other for v in node.inputs if v is not None}
        outputs = [v.name for node in nodes for v in node.outputs if v.name in later or v.name in graph_outputs]
        pieces.append(Partition(backend, nodes, inputs, outputs))
    return pieces


def has_subgraphs(model: ir.Model) -> bool:
    """Whether a node of the graph holds a subgraph (If, Loop, Scan)."""
    return any(attribute.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
               for node in model.graph for attribute in node.attributes.values())


def piece_model(model: ir.Model, piece: Partition) -> ir.Model:
    """``piece`` as a model of its own, with the initializers it reads."""
    graph = ir.convenience.extract(model.graph, piece.inputs, piece.outputs)
    graph.name = f"{model.graph.name}/{piece.backend}"
    return ir.Model(graph, ir_version=model.ir_version, functions=list(model.functions.values()))


class PartitionedExecutable:
    """Runs the compiled pieces one after another, passing values by name. Thread-safe when every
    piece is (each call has its own value table)."""

    def __init__(self, model: ir.Model, pieces: list[Partition], executables: list[Executable]) -> None:
        self.input_names = [v.name for v in model.graph.inputs]
        self.output_names = [v.name for v in model.graph.outputs]
        self.pieces = pieces
        self.executables = executables

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(self.executables) == 1:  # compiled from the whole model: its outputs in graph order
            return self.executables[0](inputs)
        values = dict(zip(self.input_names, inputs))
        for piece, run in zip(self.pieces, self.executables):
            values.update(zip(piece.outputs, run([values[name] for name in piece.inputs])))
        return [values[name] for name in self.output_names]


def compile_partitioned(model: ir.Model, chain: Sequence[Backend],
                        libraries: Mapping[str, str | os.PathLike] | None = None):
    """(executable, pieces, fallbacks) running ``model`` on ``chain``; a single piece is compiled
    whole. ``libraries`` maps piece keys to libraries their backend exported (artifacts): those
    pieces are loaded instead of compiled."""
    assignment, fallbacks = assign(model, chain)
    pieces = partition(model, assignment)
    if not pieces or (len(pieces) > 1 and has_subgraphs(model)):
        # No node (every output a constant or an input), or control flow whose branches read outer
        # values, which onnx_ir's extractor cannot cut into pieces: the whole graph runs on the
        # last backend of the chain, which runs every ONNX op.
        fallback = chain[-1]
        fallbacks = [Fallback(node.name, op_key(node), chain[0].name, fallback.name) for node in model.graph
                     if chain[0].name != fallback.name]
        pieces = [Partition(fallback.name, list(model.graph), [v.name for v in model.graph.inputs],
                            [v.name for v in model.graph.outputs])]
    by_name = {backend.name: backend for backend in chain}
    alone = len(pieces) == 1
    executables = []
    for piece in pieces:
        backend = by_name[piece.backend]
        graph = model if alone else piece_model(model, piece)
        library = (libraries or {}).get(piece.key)
        if library is not None:
            executables.append(backend.load_library(graph, library, alone=alone))
        else:
            executables.append(backend.compile(graph, alone=alone))
    return PartitionedExecutable(model, pieces, executables), pieces, fallbacks
