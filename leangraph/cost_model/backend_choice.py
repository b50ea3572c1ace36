"""backend="auto": each piece goes to the backend that runs it fastest, by measurement.

The graph is first cut for the preferred chain (TVM where it is installed, ONNX Runtime for the
rest); the whole model runs once on the example inputs to record what every piece reads; then each
piece not already on ONNX Runtime is compiled for its backend and for ONNX Runtime and timed on
those values (median of a few calls). Pieces ONNX Runtime runs faster move to it, and the graph is
cut again (neighbouring ONNX Runtime pieces merge). The decision is written into the graph, as the
metadata ``leangraph.backend`` of every node, so a saved artifact (and a cache hit) reuses it
instead of measuring again; the race's timings go into the measurement store (cost_model.store), so
the same piece in a later optimize() is not raced again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from leangraph.backends.base import Backend
from leangraph.backends.partition import BACKEND_CHOICE, assign, partition, piece_model
from leangraph.cost_model.store import MeasurementStore, default_store, structure_key
from leangraph.cost_model.timing import median_seconds


def choose_backends(model: ir.Model, chain: Sequence[Backend], inputs: Sequence[np.ndarray],
                    store: MeasurementStore | None = None) -> list[str]:
    """Record the fastest backend of every piece in the nodes' metadata; returns one line per
    measured piece (for the report). ``chain[-1]`` is the fallback every piece can run on. A race
    already in the measurement store (same piece structure, shapes and machine) is not run again."""
    store = store if store is not None else default_store()
    assignment, _ = assign(model, chain)
    pieces = partition(model, assignment)
    by_name = {backend.name: backend for backend in chain}
    fallback = chain[-1]
    values = dict(zip([v.name for v in model.graph.inputs], inputs))
    lines = []
    for index, piece in enumerate(pieces):
        sub_model = piece_model(model, piece)
        own = by_name[piece.backend].compile(sub_model, alone=len(pieces) == 1)
        piece_inputs = [values[name] for name in piece.inputs]
        outputs = own(piece_inputs)
        if piece.backend != fallback.name:
            key = structure_key(sub_model, [(a.dtype.str, a.shape) for a in piece_inputs]) + ":" + \
                f"{piece.backend}/{fallback.name}"
            stored = store.get("piece", key)
            source = "from the measurement store" if stored is not None else "measured"
            if stored is None:
                other = fallback.compile(sub_model, alone=len(pieces) == 1)
                stored = [median_seconds(lambda run=run: run(piece_inputs)) for run in (own, other)]
                store.put("piece", key, stored, {"nodes": len(piece.nodes), "backends": [piece.backend, fallback.name]})
            mine, theirs = stored
            winner = piece.backend if mine <= theirs else fallback.name
            lines.append(f"auto: piece {index + 1} ({len(piece.nodes)} nodes) {piece.backend} {mine * 1e3:.2f} ms, "
                         f"{fallback.name} {theirs * 1e3:.2f} ms ({source}) -> {winner}")
            for node in piece.nodes:
                assignment[node] = winner
        values.update(zip(piece.outputs, outputs))
    for node in model.graph:
        node.metadata_props[BACKEND_CHOICE] = assignment[node]
    return lines
