"""Dims settled by probing: the unknown dims of a graph's values (``unk__12``, or none at all)
named after the graph inputs' dims or made static, from the sizes two probe runs give.

Why: KV-cache introduction tells the position axis of a value by its dim name (the mask's
``seq``) and proves a Reshape or Expand keeps positions apart by the static sizes after that
axis. The TorchScript exporter's head splits (``view(batch, seq, -1, head_size)``) and repeat_kv
leave the head counts unknown to ONNX's and ONNX Runtime's inference alike, so a Qwen2 file's
attention output read through Transpose and Reshape ``[batch, seq, unk__84, 8] -> [batch, seq,
unk__85]`` cannot be shown row-local from the graph. Two runs with different batch and sequence
sizes show it: a dim that follows the ``seq`` input dim in both is ``seq``, one of the same size
in both is static (and one that follows the product of two, ``batch*seq``, is named so).

Exact by construction only for graphs whose shapes depend on the inputs' dims alone (a decoder's:
no NonZero, no data-dependent lengths); a dim that merely happened to agree in both probes would
be wrong, which is why the step graph built on it is verified against the stateless graph on
other lengths before it is used.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from leangraph.backends.reference import run_reference
from leangraph.ir import clone_model


def _unsettled(dim, input_dims: set[str]) -> bool:
    return not isinstance(dim, int) and (dim is None or not isinstance(dim, ir.SymbolicDim)
                                         or dim.value is None or dim.value not in input_dims)


def settle_dims(model: ir.Model, probes: Sequence[Sequence[np.ndarray]]) -> int:
    """Settle what two or more probe runs (input lists, with sizes that differ per input dim
    between runs) show; returns how many dims were settled. ``model`` is changed in place."""
    graph = model.graph
    input_dims: dict[str, list[int]] = {}
    for position, value in enumerate(graph.inputs):
        for axis, dim in enumerate(value.shape or ()):
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
                input_dims.setdefault(dim.value, [int(np.shape(p[position])[axis]) for p in probes])
    names = set(input_dims)
    candidates = [v for node in graph for v in node.outputs
                  if v is not None and v.name and v.shape is not None and any(_unsettled(d, names) for d in v.shape)]
    if not candidates or len(probes) < 2:
        return 0
    probe = clone_model(model)
    probed = {v.name: v for node in probe.graph for v in node.outputs if v is not None}
    outputs = [probed[v.name] for v in candidates if v.name in probed]
    kept = {v.name for v in probe.graph.outputs}
    probe.graph.outputs.extend(v for v in outputs if v.name not in kept)
    runs = [dict(zip([v.name for v in probe.graph.outputs], run_reference(probe, list(inputs)))) for inputs in probes]
    settled = 0
    for value in candidates:
        shapes = [np.shape(run[value.name]) for run in runs if value.name in run]
        if len(shapes) != len(probes) or any(len(s) != len(value.shape) for s in shapes):
            continue
        dims = list(value.shape)
        for axis, dim in enumerate(dims):
            if not _unsettled(dim, names):
                continue
            sizes = [s[axis] for s in shapes]
            named = [name for name, seen in input_dims.items() if seen == sizes and len(set(seen)) > 1]
            # or two input dims flattened into one ([batch*seq, width]), named as torch.export names it
            named = named or [f"{a}*{b}" for a, b in itertools.combinations(input_dims, 2)
                              if [x * y for x, y in zip(input_dims[a], input_dims[b])] == sizes]
            if len(named) == 1:
                dims[axis] = ir.SymbolicDim(named[0])
            elif len(set(sizes)) == 1:
                dims[axis] = sizes[0]
            else:
                continue
            settled += 1
        value.shape = ir.Shape(dims)
    return settled
