"""backend="auto": pieces measured on both backends, the faster kept, the choice stored in the graph
and honoured when the artifact is loaded."""

from __future__ import annotations

import numpy as np
import pytest

import leangraph
from leangraph.cost_model.backend_choice import choose_backends
from leangraph.cost_model.store import MeasurementStore
from leangraph.backends.onnxruntime import OnnxRuntimeBackend
from leangraph.backends.partition import BACKEND_CHOICE, assign, compile_partitioned
from leangraph.backends.reference import ReferenceBackend
from tests.frontend.test_zoo import assert_matches_eager
from tests.passes._build import model_from_text
from tests.zoo import ZOO

TEXT = """<ir_version: 10, opset_import: ["" : 20]>
g (float[batch,64] x) => (float[batch,64] y) {
    a = MatMul(x, w)
    b = Relu(a)
    c = MatMul(b, w)
    y = Tanh(c)
}"""
W = {"w": np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32) / 8}
X = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)


class Interpreted(ReferenceBackend):
    """Runs everything, slowly (onnx.reference): ONNX Runtime must win every piece it is timed on."""

    name = "interpreted"


def test_slower_pieces_move_to_the_fallback_and_the_choice_is_recorded():
    model = model_from_text(TEXT, W)
    chain = [Interpreted(), OnnxRuntimeBackend()]
    lines = choose_backends(model, chain, [X])
    assert len(lines) == 1 and lines[0].endswith("-> onnxruntime"), lines
    assert {node.metadata_props[BACKEND_CHOICE] for node in model.graph} == {"onnxruntime"}
    assignment, fallbacks = assign(model, chain)
    assert set(assignment.values()) == {"onnxruntime"} and not fallbacks  # a choice, not a fallback
    executable, pieces, _ = compile_partitioned(model, chain)
    assert [p.backend for p in pieces] == ["onnxruntime"]
    np.testing.assert_allclose(executable([X])[0], np.tanh(np.maximum(X @ W["w"], 0) @ W["w"]), rtol=1e-5, atol=1e-6)


def test_a_race_in_the_measurement_store_is_not_run_again(tmp_path):
    store = MeasurementStore(tmp_path / "m.sqlite")
    chain = [Interpreted(), OnnxRuntimeBackend()]
    first = choose_backends(model_from_text(TEXT, W), chain, [X], store)
    second = choose_backends(model_from_text(TEXT, W), chain, [X], store)
    assert "(measured)" in first[0] and "(from the measurement store)" in second[0]
    assert first[0].split("(")[0] == second[0].split("(")[0]  # the same timings, read back
    other_batch = choose_backends(model_from_text(TEXT, W), chain, [X[:8]], store)
    assert "(measured)" in other_batch[0]  # other shapes are another measurement
    assert [row["kind"] for row in store.rows()] == ["piece", "piece"]


def test_auto_without_inputs_runs_on_onnxruntime():
    cm = leangraph.optimize(model_from_text(TEXT, W), backend="auto")
    assert cm.report.partitions == [("onnxruntime", len(list(cm.graph.graph)))]
    assert any("no example inputs" in note for note in cm.report.notes)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "gpt2", "vit"])
def test_zoo_through_auto_matches_eager_and_reloads_without_measuring(name, tmp_path):
    entry = ZOO[name]
    model = entry.build()
    cm = leangraph.optimize(model, entry.inputs(*entry.shapes[0]), dynamic_shapes=entry.dynamic_shapes, backend="auto")
    assert any(note.startswith("auto: piece") for note in cm.report.notes), cm.report.notes
    cm.save(tmp_path / "artifact")
    loaded = leangraph.load(tmp_path / "artifact")
    assert loaded.backend == "auto"
    for compiled in (cm, loaded):
        assert_matches_eager(name, model, compiled, entry)
