"""ONNX Runtime backend: the sessions it opens."""

from __future__ import annotations

import numpy as np
import pytest
import onnx
import onnx.parser
import onnxruntime as ort

from leangraph.backends.onnxruntime import inference_session, session_options

RESIDUAL_NORM = """<ir_version: 10, opset_import: ["" : 20]>
g (float[1, 7, 16] x, float[1, 7, 16] residual) => (float[1, 7, 16] y) <float[16] gamma, float[16] beta> {
    s = Add(x, residual)
    y = LayerNormalization<axis=-1, epsilon=1e-5>(s, gamma, beta)
}"""


def _fused_ops(tmp_path, open_session) -> set[str]:
    model = onnx.parser.parse_model(RESIDUAL_NORM)
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.ones(16, np.float32), "gamma"),
                                    onnx.numpy_helper.from_array(np.zeros(16, np.float32), "beta")])
    options = session_options(threads=1)
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    open_session(model.SerializeToString(), options)
    return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}


def test_sessions_leave_residual_add_and_layer_norm_unfused(tmp_path):
    # ONNX Runtime's own default fuses them into SkipLayerNormalization, slower on CPU.
    plain = _fused_ops(tmp_path, lambda model, options: ort.InferenceSession(model, options,
                                                                          providers=["CPUExecutionProvider"]))
    assert "SkipLayerNormalization" in plain
    ours = _fused_ops(tmp_path, inference_session)
    assert "SkipLayerNormalization" not in ours and {"Add", "LayerNormalization"} <= ours


# ONNX Runtime's own rewrites that are not exact on graphs leangraph hands over: each graph below
# is valid, and the session must compute what the reference computes.

HEADER = '<ir_version: 10, opset_import: ["" : 20]>\n'
NORM_BODY = """
    ax = Constant<value = int64[1] {-1}>()
    two = Constant<value = float {TWO}>()
    eps = Constant<value = float {1e-5}>()
    m = ReduceMean<keepdims=1>(XF, ax)
    c = CENTERED
    cv = CV
    p = Pow(cv, two)
    v = ReduceMean<keepdims=1>(p, ax)
    s = Sqrt(Add(v, eps))
    n = Div(c, s)
    y = Add(Mul(n, scale), bias)
"""


def _norm(centered="Sub(xf, m)", two="2.0", cv="Identity(c)", prologue="xf = Identity(x)") -> str:
    body = NORM_BODY.replace("XF", "xf").replace("CENTERED", centered).replace("TWO", two).replace("CV", cv)
    return HEADER + "g (float[2,5,8] x) => (float[2,5,8] y) {\n" + prologue + "\n" + body + "}"


NOT_QUITE_LAYER_NORMS = {
    # ONNX Runtime's LayerNormFusion took mean - x for x - mean: every output negated (error 5.2)
    "mean minus x": _norm(centered="Sub(m, xf)"),
    # ... Pow(c, 2.001) for a square (NaN for negative c in the original)
    "power 2.001": _norm(two="2.001"),
    # ... and fused through Casts into graphs it could not load
    "through float64": _norm(prologue="xd = Cast<to=11>(x)\n xf = Cast<to=1>(xd)"),
    "through float16": _norm(cv="Cast<to=1>(Cast<to=10>(c))"),
}


def _ort_and_reference(text: str, initializers: dict[str, np.ndarray], x: np.ndarray):
    from leangraph.backends.onnxruntime import OrtExecutable
    from leangraph.backends.reference import ReferenceExecutable
    from tests.passes._build import model_from_text

    model = model_from_text(text, initializers)
    executable = OrtExecutable(model, threads=1)
    return executable, executable([x]), ReferenceExecutable(model)([x])


@pytest.mark.parametrize("case", list(NOT_QUITE_LAYER_NORMS))
def test_sessions_do_not_fuse_what_is_not_a_layer_norm(case):
    g = np.random.default_rng(0)
    weights = {"scale": g.standard_normal(8).astype(np.float32), "bias": g.standard_normal(8).astype(np.float32)}
    executable, got, want = _ort_and_reference(NOT_QUITE_LAYER_NORMS[case], weights,
                                               g.standard_normal((2, 5, 8)).astype(np.float32))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)  # NaN where the reference has NaN
    assert executable.unoptimized is None  # by leaving the fusion off, not by falling back


PAD_WITH_AXES = HEADER + """g (float[2,3,4] x) => (float[2,3,7] y) {
    t = Transpose<perm=[0,2,1]>(x)
    pads = Constant<value = int64[2] {1, 2}>()
    axes = Constant<value = int64[1] {AXIS}>()
    p = Pad(t, pads, , axes)
    y = Transpose<perm=[0,2,1]>(p)
}"""


@pytest.mark.parametrize("axis", [-2, 1])
def test_transposes_around_a_pad_with_axes(axis):
    # ONNX Runtime's transpose optimizers read the pads of a Pad with axes as if they covered every
    # axis: a Gather out of bounds at run time
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    executable, got, want = _ort_and_reference(PAD_WITH_AXES.replace("AXIS", str(axis)), {}, x)
    np.testing.assert_array_equal(got[0], want[0])
    assert executable.unoptimized is None


def test_session_failing_with_optimizations_falls_back_to_none(monkeypatch):
    # as if the Pad bug were not known: the optimized session fails at run time, the unoptimized runs
    import leangraph.backends.onnxruntime as backend

    monkeypatch.setattr(backend, "disabled_optimizers", lambda model: list(backend.DISABLED_FUSIONS))
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    executable, got, want = _ort_and_reference(PAD_WITH_AXES.replace("AXIS", "-2"), {}, x)
    np.testing.assert_array_equal(got[0], want[0])
    assert executable.unoptimized.startswith("running with them failed")
    np.testing.assert_array_equal(executable([x])[0], want[0])  # the unoptimized session from then on


def test_session_that_cannot_load_with_optimizations_falls_back_to_none(monkeypatch):
    import leangraph.backends.onnxruntime as backend

    monkeypatch.setattr(backend, "disabled_optimizers", lambda model: ["SkipLayerNormFusion"])
    g = np.random.default_rng(0)
    weights = {"scale": g.standard_normal(8).astype(np.float32), "bias": g.standard_normal(8).astype(np.float32)}
    executable, got, want = _ort_and_reference(NOT_QUITE_LAYER_NORMS["through float64"], weights,
                                               g.standard_normal((2, 5, 8)).astype(np.float32))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
    assert executable.unoptimized.startswith("loading with them failed")


def test_graph_onnx_runtime_cannot_run_is_a_leangraph_error():
    # valid ONNX, but ONNX Runtime has no float64 Erf kernel
    from leangraph.backends.onnxruntime import OrtExecutable
    from leangraph.errors import ExecutionError
    from tests.passes._build import model_from_text

    model = model_from_text(HEADER + "g (double[2] x) => (double[2] y) { y = Erf(x) }")
    with pytest.raises(ExecutionError, match="ONNX Runtime cannot load model") as caught:
        OrtExecutable(model)
    assert caught.value.hint


def test_failing_inputs_are_a_leangraph_error_and_keep_the_optimized_session():
    from leangraph.backends.onnxruntime import OrtExecutable
    from leangraph.errors import ExecutionError
    from tests.passes._build import model_from_text

    executable = OrtExecutable(model_from_text(HEADER + "g (float[2,3] x) => (float[2,3] y) { y = Relu(x) }"))
    with pytest.raises(ExecutionError, match="ONNX Runtime failed running"):
        executable([np.zeros((4, 3), np.float32)])
    assert executable.unoptimized is None


def test_overridable_initializer_is_an_input_end_to_end():
    # IR version >= 4: an initializer listed as a graph input is a default the caller may override.
    # It stays an input, no pass folds it (w + b would become one constant, x * one would go), and
    # the compiled model computes with the value passed.
    import leangraph
    from tests.passes._build import flatten

    g = np.random.default_rng(2)
    defaults = {"w": g.standard_normal((4, 3)).astype(np.float32), "b": g.standard_normal(3).astype(np.float32),
                "one": np.ones(1, np.float32)}
    proto = onnx.parser.parse_model(flatten(HEADER.replace("ir_version: 10", "ir_version: 7") + """
        g (float[n,4] x, float[4,3] w, float[1] one) => (float[n,3] y) {
            y = Mul(Add(MatMul(x, w), b), one)
        }"""))
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in defaults.items())
    x = g.standard_normal((2, 4)).astype(np.float32)
    original = ort.InferenceSession(proto.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    for backend in ("onnxruntime", "reference"):
        cm = leangraph.optimize(proto, (x, defaults["w"], defaults["one"]), backend=backend)
        assert [spec.name for spec in cm.inputs] == ["x", "w", "one"]
        for w, one in ((defaults["w"], defaults["one"]), (2 * defaults["w"], np.full(1, -3.0, np.float32))):
            want = original.run(None, {"x": x, "w": w, "one": one})[0]
            np.testing.assert_allclose(cm(x, w, one), want, rtol=1e-5, atol=1e-6)


RMS_WITH_EPSILON_INPUT = HEADER.replace("ir_version: 10", "ir_version: 8") + """
g (float[2,5,8] x, float eps) => (float[2,5,8] y) {
    ax = Constant<value = int64[1] {-1}>()
    two = Constant<value = float {2.0}>()
    sc = Constant<value = float[8] {1, 2, 3, 4, 5, 6, 7, 8}>()
    ms = ReduceMean<keepdims=1>(Pow(x, two), ax)
    y = Mul(Div(x, Sqrt(Add(ms, eps))), sc)
}"""


def test_rms_norm_fusion_reads_no_overridable_epsilon():
    # ONNX Runtime's SimplifiedLayerNormFusion copied the epsilon's default into its kernel: the
    # value passed was ignored (error 12.3)
    from leangraph.backends.onnxruntime import OVERRIDABLE_BREAK, OrtExecutable, disabled_optimizers
    from leangraph.backends.reference import ReferenceExecutable
    from tests.passes._build import model_from_text

    model = model_from_text(RMS_WITH_EPSILON_INPUT, {"eps": np.array(1e-6, np.float32)})
    assert set(OVERRIDABLE_BREAK) <= set(disabled_optimizers(model))
    x = np.random.default_rng(3).standard_normal((2, 5, 8)).astype(np.float32)
    inputs = [x, np.array(5.0, np.float32)]
    np.testing.assert_allclose(OrtExecutable(model)(inputs)[0], ReferenceExecutable(model)(inputs)[0],
                               rtol=1e-5, atol=1e-6)


def test_fusions_left_off_only_where_they_break():
    # a graph without Pad axes or overridable inputs keeps ONNX Runtime's transpose optimizers and
    # its RMS-norm fusion (the one kernel leangraph::RMSNorm's decomposition becomes)
    from leangraph.backends.onnxruntime import DISABLED_FUSIONS, disabled_optimizers
    from tests.passes._build import model_from_text

    plain = model_from_text(RMS_WITH_EPSILON_INPUT.replace(", float eps) =>", ") =>").replace(
        "two = Constant", "eps = Constant<value = float {1e-6}>()\n    two = Constant"))
    assert disabled_optimizers(plain) == list(DISABLED_FUSIONS)
