"""The TVM backend computes what ONNX says on the values where compilers like to differ: NaN, inf."""

from __future__ import annotations

import numpy as np
from onnx import helper

import leangraph
from tests.helpers import make_model, tensor


def test_relu_keeps_nan_as_onnx_runtime_does():
    # Relax's relu lowered to LLVM's maxnum, which gives 0 for NaN: a fully masked softmax column
    # (NaN in ONNX) came out of a Relu as zeros on TVM and as NaN everywhere else.
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [tensor("x", shape=(2, 3))],
                       [tensor("y", shape=(2, 3))])
    x = np.array([[np.nan, -1.0, 2.0], [-np.inf, np.inf, 0.0]], np.float32)
    expected = leangraph.optimize(model, (x,), backend="onnxruntime", passes="none")(x)
    got = leangraph.optimize(model, (x,), backend="tvm", passes="none")(x)
    np.testing.assert_array_equal(got, expected)
    assert np.isnan(got[0, 0])
