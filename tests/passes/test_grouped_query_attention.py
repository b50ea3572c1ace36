"""fold_repeat_kv (passes/kv_reuse/grouped_query_attention.py): attention over repeat_kv'd keys and
values computes the same with the groups as rows against each KV head once; causal-by-attribute
attention and unrepeated attention are left as they are."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from leangraph.backends.reference import run_reference
from leangraph.ir import clone_model
from leangraph.ir.registry import DOMAIN
from leangraph.passes.kv_reuse.grouped_query_attention import fold_repeat_kv, repeat_kv_source

B, N, S = ir.SymbolicDim("batch"), ir.SymbolicDim("n"), ir.SymbolicDim("keys")


def _int64(name, values):
    value = ir.Value(name=name, const_value=ir.tensor(np.array(values, np.int64)))
    value.shape, value.type = ir.Shape([len(values)]), ir.TensorType(ir.DataType.INT64)
    return value


def _model(mask_heads: int | None, causal: int = 0, repeated: bool = True) -> ir.Model:
    floats = ir.TensorType(ir.DataType.FLOAT)
    q = ir.Value(name="q", type=floats, shape=ir.Shape([B, 4, N, 8]))
    k, v = (ir.Value(name=n, type=floats, shape=ir.Shape([B, 2 if repeated else 4, S, 8])) for n in "kv")
    inputs, nodes = [q, k, v], []
    axis, copies, heads = _int64("axis", [2]), _int64("copies", [1, 1, 2, 1, 1]), _int64("heads", [0, 4, -1, 8])
    repeated_kv = []
    for x in (k, v):
        if not repeated:
            repeated_kv.append(x)
            continue
        up = ir.Node("", "Unsqueeze", [x, axis], name=f"{x.name}_up")
        grow = ir.Node("", "Expand", [up.outputs[0], copies], name=f"{x.name}_grow")
        flat = ir.Node("", "Reshape", [grow.outputs[0], heads], name=f"{x.name}_flat")
        up.outputs[0].shape = ir.Shape([B, 2, 1, S, 8])
        grow.outputs[0].shape = ir.Shape([B, 2, 2, S, 8])
        flat.outputs[0].shape = ir.Shape([B, 4, S, 8])
        for node in (up, grow, flat):
            node.outputs[0].type = floats
        nodes += [up, grow, flat]
        repeated_kv.append(flat.outputs[0])
    attention_inputs = [q, *repeated_kv]
    if mask_heads is not None:
        mask = ir.Value(name="mask", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([B, mask_heads, N, S]))
        inputs.append(mask)
        attention_inputs.append(mask)
    attention = ir.Node(DOMAIN, "Attention", attention_inputs, attributes=[ir.AttrFloat32("scale", 0.0),
                                                                           ir.AttrInt64("causal", causal),
                                                                           ir.AttrInt64("zero_nan_rows", 1)],
                        name="attention")
    attention.outputs[0].name, attention.outputs[0].type = "out", floats
    attention.outputs[0].shape = ir.Shape([B, 4, N, 8])
    graph = ir.Graph(inputs, attention.outputs, nodes=[*nodes, attention], initializers=[axis, copies, heads],
                     opset_imports={"": 20, DOMAIN: 1})
    return ir.Model(graph, ir_version=10)


def _feeds(mask_heads, repeated=True):
    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal((2, 4, 3, 8)).astype(np.float32)]
    feeds += [rng.standard_normal((2, 2 if repeated else 4, 5, 8)).astype(np.float32) for _ in range(2)]
    if mask_heads is not None:
        mask = rng.random((2, mask_heads, 3, 5)) > 0.3
        mask[..., 0] = True
        feeds.append(mask)
    return feeds


@pytest.mark.parametrize("mask_heads", [None, 1, 4])
def test_groups_become_rows_against_each_kv_head_once(mask_heads):
    model = _model(mask_heads)
    before = run_reference(clone_model(model), _feeds(mask_heads))[0]
    assert fold_repeat_kv(model) == (1, [])
    ops = [n.op_type for n in model.graph]
    assert "Expand" not in ops[:ops.index("Attention")] or mask_heads == 1  # only the mask's rows are repeated
    attention = next(n for n in model.graph if n.op_type == "Attention")
    assert attention.inputs[1].name == "k" and attention.inputs[2].name == "v"
    np.testing.assert_allclose(run_reference(model, _feeds(mask_heads))[0], before, rtol=1e-6, atol=1e-6)


def test_causal_by_attribute_is_left_with_the_reason():
    model = _model(1, causal=1)
    folded, left = fold_repeat_kv(model)
    assert folded == 0 and "causal by attribute" in left[0]
    assert repeat_kv_source(next(n for n in model.graph if n.op_type == "Attention").inputs[1]) is not None


def test_attention_without_repeated_keys_is_not_touched():
    model = _model(1, repeated=False)
    assert fold_repeat_kv(model) == (0, [])
