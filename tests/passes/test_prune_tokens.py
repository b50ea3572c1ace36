"""Token pruning (passes/token_merging/prune_tokens.py): EViT's keep-and-fuse after attention, on
the padded and the packed layout alike, through token merging's downstream rewrites."""

from __future__ import annotations

import numpy as np
import pytest

from leangraph.backends.reference import run_reference
from leangraph.demo import sentence_encoder
from leangraph.ir import clone_model
from leangraph.passes.token_merging.merge_tokens import MergeTokens
from leangraph.passes.token_merging.prune_tokens import PruneTokens
from leangraph.passes.token_merging.reduction import reduce_tokens
from leangraph.passes.token_merging.knobs import _build
from tests.passes.test_merge_tokens import _bert_inputs, _cosine, _exact_graph, _on_onnxruntime
from tests.zoo import ZOO


@pytest.fixture(scope="module")
def graphs():
    encoder = sentence_encoder(ZOO["bert"].build())
    return {layout: _exact_graph(encoder, _bert_inputs(), ZOO["bert"].dynamic_shapes, layout == "packed")
            for layout in ("packed", "padded")}


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_prunes_and_runs_as_the_reference_does(graphs, layout):
    graph = clone_model(graphs[layout])
    result = PruneTokens(0.6)(graph)
    assert result.changed and "2/2 layers" in result.notes[0], result.notes
    inputs = [x.numpy() for x in _bert_inputs()]
    expected = run_reference(graph, inputs)[0]
    np.testing.assert_allclose(_on_onnxruntime(graph, inputs)[0], expected, rtol=1e-4, atol=1e-5)
    exact = run_reference(graphs[layout], inputs)[0]
    assert _cosine(expected, exact).min() > 0.9 and not np.allclose(expected, exact, atol=1e-6)


def test_padded_and_packed_layouts_prune_the_same_tokens(graphs):
    inputs = [x.numpy() for x in _bert_inputs()]
    outputs = []
    for layout in ("packed", "padded"):
        graph = clone_model(graphs[layout])
        assert PruneTokens([0.5, 0.8])(graph).changed
        outputs.append(run_reference(graph, inputs)[0])
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


def test_keep_rate_one_changes_nothing(graphs):
    result = PruneTokens(1.0)(clone_model(graphs["padded"]))
    assert not result.changed and "keep rate < 1" in result.notes[0]


def test_merging_and_pruning_in_one_model(graphs):
    """The search's knob space: one layer merges, the other prunes."""
    graph = clone_model(graphs["packed"])
    changed, note = reduce_tokens(graph, {0: _build(("merge", "hidden", 0.3)), 1: _build(("prune", 0.7))}, "x")
    assert changed, note
    assert {n.op_type for n in graph.graph} >= {"MergeTokens", "PruneTokens"}
    inputs = [x.numpy() for x in _bert_inputs()]
    np.testing.assert_allclose(_on_onnxruntime(graph, inputs)[0], run_reference(graph, inputs)[0], rtol=1e-4, atol=1e-5)
    assert not MergeTokens(0.1)(graph).changed  # a reduced graph is not reduced again
