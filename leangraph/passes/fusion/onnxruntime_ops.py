"""ONNX Runtime's contrib ops -> leangraph ops: what its transformers optimizer writes, read back.

A model saved by ``onnxruntime.transformers.optimizer`` holds com.microsoft ops in place of the
spelled-out layers; rewritten into ours, the rest of the pipeline (padding removal above all) sees
the same model it sees from torch:

- ``SkipLayerNormalization(x, skip, gamma, beta?, bias?)`` -> ``leangraph::LayerNorm(x + skip (+ bias))``,
  its sum output (index 3) the Add; ``SkipSimplifiedLayerNormalization`` -> leangraph::RMSNorm. Not
  where its mean / inverse-std outputs are read.
- ``EmbedLayerNormalization(input_ids, segment_ids, word, position, segment?, gamma, beta, mask?,
  position_ids?)`` -> the three Gathers, their sum, leangraph::LayerNorm; its ``mask_index`` output
  (valid tokens per sequence, int32) ``Cast(ReduceSum(mask, [1]))``.
- ``Attention(x, weights, bias, mask_index?)`` (no past state, no attention bias, packed
  [hidden, 3 * hidden] QKV weights) -> ``x @ weights + bias`` split into q, k, v ->
  ``leangraph::MultiHeadAttention`` with the additive mask ORT builds: ``mask_filter_value``
  (-10000 by default) where a key is hidden. Its ``mask_index`` forms: [batch] (keys before that
  position are visible: right padding, as EmbedLayerNormalization's count gives) and [batch, seq]
  (1 = visible). ``unidirectional`` = 1 is causal.

Exact: each rewrite computes ONNX Runtime's documented formula (ONNX Runtime's ContribOperators.md),
checked against ONNX Runtime on the models of the tests. Attributes or inputs outside those forms
leave the node as it is (it runs on ONNX Runtime).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from leangraph.passes.base import RulePass
from leangraph.passes.fusion._checks import is_float32, rank

D = "leangraph"
MS = "com.microsoft"


def _typed(value: ir.Value, like: ir.Value, dtype: ir.DataType | None = None, shape=None) -> ir.Value:
    """``value`` (made by a rewrite) with the type later decompositions read."""
    value.dtype = dtype or like.dtype
    value.shape = like.shape if shape is None else shape
    return value


def _const(op, array) -> ir.Value:
    return op.Constant(value=ir.tensor(np.asarray(array)))


def _unused(*values) -> bool:
    return all(v is None or (not v.uses() and not v.is_graph_output()) for v in values)


class SkipNorm(pattern.RewriteRuleClassBase):
    """SkipLayerNormalization / SkipSimplifiedLayerNormalization, with or without the bias input,
    with one output or four (the sum at index 3)."""

    def __init__(self, name: str, op_type: str, with_beta: bool, with_bias: bool, outputs: int):
        super().__init__(name)
        self._op_type, self._with_beta, self._with_bias, self._outputs = op_type, with_beta, with_bias, outputs

    def pattern(self, op, x, skip, gamma, beta, bias):
        inputs = [x, skip, gamma] + ([beta] if self._with_beta else []) + ([bias] if self._with_bias else [])
        names = ["y", "mean", "inv_std", "summed"][: self._outputs]
        return getattr(op, self._op_type)(*inputs, _domain=MS, _allow_other_attributes=True, _outputs=names)

    def check(self, context, x, skip, gamma, beta=None, bias=None, y=None, mean=None, inv_std=None, summed=None):
        result = pattern.MatchResult()
        if not is_float32(x) or rank(x) is None:
            return result.fail("only float32 of known rank")
        if not _unused(mean, inv_std):
            return result.fail("its mean / inverse standard deviation outputs are read")
        self._epsilon = y.producer().attributes.get_float("epsilon", 1e-12)
        return result

    def rewrite(self, op, x, skip, gamma, beta=None, bias=None, y=None, mean=None, inv_std=None, summed=None):
        total = _typed(op.Add(x, skip), x)
        if self._with_bias:
            total = _typed(op.Add(total, bias), x)
        if self._op_type == "SkipLayerNormalization":
            inputs = [total, gamma] + ([beta] if self._with_beta else [])
            normed = op.LayerNorm(*inputs, _domain=D, axis=-1, epsilon=self._epsilon)
        else:
            normed = op.RMSNorm(total, gamma, _domain=D, axis=-1, epsilon=self._epsilon)
        normed = _typed(normed, x)
        # four outputs replace four: the unread statistics become the (unread) sum
        return (normed, total, total, total) if self._outputs == 4 else normed


class EmbedNorm(pattern.RewriteRuleClassBase):
    """EmbedLayerNormalization with segment embeddings and a mask, position ids implicit (0..seq-1)."""

    def __init__(self, name: str, outputs: int):
        super().__init__(name)
        self._outputs = outputs

    def pattern(self, op, ids, segments, word, position, segment, gamma, beta, mask):
        return op.EmbedLayerNormalization(ids, segments, word, position, segment, gamma, beta, mask, _domain=MS,
                                          _allow_other_attributes=True,
                                          _outputs=["y", "mask_index", "summed"][: self._outputs])

    def check(self, context, ids, segments, word, position, segment, gamma, beta, mask, y=None, mask_index=None,
              summed=None):
        result = pattern.MatchResult()
        if rank(ids) != 2 or rank(mask) != 2 or not is_float32(word):
            return result.fail("not [batch, seq] ids and mask with float32 tables")
        if y.producer().attributes.get_int("mask_index_type", 1) != 1:
            return result.fail("mask_index_type is not 1 (a count per sequence)")
        self._epsilon = y.producer().attributes.get_float("epsilon", 1e-12)
        return result

    def rewrite(self, op, ids, segments, word, position, segment, gamma, beta, mask, y=None, mask_index=None,
                summed=None):
        hidden_shape = y.shape
        positions = op.Range(_const(op, np.int64(0)), op.Squeeze(op.Shape(ids, start=1, end=2)),
                             _const(op, np.int64(1)))
        total = op.Add(op.Add(op.Gather(word, ids, axis=0), op.Gather(position, positions, axis=0)),
                       op.Gather(segment, segments, axis=0))
        total = _typed(total, y, word.dtype, hidden_shape)
        normed = _typed(op.LayerNorm(total, gamma, beta, _domain=D, axis=-1, epsilon=self._epsilon), y)
        counts = op.Cast(op.ReduceSum(op.Cast(mask, to=ir.DataType.INT64), _const(op, np.array([1], np.int64)),
                                      keepdims=0), to=ir.DataType.INT32)
        _typed(counts, mask, ir.DataType.INT32, ir.Shape([mask.shape[0]]) if mask.shape is not None else None)
        return (normed, counts, total) if self._outputs == 3 else (normed, counts)


class PackedQkvAttention(pattern.RewriteRuleClassBase):
    """Attention(x, weights, bias, mask_index): the packed-QKV self-attention of BERT-like models."""

    def pattern(self, op, x, weights, bias, mask_index):
        return op.Attention(x, weights, bias, mask_index, _domain=MS, _allow_other_attributes=True,
                            _outputs=["y"])

    def check(self, context, x, weights, bias, mask_index, y):
        result = pattern.MatchResult()
        attrs = y.producer().attributes
        unsupported = {"past_present_share_buffer", "do_rotary", "rotary_embedding_dim"} & set(attrs)
        if unsupported or attrs.get_ints("qkv_hidden_sizes", None):
            return result.fail(f"attributes outside the packed-QKV form: {sorted(unsupported) or 'qkv_hidden_sizes'}")
        if not is_float32(x) or rank(x) != 3 or weights.const_value is None or bias.const_value is None:
            return result.fail("not float32 [batch, seq, hidden] with constant weights and bias")
        width = weights.const_value.shape[1]
        if width % 3 or bias.const_value.shape != (width,):
            return result.fail("weights are not [hidden, 3 * hidden] with a [3 * hidden] bias")
        if mask_index.dtype != ir.DataType.INT32 or rank(mask_index) not in (1, 2):
            return result.fail("mask_index is not int32 [batch] or [batch, seq]")
        self._heads = attrs.get_int("num_heads", 0)
        self._scale = attrs.get_float("scale", 0.0)
        self._causal = attrs.get_int("unidirectional", 0)
        self._filter = attrs.get_float("mask_filter_value", -10000.0)
        self._width = width // 3
        if self._heads <= 0 or self._width % self._heads:
            return result.fail("num_heads does not divide the hidden size")
        return result

    def rewrite(self, op, x, weights, bias, mask_index, y):
        width, batch_seq = self._width, [x.shape[0], x.shape[1]] if x.shape is not None else [None, None]
        qkv = _typed(op.Add(op.MatMul(x, weights), bias), x, shape=ir.Shape([*batch_seq, 3 * width]))
        q, k, v = op.Split(qkv, _const(op, np.array([width] * 3, np.int64)), axis=-1, _outputs=3)
        for part in (q, k, v):
            _typed(part, x, shape=ir.Shape([*batch_seq, width]))
        seq = op.Shape(_counted_mask(mask_index) or x, start=1, end=2)
        if rank(mask_index) == 1:  # keys before each sequence's end are visible
            positions = op.Range(_const(op, np.int64(0)), op.Squeeze(seq), _const(op, np.int64(1)))
            visible = op.Less(op.Unsqueeze(positions, _const(op, np.array([0], np.int64))),
                              op.Unsqueeze(op.Cast(mask_index, to=ir.DataType.INT64), _const(op, np.array([1], np.int64))))
        else:
            visible = op.Cast(mask_index, to=ir.DataType.BOOL)
        additive = op.Where(visible, _const(op, np.float32(0.0)), _const(op, np.float32(self._filter)))
        mask = op.Unsqueeze(additive, _const(op, np.array([1, 2], np.int64)))  # [batch, 1, 1, seq]
        _typed(mask, x, ir.DataType.FLOAT, ir.Shape([batch_seq[0], 1, 1, batch_seq[1]]))
        out = op.MultiHeadAttention(q, k, v, mask, _domain=D, num_heads=self._heads, scale=self._scale,
                                    causal=self._causal, zero_nan_rows=0)
        return _typed(out, x, shape=ir.Shape([*batch_seq, width]))


def _counted_mask(mask_index: ir.Value) -> ir.Value | None:
    """The [batch, seq] mask a [batch] mask_index counts (EmbedLayerNormalization's, as rewritten
    here): its Shape gives the sequence length without reading the hidden state (which would make
    every layer's mask depend on all layers before it)."""
    value = mask_index
    for op_type in ("Cast", "ReduceSum", "Cast"):
        producer = value.producer()
        if producer is None or producer.op_type != op_type:
            return None
        value = producer.inputs[0]
    return value if rank(value) == 2 else None


def _rules():
    forms = [("SkipLayerNormalization", "skip_layer_norm", beta, bias) for beta, bias in
             ((True, True), (True, False), (False, False))]
    forms += [("SkipSimplifiedLayerNormalization", "skip_rms_norm", False, bias) for bias in (True, False)]
    for op_type, short, with_beta, with_bias in forms:
        for outputs in (1, 4):
            suffix = ("_beta" if with_beta else "") + ("_bias" if with_bias else "") + ("_sum" if outputs == 4 else "")
            yield SkipNorm.rule(f"ms_{short}{suffix}", op_type, with_beta, with_bias, outputs)
    yield EmbedNorm.rule("ms_embed_layer_norm", 2)
    yield EmbedNorm.rule("ms_embed_layer_norm_sum", 3)
    yield PackedQkvAttention.rule("ms_attention")


FROM_ONNXRUNTIME_OPS = RulePass("from_onnxruntime_ops", list(_rules()), __doc__).as_pass()
