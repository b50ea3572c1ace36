"""Padding removal (passes/redundancy/padding_removal.py): applied where attention is masked by a
padding mask, exact on the valid tokens, and skipped with a reason everywhere else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils import _pytree as pytree

import leangraph
from leangraph.demo import sentence_encoder
from leangraph.ir.stats import op_key
from leangraph.passes.redundancy.padding_removal import remove_padding_pass
from leangraph.passes.verification import VALID_WHERE
from tests.frontend.test_zoo import eager_outputs
from tests.zoo import ZOO

ZEROING = remove_padding_pass(padded_outputs="zero")


def record(cm, name):
    (found,) = [r for r in cm.report.records if r.name == name]
    return found


def ops(cm) -> set[str]:
    return {op_key(node) for node in cm.graph.graph}


class HiddenStates(torch.nn.Module):
    """The model's per-token output alone (BERT's pooler reads position 0, padded or not)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids, attention_mask)
        return out if isinstance(out, torch.Tensor) else out.last_hidden_state


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "roberta", "distilbert", "gpt2"])
def test_packed_model_matches_eager_on_valid_tokens(name):
    entry = ZOO[name]
    model = HiddenStates(entry.build()).eval()
    example = entry.inputs(*entry.shapes[0])
    graph = leangraph.capture(model, example, entry.dynamic_shapes)
    default = leangraph.optimize(graph, example, backend="reference")
    # The hidden states at padded positions are outputs: the default pipeline leaves them alone.
    assert not record(default, "remove_padding").changed
    assert "padded_outputs='zero'" in record(default, "remove_padding").notes[0]

    passes = [*leangraph.passes.default_pipeline(), ZEROING]
    packed = leangraph.optimize(graph, example, backend="reference", passes=passes)
    zeroing = record(packed, ZEROING.name)
    assert zeroing.changed and zeroing.verified and not zeroing.reverted, str(packed.report)
    assert {"leangraph::PackTokens", "leangraph::UnpackTokens", "leangraph::PackedMultiHeadAttention"} <= ops(packed)
    assert "leangraph::MultiHeadAttention" not in ops(packed)
    assert ("causal" in " ".join(zeroing.notes)) == (name == "gpt2")
    assert packed.graph.graph.outputs[0].metadata_props[VALID_WHERE] == "attention_mask"
    on_ort = leangraph.optimize(packed.graph, backend="onnxruntime", passes="none")
    for shape in entry.shapes:
        inputs = entry.inputs(*shape)
        valid = inputs[1].numpy() != 0
        assert not valid.all(), "the zoo's masks pad later rows"
        (expected,) = eager_outputs(model, inputs)
        for cm in (packed, on_ort):
            (got,) = [t.numpy() for t in pytree.tree_leaves(cm(*inputs))]
            np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(got[~valid], 0)


def test_sentence_encoder_is_packed_by_default_and_exact(minilm):
    model, tokenizer = minilm
    sentences = ["a short one", "a somewhat longer sentence with more words in it", "mid length text here"]
    encoded = tokenizer(sentences, padding=True, return_tensors="pt")
    example = (encoded["input_ids"], encoded["attention_mask"])
    encoder = sentence_encoder(model)
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    cm = leangraph.optimize(encoder, example, dynamic_shapes=dynamic, backend="reference")
    padding = record(cm, "remove_padding")
    assert padding.changed and padding.verified, str(cm.report)
    assert "6 bidirectional attention" in padding.notes[0] and "1 unpacked" in padding.notes[0]
    assert VALID_WHERE not in cm.graph.graph.outputs[0].metadata_props  # pooling zeroed the padding itself
    other = tokenizer(sentences[::-1] + ["x"], padding=True, return_tensors="pt")
    for inputs in (example, (other["input_ids"], other["attention_mask"])):
        with torch.inference_mode():
            expected = encoder(*inputs).numpy()
        np.testing.assert_allclose(cm(*inputs).numpy(), expected, rtol=1e-4, atol=1e-5)


class MaskedAttention(torch.nn.Module):
    """Self-attention over x with a boolean mask built from a [batch, seq] input, summed over seq."""

    def __init__(self, inverted: bool):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v = (torch.nn.Linear(16, 16) for _ in range(3))
        self.inverted = inverted

    def forward(self, x, mask):
        def heads(t):
            return t.reshape(t.shape[0], t.shape[1], 2, 8).transpose(1, 2)

        visible = (mask[:, None, None, :] == 0) if self.inverted else (mask[:, None, None, :] != 0)
        out = torch.nn.functional.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)),
                                                               attn_mask=visible)
        return out.transpose(1, 2).reshape(x.shape[0], x.shape[1], 16).sum(1)


MASKED_INPUTS = (torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]))
MASKED_DYNAMIC = {"x": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}}


def test_skipped_with_a_reason_when_the_mask_hides_other_keys():
    cm = leangraph.optimize(MaskedAttention(inverted=True), MASKED_INPUTS, dynamic_shapes=MASKED_DYNAMIC,
                            backend="reference")
    assert "leangraph::MultiHeadAttention" in ops(cm)
    padding = record(cm, "remove_padding")
    assert not padding.changed
    assert "does not hide exactly the padded keys" in padding.notes[0], padding.notes
    assert "remove_padding: skipped" in str(cm.report)


def test_value_read_by_an_unmasked_reduction_is_not_packed():
    # The sum over seq includes the padded rows: zeroing them would change the result.
    cm = leangraph.optimize(MaskedAttention(inverted=False), MASKED_INPUTS, dynamic_shapes=MASKED_DYNAMIC,
                            backend="reference", passes=[*leangraph.passes.default_pipeline(), ZEROING])
    for name in ("remove_padding", ZEROING.name):
        padding = record(cm, name)
        assert not padding.changed and "not known to be unused" in padding.notes[0], padding.notes


def test_models_without_padding_masked_attention_are_skipped():
    entry = ZOO["vit"]
    model = entry.build()
    cm = leangraph.optimize(model, entry.inputs(*entry.shapes[0]), dynamic_shapes=entry.dynamic_shapes,
                            backend="reference")
    assert record(cm, "remove_padding").notes[0].startswith("skipped: no attention with a padding mask")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_decoders_with_rotary_and_grouped_kv_heads_run_attention_padded_between_packed_layers(name):
    entry = ZOO[name]
    model = HiddenStates(entry.build()).eval()
    example = entry.inputs(*entry.shapes[0])
    graph = leangraph.capture(model, example, entry.dynamic_shapes)
    packed = leangraph.optimize(graph, example, backend="reference", passes=[*leangraph.passes.default_pipeline(), ZEROING])
    zeroing = record(packed, ZEROING.name)
    assert zeroing.changed and zeroing.verified and not zeroing.reverted, str(packed.report)
    assert "attention (heads layout) run padded between unpack and pack" in zeroing.notes[0]
    assert {"leangraph::PackTokens", "leangraph::UnpackTokens", "leangraph::Attention"} <= ops(packed)
    linear = [n for n in packed.graph.graph if op_key(n) in ("leangraph::MatMulBiasAct", "MatMul")
              and n.inputs[1].const_value is not None]
    assert linear and all(n.outputs[0].shape[0] == "tokens" for n in linear)  # every projection on valid tokens
    on_ort = leangraph.optimize(packed.graph, backend="onnxruntime", passes="none")
    for shape in entry.shapes:
        inputs = entry.inputs(*shape)
        valid = inputs[1].numpy() != 0
        (expected,) = eager_outputs(model, inputs)
        for cm in (packed, on_ort):
            (got,) = [t.numpy() for t in pytree.tree_leaves(cm(*inputs))]
            np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(got[~valid], 0)


class MixesPositionsBeforeAttention(torch.nn.Module):
    """Heads split, then every position mixed with the sequence's last one (padded or not) before a
    padding-masked attention: padded positions reach valid outputs, so the island must be refused."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 16)
        self.qkv = torch.nn.Linear(16, 48)
        self.out = torch.nn.Linear(16, 16)

    def forward(self, input_ids, attention_mask):
        x = self.embed(input_ids)
        b, s, _ = x.shape
        q, k, v = (t.reshape(b, s, 2, 8).transpose(1, 2) for t in self.qkv(x).split(16, dim=-1))
        q = q + q[:, :, -1:, :]
        visible = attention_mask[:, None, None, :].bool()
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        return self.out(y.transpose(1, 2).reshape(b, s, 16)) * attention_mask[..., None]


def test_attention_island_reading_padded_positions_is_refused():
    ids = torch.randint(0, 50, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    cm = leangraph.optimize(MixesPositionsBeforeAttention(), (ids, mask), dynamic_shapes=dynamic, backend="reference")
    note = record(cm, "remove_padding").notes[0]
    assert note.startswith("skipped: the attention run padded between the packed layers"), note
    assert "depends on padded ones" in note


class Pooled(torch.nn.Module):
    """A small BERT with the poolings sentence encoders use, and optionally its padding mask computed
    from input_ids (`input_ids != pad_id`) instead of given."""

    def __init__(self, pooling: str, pad_id: int | None = None):
        super().__init__()
        self.model, self.pooling, self.pad_id = ZOO["bert"].build().eval(), pooling, pad_id

    def forward(self, input_ids, attention_mask=None):
        if self.pad_id is not None:
            attention_mask = (input_ids != self.pad_id).to(torch.int64)
        hidden = self.model(input_ids, attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "max":  # sentence-transformers: padded positions set to -1e9
            expanded = attention_mask.unsqueeze(-1).expand(hidden.shape)
            return torch.where(expanded == 0, torch.full_like(hidden, -1e9), hidden).max(dim=1).values
        if self.pooling == "last":  # last-token pooling of right-padded batches
            lengths = attention_mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0]), lengths]
        if self.pooling == "final":  # position -1: the last token of left-padded batches
            return hidden[:, -1]
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


MASKED_DYNAMIC_IDS = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}


def _right_padded(lengths, seq, pad_id=0):
    ids = torch.randint(2, 100, (len(lengths), seq), generator=torch.Generator().manual_seed(seq))
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).to(torch.int64)
    return ids.masked_fill(mask == 0, pad_id), mask


@pytest.mark.parametrize("pooling, padding", [("cls", "right"), ("max", "any"), ("last", "right"),
                                              ("final", "left"), ("mean", "any")])
def test_poolings_are_packed_and_exact(pooling, padding):
    model = Pooled(pooling)
    example = _right_padded([6, 3, 5], 6)
    if padding == "left":
        example = tuple(t.flip(1) for t in example)
    cm = leangraph.optimize(model, example, dynamic_shapes=MASKED_DYNAMIC_IDS, backend="onnxruntime")
    note = record(cm, "remove_padding").notes[0]
    assert record(cm, "remove_padding").changed and record(cm, "remove_padding").verified, str(cm.report)
    assert (f"only {padding}-padded batches keep valid" in note) == (padding != "any"), note
    other = _right_padded([2, 7, 4, 1], 7)
    if padding == "left":
        other = tuple(t.flip(1) for t in other)
    with torch.inference_mode():
        expected = model(*other).numpy()
    np.testing.assert_allclose(cm(*other).numpy(), expected, rtol=1e-4, atol=1e-5)



@pytest.mark.parametrize("pad_id", [0, 1])
def test_padding_mask_computed_from_input_ids_is_found(pad_id):
    model = Pooled("mean", pad_id=pad_id)
    example = _right_padded([6, 3, 5], 6, pad_id)[:1]
    cm = leangraph.optimize(model, example, dynamic_shapes={"input_ids": {0: "batch", 1: "seq"}},
                            backend="onnxruntime")
    padding = record(cm, "remove_padding")
    assert padding.changed and padding.verified, str(cm.report)
    other = _right_padded([2, 7, 4, 1], 7, pad_id)[:1]
    with torch.inference_mode():
        expected = model(*other).numpy()
    np.testing.assert_allclose(cm(*other).numpy(), expected, rtol=1e-4, atol=1e-5)
