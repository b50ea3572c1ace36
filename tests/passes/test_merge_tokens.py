"""Token merging (passes/token_merging/merge_tokens.py): applied to encoders in the padded and the
packed layout alike, pooled outputs kept close, and skipped with the reason where merging cannot
keep an output's meaning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import leangraph
from leangraph.backends import get_backend
from leangraph.backends.partition import compile_partitioned
from leangraph.backends.reference import run_reference
from leangraph.demo import sentence_encoder
from leangraph.ir import clone_model
from leangraph.passes.registry import default_pipeline
from leangraph.passes.token_merging.merge_tokens import MergeTokens
from leangraph.passes.token_merging.reduction import checked_sites
from tests.zoo import ZOO


def _exact_graph(model, example, dynamic, packed: bool):
    pipeline = default_pipeline() if packed else [p for p in default_pipeline() if getattr(p, "name", "") != "remove_padding"]
    return leangraph.optimize(model, example, dynamic_shapes=dynamic, passes=pipeline, backend="reference").graph


def _on_onnxruntime(graph, inputs):
    executable, _, _ = compile_partitioned(graph, [get_backend("onnxruntime")])
    return executable(inputs)


def _cosine(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _bert_inputs(batch=4, seq=24, vocab=100):
    generator = torch.Generator().manual_seed(seq)
    ids = torch.randint(3, vocab, (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    for row in range(1, batch):
        mask[row, seq - 3 * row:] = 0
    return ids, mask


@pytest.fixture(scope="module")
def bert_encoder():
    return sentence_encoder(ZOO["bert"].build())


@pytest.fixture(scope="module", params=["packed", "padded"])
def bert_graph(request, bert_encoder):
    return _exact_graph(bert_encoder, _bert_inputs(), ZOO["bert"].dynamic_shapes, request.param == "packed")


def test_merges_every_layer_and_runs_as_the_reference_does(bert_graph):
    graph = clone_model(bert_graph)
    result = MergeTokens(0.25)(graph)
    assert result.changed, result.notes
    assert "2/2 layers" in result.notes[0]
    assert sum(n.op_type == "MergeTokens" for n in graph.graph) == 2
    inputs = [x.numpy() for x in _bert_inputs()]
    expected = run_reference(graph, inputs)[0]
    np.testing.assert_allclose(_on_onnxruntime(graph, inputs)[0], expected, rtol=1e-4, atol=1e-5)
    exact = run_reference(bert_graph, inputs)[0]
    assert _cosine(expected, exact).min() > 0.9  # lossy, but pooled sentences stay close
    assert not np.allclose(expected, exact, atol=1e-6)  # and it did merge something


def test_padded_and_packed_layouts_merge_the_same_tokens(bert_encoder):
    example, inputs = _bert_inputs(), [x.numpy() for x in _bert_inputs()]
    outputs = []
    for packed in (True, False):
        graph = _exact_graph(bert_encoder, example, ZOO["bert"].dynamic_shapes, packed)
        assert MergeTokens([0.2, 0.3])(graph).changed
        outputs.append(run_reference(graph, inputs)[0])
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


def test_padding_does_not_change_a_sentence(bert_graph):
    """Padded positions have size 0: a sentence merges the same alone as padded in a batch."""
    ids, mask = (x.numpy() for x in _bert_inputs())
    graph = clone_model(bert_graph)
    MergeTokens(0.3)(graph)
    batched = run_reference(graph, [ids, mask])[0]
    length = int(mask[2].sum())
    alone = run_reference(graph, [ids[2:3, :length], mask[2:3, :length]])[0]
    np.testing.assert_allclose(batched[2:3], alone, rtol=1e-4, atol=1e-5)


def test_ratio_zero_changes_nothing(bert_graph):
    graph = clone_model(bert_graph)
    result = MergeTokens(0.0)(graph)
    assert not result.changed and "no layer has a merge ratio" in result.notes[0]


def test_per_layer_schedule(bert_graph):
    graph = clone_model(bert_graph)
    result = MergeTokens({1: 0.5})(graph)
    assert result.changed and "1/2 layers" in result.notes[0]
    assert len(checked_sites(bert_graph)) == 2


def test_per_token_output_is_skipped_with_the_reason():
    entry = ZOO["bert"]

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = entry.build()

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    graph = _exact_graph(Hidden().eval(), _bert_inputs(), entry.dynamic_shapes, packed=False)
    result = MergeTokens(0.3)(graph)
    assert not result.changed
    assert "has a token axis" in result.notes[0] and "pool inside the model" in result.notes[0]


def test_decoder_is_skipped_as_causal():
    entry = ZOO["gpt2"]
    example = entry.inputs(*entry.shapes[0])
    graph = leangraph.optimize(entry.build(), example, dynamic_shapes=entry.dynamic_shapes, backend="reference").graph
    result = MergeTokens(0.3)(graph)
    assert not result.changed and "causal" in result.notes[0]


def test_vit_cls_output_with_a_fixed_r():
    """ViT: no mask (every token real), CLS pooling reads the protected first token."""
    entry = ZOO["vit"]

    class ClsToken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = entry.build()

        def forward(self, pixel_values):
            return self.vit(pixel_values=pixel_values).last_hidden_state[:, 0]

    model = ClsToken().eval()
    example = entry.inputs(*entry.shapes[0])
    graph = leangraph.optimize(model, example, dynamic_shapes=entry.dynamic_shapes, backend="reference").graph
    merged = clone_model(graph)
    result = MergeTokens(0.0, r=2)(merged)
    assert result.changed, result.notes
    inputs = [example[0].numpy()]
    got = run_reference(merged, inputs)[0]
    np.testing.assert_allclose(_on_onnxruntime(merged, inputs)[0], got, rtol=1e-4, atol=1e-5)
    assert _cosine(got, run_reference(graph, inputs)[0]).min() > 0.9


def test_in_a_pipeline_under_a_tolerance(bert_encoder):
    """By name in optimize(passes=...): lossy, so it stays only under a tolerance that allows it."""
    example = _bert_inputs()
    loose = leangraph.optimize(bert_encoder, example, dynamic_shapes=ZOO["bert"].dynamic_shapes, backend="onnxruntime",
                               passes=[*default_pipeline(), "merge_tokens"],
                               tolerance=leangraph.Tolerance(rtol=1.0, atol=1.0, min_cosine=0.9))
    (record,) = [r for r in loose.report.records if r.name == "merge_tokens"]
    assert record.changed and record.verified and not record.reverted
    exact = leangraph.optimize(bert_encoder, example, dynamic_shapes=ZOO["bert"].dynamic_shapes, backend="reference",
                               passes=[*default_pipeline(), "merge_tokens"])
    (record,) = [r for r in exact.report.records if r.name == "merge_tokens"]
    assert record.reverted

