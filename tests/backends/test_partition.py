"""Partitioning: nodes a backend cannot run go to the fallback, pieces run in order, outputs equal
the whole graph's, and every fallback is reported with its op."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from leangraph.backends.onnxruntime import OnnxRuntimeBackend
from leangraph.backends.partition import assign, compile_partitioned, partition
from leangraph.backends.reference import ReferenceBackend, ReferenceExecutable
from tests.passes._build import model_from_text


class OnlyOps(ReferenceBackend):
    """A backend that runs only some op types (on the reference interpreter)."""

    def __init__(self, *ops: str) -> None:
        self.name = "restricted"
        self.ops = set(ops)

    def supports(self, node: ir.Node) -> bool:
        return node.op_type in self.ops


TEXT = """<ir_version: 10, opset_import: ["" : 20]>
g (float[batch,4] x) => (float[batch,3] y, float[batch,4] z) {
    a = Relu(x)
    b = MatMul(a, w)
    c = Neg(b)
    d = Add(c, c)
    z = Mul(a, a)
    y = Relu(d)
}"""
W = {"w": np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5}
X = np.linspace(-2, 2, 8, dtype=np.float32).reshape(2, 4)


def test_unsupported_ops_fall_back_and_outputs_match():
    model = model_from_text(TEXT, W)
    chain = [OnlyOps("Relu", "Neg", "Add", "Mul"), OnnxRuntimeBackend()]
    executable, pieces, fallbacks = compile_partitioned(model, chain)
    assert [(f.op, f.wanted, f.used) for f in fallbacks] == [("MatMul", "restricted", "onnxruntime")]
    assert [p.backend for p in pieces] == ["restricted", "onnxruntime", "restricted"]
    expected = ReferenceExecutable(model)([X])
    for got, want in zip(executable([X]), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_onnxruntime_pieces_between_other_backends_do_not_spin():
    # Spinning ORT threads take the cores from the next piece's kernels after run() returns.
    model = model_from_text(TEXT, W)
    executable, pieces, _ = compile_partitioned(model, [OnlyOps("Relu", "Neg", "Add", "Mul"), OnnxRuntimeBackend()])
    ort_piece = executable.executables[[p.backend for p in pieces].index("onnxruntime")]
    options = ort_piece.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    alone, _, _ = compile_partitioned(model, [OnnxRuntimeBackend()])
    with pytest.raises(RuntimeError, match="does not have configuration"):  # ORT's default: spinning
        alone.executables[0].session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


def test_preferring_the_current_backend_keeps_pieces_few():
    model = model_from_text(TEXT, W)
    assignment, _ = assign(model, [OnlyOps("Relu", "Neg", "Add", "Mul"), OnnxRuntimeBackend()])
    pieces = partition(model, assignment)
    # z = Mul(a, a) joins the first restricted piece instead of starting a fourth one
    assert len(pieces) == 3 and "z" in pieces[0].outputs


def test_single_backend_is_one_piece():
    model = model_from_text(TEXT, W)
    executable, pieces, fallbacks = compile_partitioned(model, [OnnxRuntimeBackend()])
    assert len(pieces) == 1 and not fallbacks


def test_minilm_graph_split_around_attention(minilm):
    import leangraph

    model, tokenizer = minilm
    batch = tokenizer(["a short one", "and a somewhat longer sentence"], padding=True, return_tensors="np")
    inputs = (batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64))
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    cm = leangraph.optimize(model, inputs, dynamic_shapes=dynamic, backend="reference")
    graph = cm.graph
    chain = [OnlyOps(*{n.op_type for n in graph.graph} - {"MultiHeadAttention"}), OnnxRuntimeBackend()]
    executable, pieces, fallbacks = compile_partitioned(graph, chain)
    assert len(fallbacks) == 6 and {f.op for f in fallbacks} == {"leangraph::MultiHeadAttention"}
    assert len(pieces) == 13
    expected = ReferenceExecutable(graph)(list(inputs))
    for got, want in zip(executable(list(inputs)), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["auto", "tvm", "torch", "onnxruntime"])
def test_control_flow_reading_outer_values_runs_whole(backend):
    # onnx_ir's extractor cannot cut an If whose branches read outer values into a piece: backend
    # "auto" failed with "In clone_graph ..."; the whole graph runs on the chain's last backend.
    import numpy as np
    from onnx import TensorProto, helper

    import leangraph
    from tests.helpers import make_model, tensor

    then_branch = helper.make_graph([helper.make_node("Relu", ["x2"], ["t"])], "then", [], [tensor("t")])
    else_branch = helper.make_graph([helper.make_node("Neg", ["x2"], ["e"])], "else", [], [tensor("e")])
    model = make_model([helper.make_node("Mul", ["x", "x"], ["x2"], name="square"),
                        helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch,
                                         name="if")],
                       [tensor("x"), tensor("c", TensorProto.BOOL, [])], [tensor("y")])
    x = np.full((2, 3), 2.0, np.float32)
    cm = leangraph.optimize(model, (x, np.array(True)), backend=backend)
    np.testing.assert_array_equal(cm(x, np.array(True)), x * x)
    np.testing.assert_array_equal(cm(x, np.array(False)), -x * x)


@pytest.mark.parametrize("backend", ["auto", "tvm", "torch", "onnxruntime", "reference"])
def test_a_graph_that_folds_to_constants_runs(backend):
    import numpy as np
    from onnx import helper, numpy_helper

    import leangraph
    from tests.helpers import make_model, tensor

    constant = numpy_helper.from_array(np.array([-1.0, 2.0], np.float32), "c")
    model = make_model([helper.make_node("Relu", ["c"], ["y"], name="relu")], [], [tensor("y", shape=(2,))],
                       [constant])
    np.testing.assert_array_equal(leangraph.optimize(model, (), backend=backend)(), [0.0, 2.0])
