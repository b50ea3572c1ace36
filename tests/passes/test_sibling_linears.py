"""fuse_sibling_linears: linear layers reading one value become one wider layer and a Split."""

from __future__ import annotations

import numpy as np

from tests.passes._build import model_from_text, ops, run_pass

rng = np.random.default_rng(0)
WEIGHTS = {name: rng.standard_normal(shape).astype(np.float32)
           for name, shape in {"wq": (8, 6), "wk": (8, 8), "wv": (8, 8), "bq": (6,), "bk": (8,), "bv": (8,),
                               "wo": (6, 8)}.items()}
HEADER = '<ir_version: 10, opset_import: ["" : 20, "leangraph" : 1]>\n'
X = [rng.standard_normal((2, 5, 8)).astype(np.float32)]


def test_query_key_value_become_one_linear_layer():
    # q is read (and is a graph output) before k and v are computed: the wide layer goes first.
    model = model_from_text(HEADER + """g (float[2,5,8] x) => (float[2,5,6] q, float[2,5,8] y) {
        q = leangraph.MatMulBiasAct<activation="none">(x, wq, bq)
        r = leangraph.MatMulBiasAct<activation="none">(q, wo)
        k = leangraph.MatMulBiasAct<activation="none">(x, wk, bk)
        v = leangraph.MatMulBiasAct<activation="none">(x, wv, bv)
        s = Add(Add(r, k), v)
        y = Sigmoid(s)
    }""", WEIGHTS)
    model, record = run_pass("fuse_sibling_linears", model, X)
    assert record.changed and ops(model).count("MatMulBiasAct") == 2 and ops(model).count("Split") == 1
    (wide,) = [n for n in model.graph if n.op_type == "MatMulBiasAct" and n.inputs[0].name == "x"]
    assert list(wide.inputs[1].const_value.shape) == [8, 22] and [v.name for v in model.graph.outputs] == ["q", "y"]


def test_layers_that_differ_are_left_apart():
    model = model_from_text(HEADER + """g (float[2,5,8] x) => (float[2,5,8] y) {
        q = leangraph.MatMulBiasAct<activation="relu">(x, wk, bk)
        k = leangraph.MatMulBiasAct<activation="none">(x, wk, bk)
        v = leangraph.MatMulBiasAct<activation="none">(x, wk)
        y = Add(Add(q, k), v)
    }""", WEIGHTS)
    model, record = run_pass("fuse_sibling_linears", model, X)
    assert not record.changed and ops(model).count("MatMulBiasAct") == 3


def test_broadcast_biases_are_joined_as_rows():
    # a bias of shape [1] or [] adds one number to every column: joined as [N] of it, not as one
    # element of the wide bias
    weights = {**WEIGHTS, "b1": np.array([0.5], np.float32), "b0": np.array(-2.0, np.float32)}
    model = model_from_text(HEADER + """g (float[2,5,8] x) => (float[2,5,6] q, float[2,5,8] k, float[2,5,8] v) {
        q = leangraph.MatMulBiasAct<activation="none">(x, wq, b1)
        k = leangraph.MatMulBiasAct<activation="none">(x, wk, bk)
        v = leangraph.MatMulBiasAct<activation="none">(x, wv, b0)
    }""", weights)
    model, record = run_pass("fuse_sibling_linears", model, X)
    (wide,) = [n for n in model.graph if n.op_type == "MatMulBiasAct"]
    bias = wide.inputs[2].const_value.numpy()
    assert record.verified and bias.shape == (22,)
    np.testing.assert_array_equal(bias, np.concatenate([np.full(6, 0.5), weights["bk"], np.full(8, -2.0)]))


def test_bias_varying_by_row_is_not_joined():
    weights = {**WEIGHTS, "rows": rng.standard_normal((5, 6)).astype(np.float32)}
    model = model_from_text(HEADER + """g (float[2,5,8] x) => (float[2,5,6] q, float[2,5,8] k) {
        q = leangraph.MatMulBiasAct<activation="none">(x, wq, rows)
        k = leangraph.MatMulBiasAct<activation="none">(x, wk, bk)
    }""", weights)
    _, record = run_pass("fuse_sibling_linears", model, X)
    assert not record.changed
