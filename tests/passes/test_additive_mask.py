"""additive_masks (passes/kv_reuse/additive_mask.py): boolean masks and -inf additive masks become
finite additive ones without the NaN guard; rows that see a key are unchanged, a row that sees none
is finite instead of zeros."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from leangraph.backends.reference import run_reference
from leangraph.ir import clone_model
from leangraph.ir.registry import DOMAIN
from leangraph.passes.kv_reuse.additive_mask import additive_masks


def _model(mask_dtype) -> ir.Model:
    floats = ir.TensorType(ir.DataType.FLOAT)
    q, k, v = (ir.Value(name=n, type=floats, shape=ir.Shape([1, 2, 4, 8])) for n in "qkv")
    mask = ir.Value(name="mask", type=ir.TensorType(mask_dtype), shape=ir.Shape([1, 1, 4, 4]))
    node = ir.Node(DOMAIN, "Attention", [q, k, v, mask], attributes=[ir.AttrFloat32("scale", 0.0),
                                                                     ir.AttrInt64("causal", 0),
                                                                     ir.AttrInt64("zero_nan_rows", 1)], name="attention")
    node.outputs[0].name, node.outputs[0].type, node.outputs[0].shape = "out", floats, ir.Shape([1, 2, 4, 8])
    graph = ir.Graph([q, k, v, mask], node.outputs, nodes=[node], opset_imports={"": 20, DOMAIN: 1})
    return ir.Model(graph, ir_version=10)


@pytest.mark.parametrize("dtype", [ir.DataType.BOOL, ir.DataType.FLOAT])
def test_rows_that_see_a_key_are_unchanged_and_none_is_nan(dtype):
    rng = np.random.default_rng(0)
    visible = np.tril(np.ones((4, 4), bool))
    visible[0] = False  # a left-padded position: sees no key
    mask = visible if dtype == ir.DataType.BOOL else np.where(visible, 0.0, -np.inf).astype(np.float32)
    feeds = [rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for _ in range(3)] + [mask[None, None]]
    model = _model(dtype)
    before = run_reference(clone_model(model), feeds)[0]
    assert additive_masks(model) == 1
    node = next(n for n in model.graph if n.op_type == "Attention")
    assert node.attributes.get_int("zero_nan_rows") == 0 and node.inputs[3].dtype == ir.DataType.FLOAT
    after = run_reference(model, feeds)[0]
    np.testing.assert_array_equal(after[:, :, 1:], before[:, :, 1:])
    assert np.isfinite(after).all() and not before[:, :, 0].any()
