"""introduce_kv_cache (passes/kv_reuse/introduce_kv_cache.py): the step graph computes, chunk by
chunk, the stateless decoder's last-position logits; decoders it cannot cache are refused with why."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import leangraph
from leangraph.backends.reference import ReferenceExecutable
from leangraph.ir import clone_model
from leangraph.passes.kv_reuse.introduce_kv_cache import LAYOUT_KEY, KVCacheLayout, introduce_kv_cache
from tests.runtime.test_generation import Logits, causal_lm

DYNAMIC = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}


def stateless(lm) -> object:
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    passes = [p for p in leangraph.passes.default_pipeline() if getattr(p, "name", "") != "remove_padding"]
    return leangraph.optimize(Logits(lm), (ids, torch.ones_like(ids)), dynamic_shapes=DYNAMIC, backend="reference",
                              passes=passes).graph


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_step_graph_matches_the_stateless_decoder_chunk_by_chunk(name):
    graph = stateless(causal_lm(name))
    step = clone_model(graph)
    layout = introduce_kv_cache(step)
    assert isinstance(layout, KVCacheLayout), layout
    assert KVCacheLayout.from_json(step.metadata_props[LAYOUT_KEY]) == layout
    assert [v.name for v in step.graph.outputs] == [layout.logits, *[n for pair in layout.present for n in pair]]
    full, run = ReferenceExecutable(graph), ReferenceExecutable(step)
    names = [v.name for v in step.graph.inputs]
    ids = np.random.default_rng(0).integers(0, 100, (2, 9)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # a left-padded row
    shapes = {v.name: [2 if i == 0 else (0 if i == axis else d) for i, d in enumerate(v.shape)]
              for (k, vv), axis in zip(layout.past, layout.seq_axis) for v in step.graph.inputs if v.name in (k, vv)}
    kv = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    done = 0
    for chunk in (4, 1, 1, 3):
        end = done + chunk
        feeds = {layout.tokens: ids[:, done:end], layout.mask: mask[:, :end], **kv}
        outputs = dict(zip([v.name for v in step.graph.outputs], run([feeds[n] for n in names])))
        (expected,) = full([ids[:, :end], mask[:, :end]])
        assert outputs[layout.logits].shape == (2, 1, 100)  # the LM head on the last position only
        np.testing.assert_allclose(outputs[layout.logits][:, -1], expected[:, -1], rtol=1e-4, atol=1e-5)
        kv = {past: outputs[present] for pasts, presents in zip(layout.past, layout.present)
              for past, present in zip(pasts, presents)}
        done = end


def test_an_encoder_is_refused_as_not_causal():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    graph = stateless(transformers.BertForMaskedLM(cfg).eval())
    before = [n.op_type for n in graph.graph]
    found = introduce_kv_cache(graph)
    assert isinstance(found, str) and "not causal" in found, found
    assert [n.op_type for n in graph.graph] == before  # untouched


def test_a_graph_without_attention_is_refused():
    mlp = torch.nn.Sequential(torch.nn.Embedding(100, 8), torch.nn.Linear(8, 100))

    class Ids(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return mlp(input_ids) * attention_mask[..., None]

    ids = torch.randint(0, 100, (2, 5))
    graph = leangraph.optimize(Ids(), (ids, torch.ones_like(ids)), dynamic_shapes=DYNAMIC, backend="reference").graph
    found = introduce_kv_cache(graph)
    assert isinstance(found, str) and "no leangraph::MultiHeadAttention" in found


def test_logits_mixing_positions_are_refused_naming_the_node_that_mixes_them():
    lm = causal_lm("gpt2")

    class Smoothed(Logits):
        def forward(self, input_ids, attention_mask):
            return super().forward(input_ids, attention_mask).cumsum(dim=1)  # each position reads all before it

    ids = torch.randint(0, 100, (2, 7))
    passes = [p for p in leangraph.passes.default_pipeline() if getattr(p, "name", "") != "remove_padding"]
    graph = leangraph.optimize(Smoothed(lm), (ids, torch.ones_like(ids)), dynamic_shapes=DYNAMIC, backend="reference",
                               passes=passes).graph
    found = introduce_kv_cache(graph)
    assert isinstance(found, str) and "not computed per position" in found, found
    assert "(CumSum: " in found and "is not seen to compute each position from that position alone" in found
