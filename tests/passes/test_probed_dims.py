"""settle_dims (passes/kv_reuse/probed_dims.py): unknown dims named after the input dims they
follow in two probe runs (or their product), or made static; dims that vary otherwise stay unknown."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from leangraph.passes.kv_reuse.probed_dims import settle_dims


def _graph() -> tuple[ir.Model, dict[str, ir.Value]]:
    """x [batch, seq, 8] -> split heads [batch, seq, ?, 2] and flatten [?, 8]; NonZero's count is
    data-dependent ([1, ?])."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT),
                 shape=ir.Shape([ir.SymbolicDim("batch"), ir.SymbolicDim("seq"), 8]))
    heads_target = ir.Value(name="heads_target", const_value=ir.tensor(np.array([0, 0, -1, 2], np.int64)))
    flat_target = ir.Value(name="flat_target", const_value=ir.tensor(np.array([-1, 8], np.int64)))
    heads = ir.Node("", "Reshape", [x, heads_target], name="split")
    flat = ir.Node("", "Reshape", [x, flat_target], name="flatten")
    positive = ir.Node("", "Greater", [x, ir.Value(name="zero", const_value=ir.tensor(np.zeros((), np.float32)))],
                       name="positive")
    count = ir.Node("", "NonZero", [positive.outputs[0]], name="count")
    outputs = {"heads": heads.outputs[0], "flat": flat.outputs[0], "count": count.outputs[0]}
    for name, value in outputs.items():
        value.name = name
        value.type = ir.TensorType(ir.DataType.INT64 if name == "count" else ir.DataType.FLOAT)
    outputs["heads"].shape = ir.Shape([ir.SymbolicDim("batch"), ir.SymbolicDim("seq"), None, 2])
    outputs["flat"].shape = ir.Shape([ir.SymbolicDim("unk__1"), 8])
    outputs["count"].shape = ir.Shape([3, None])
    graph = ir.Graph([x], list(outputs.values()), nodes=[heads, flat, positive, count],
                     initializers=[heads_target, flat_target, positive.inputs[1]], opset_imports={"": 20})
    return ir.Model(graph, ir_version=10), outputs


def test_dims_follow_the_probes_inputs_or_stay_unknown():
    model, outputs = _graph()
    rng = np.random.default_rng(0)
    probes = [[rng.standard_normal((2, 5, 8)).astype(np.float32)], [rng.standard_normal((3, 7, 8)).astype(np.float32)]]
    settled = settle_dims(model, probes)
    assert settled == 2
    assert outputs["heads"].shape == ir.Shape([ir.SymbolicDim("batch"), ir.SymbolicDim("seq"), 4, 2])
    assert outputs["flat"].shape == ir.Shape([ir.SymbolicDim("batch*seq"), 8])
    assert outputs["count"].shape[1] is None or not isinstance(outputs["count"].shape[1], int)  # data-dependent


def test_nothing_to_settle_runs_nothing():
    model, outputs = _graph()
    for value in outputs.values():
        value.shape = ir.Shape([1])
    assert settle_dims(model, [[np.zeros((2, 5, 8), np.float32)], [np.zeros((3, 7, 8), np.float32)]]) == 0
