"""The backends compute what ONNX says where compilers like to differ: NaN, inf, 0-d values."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

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


@pytest.mark.parametrize("backend", ["tvm", "torch", "onnxruntime", "reference"])
def test_scalar_values_stay_scalars_between_pieces(backend):
    # np.ascontiguousarray turns a 0-d array into a 1-d one: a scalar Constant computed by one piece
    # and read by a TVM piece failed "expect Tensor with ndim 0 but get 1".
    scalar = helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(2.0, np.float32)))
    model = make_model([scalar, helper.make_node("Mul", ["x", "k"], ["y"], name="mul"),
                        helper.make_node("Mul", ["s", "k"], ["t"], name="scalar_mul")],
                       [tensor("x", shape=(2, 3)), tensor("s", shape=())], [tensor("y", shape=(2, 3)), tensor("t", shape=())])
    x, s = np.ones((2, 3), np.float32), np.array(3.0, np.float32)
    y, t = leangraph.optimize(model, (x, s), backend=backend, passes="none")(x, s)
    np.testing.assert_array_equal(y, 2 * x)
    assert t.shape == () and t == 6.0


@pytest.mark.parametrize("backend", ["tvm", "torch", "onnxruntime", "reference", "auto"])
def test_inputs_with_defaults_take_the_callers_value_on_every_backend(backend):
    # From IR version 4 an initializer that is also a graph input is that input's default. The
    # partitioner dropped such inputs from its pieces and TVM baked the default in, so the caller's
    # value was ignored wherever a piece read it.
    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
                        helper.make_node("Add", ["m", "b"], ["s"], name="add"),
                        helper.make_node("Relu", ["s"], ["y"], name="relu")],
                       [tensor("x", shape=("batch", 3)), tensor("w", shape=(3, 3)), tensor("b", shape=(3,))],
                       [tensor("y", shape=("batch", 3))], [weight, bias])
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    w, b = np.full((3, 3), 0.5, np.float32), np.array([1.0, -10.0, 2.0], np.float32)
    cm = leangraph.optimize(model, (x, w, b), backend=backend)
    np.testing.assert_allclose(cm(x, w, b), np.maximum(x @ w + b, 0), rtol=1e-6)
    np.testing.assert_allclose(cm(x, np.eye(3, dtype=np.float32), np.zeros(3, np.float32)), np.maximum(x, 0))
    np.testing.assert_allclose(cm(x), np.maximum(x, 0))  # left out: their defaults
    np.testing.assert_allclose(cm(x, b=b), np.maximum(x + b, 0))
    with pytest.raises(leangraph.LeanGraphError, match="'x' not given"):
        cm(w=w)


@pytest.mark.parametrize("width", [1, 4])
def test_rms_norm_over_one_element_on_tvm(width):
    # The TVM backend's elementwise schedule took the reduction over an extent-1 axis for injective
    # (normalization drops the axis) and inlined it: [2, 3, 1] gave 0.014, nan, ... for 1.4999, -1.4999.
    from leangraph.backends.reference import ReferenceExecutable
    from leangraph.ir import DOMAIN

    weight = numpy_helper.from_array(np.full(width, 1.5, np.float32), "w")
    model = make_model([helper.make_node("RMSNorm", ["x", "w"], ["y"], domain=DOMAIN, axis=-1, epsilon=1e-6,
                                         name="rms")],
                       [tensor("x", shape=(2, 3, width))], [tensor("y", shape=(2, 3, width))], [weight],
                       domains=(DOMAIN,))
    x = np.random.default_rng(0).standard_normal((2, 3, width)).astype(np.float32)
    graph = leangraph.capture(model)
    expected = ReferenceExecutable(graph)([x])[0]
    got = leangraph.optimize(model, (x,), backend="tvm", passes="none")(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["tvm", "torch", "onnxruntime", "reference"])
def test_outputs_are_the_callers_to_write(backend):
    # The torch backend returned a weight (y = Identity(w)) by reference: writing into one call's
    # output changed every later call's.
    weight = numpy_helper.from_array(np.arange(3, dtype=np.float32), "w")
    model = make_model([helper.make_node("Identity", ["w"], ["y"], name="id"),
                        helper.make_node("Relu", ["x"], ["z"], name="relu")],
                       [tensor("x", shape=(3,))], [tensor("y", shape=(3,)), tensor("z", shape=(3,))], [weight])
    x = np.ones(3, np.float32)
    cm = leangraph.optimize(model, (x,), backend=backend, passes="none")
    y, _ = cm(x)
    if y.flags.writeable:
        y[:] = 42
    np.testing.assert_array_equal(cm(x)[0], np.arange(3, dtype=np.float32))


def test_an_input_named_self_can_be_passed_by_name():
    model = make_model([helper.make_node("Relu", ["self"], ["y"], name="relu")], [tensor("self", shape=(3,))],
                       [tensor("y", shape=(3,))])
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    np.testing.assert_array_equal(leangraph.optimize(model, (x,), backend="onnxruntime")(self=x), np.maximum(x, 0))


def test_scalar_outputs_stay_scalars_for_torch_inputs():
    import torch

    model = make_model([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0, name="sum")],
                       [tensor("x", shape=(2, 3))], [tensor("y", shape=())])
    out = leangraph.optimize(model, (np.ones((2, 3), np.float32),), backend="onnxruntime")(torch.ones(2, 3))
    assert isinstance(out, torch.Tensor) and out.shape == () and out.item() == 6.0


@pytest.mark.parametrize("backend", ["tvm", "torch", "onnxruntime", "reference"])
def test_unguarded_attention_keeps_its_nan_rows(backend):
    # HF's eager attention has no NaN guard: a row the mask hides entirely, or one with an infinite
    # score, is NaN in the graph. Fused (leangraph::Attention, zero_nan_rows=0) it stays NaN on
    # every backend, where the guarded form (torch's SDPA export) gives 0.
    scale = numpy_helper.from_array(np.array(0.35, np.float32), "scale")
    model = make_model([helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2], name="kt"),
                        helper.make_node("MatMul", ["q", "kt"], ["qk"], name="qk"),
                        helper.make_node("Mul", ["qk", "scale"], ["scaled"], name="scaled"),
                        helper.make_node("Add", ["scaled", "mask"], ["scores"], name="masked"),
                        helper.make_node("Softmax", ["scores"], ["p"], axis=-1, name="softmax"),
                        helper.make_node("MatMul", ["p", "v"], ["y"], name="pv")],
                       [tensor(n, shape=(2, 3, 4, 8)) for n in "qkv"] + [tensor("mask", shape=(2, 1, 4, 4))],
                       [tensor("y", shape=(2, 3, 4, 8))], [scale])
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, 4, 8)).astype(np.float32) for _ in range(3))
    mask = np.zeros((2, 1, 4, 4), np.float32)
    mask[1, 0, 2, :] = -np.inf
    q[0, 1, 3, 0] = np.inf
    expected = leangraph.optimize(model, (q, k, v, mask), backend="onnxruntime", passes="none")(q, k, v, mask)
    compiled = leangraph.optimize(model, (q, k, v, mask), backend=backend)
    assert any(r.fired for r in compiled.report.records if r.name == "fuse_attention")
    got = compiled(q, k, v, mask)
    assert np.isnan(expected).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
