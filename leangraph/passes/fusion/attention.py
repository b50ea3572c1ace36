"""Scaled dot-product attention -> leangraph::Attention.

Matches ``MatMul(softmax(scores), v)`` where ``scores`` is ``q @ k^T`` scaled by constants, in the
forms torch's exporter writes:

- scale split between q and k (``(q * s) @ (k^T * s)``, how scaled_dot_product_attention exports),
  or applied after the product (``(q @ k^T) * s`` or ``/ s``, eager attention in older models);
- with an additive mask (``+ mask``: BERT padding, GPT-2/Llama causal+padding, as the model builds
  it) or without;
- with the exporter's NaN guard ``Where(IsNaN(p), 0, p)`` after the softmax (torch's
  scaled_dot_product_attention: rows whose softmax is NaN give 0, the op's ``zero_nan_rows`` = 1)
  or without it (HF's eager attention, whisper: such rows stay NaN, ``zero_nan_rows`` = 0). Either
  way the op computes what the graph did, whatever the mask's values (finite as ``finfo.min`` or
  -1e4, or -inf);
- the mask as an addend (T5: two, a position bias and the mask, which become one mask input,
  their sum: exact up to round-off), or as ``Where(keep, scores, fill)``: with fill = -inf the boolean ``keep``
  is the op's mask (exact); a finite fill (``finfo.min``) becomes the additive mask
  ``Where(keep, 0, fill)``, exact as long as |scores| < 2^103 (``fill + s`` rounds to ``fill``).

Then, where the heads are split by ``Transpose(Reshape(x, [0, 0, H, D]), [0, 2, 1, 3])`` for q, k
and v and merged back by ``Reshape(Transpose(out, [0, 2, 1, 3]), [0, 0, -1])``, the split and merge
fold into ``leangraph::MultiHeadAttention(x_q, x_k, x_v, mask, num_heads=H)`` (rule
``attention_heads``).

ONNX's own Attention (opset 23 on) becomes leangraph::Attention (4-D inputs; grouped KV heads are
repeated, as ONNX does, with Unsqueeze/Expand/Reshape) or leangraph::MultiHeadAttention (3-D inputs
with ``q_num_heads`` = ``kv_num_heads``) where it has no KV cache inputs, its other outputs are
unused, no softcap or sliding window, float32 with the softmax in float32, and a mask as long as
the keys (ONNX pads a shorter one with -inf); fully masked rows give 0 in ONNX, ``zero_nan_rows`` = 1
(rule ``onnx_attention``). Exact up to round-off (ONNX scales q and k by sqrt(scale) each).

``k^T`` must be a Transpose (the algebraic pass turns the exporter's Reshape/Transpose/Reshape
chain into one, often merged with the head-split Transpose): ``k`` is then the same input under the
permutation with its last two entries swapped, which the rewrite emits unless it is the identity.
The mask stays a graph value. Conditions that keep it exact: q, k and v have one rank (the op
broadcasts batch dims only), the softmax runs over the last axis of the scores (whose rank a mask
could raise above the key's), the mask does not broadcast the scores to a bigger shape, the scale
and the NaN guard's 0 are scalars adding no dims. Exact up to round-off.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx_ir as ir

from onnxscript.rewriter import pattern

from leangraph.passes.base import RulePass
from leangraph.passes.fusion._checks import fits_into, is_float32, rank, scalar

D = "leangraph"


class AttentionFusion(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, scale_style: str, mask_style: str | None, guarded: bool):
        super().__init__(name)
        self._scale_style, self._mask_style, self._guarded = scale_style, mask_style, guarded

    @property
    def _masked(self) -> bool:
        return self._mask_style is not None

    def pattern(self, op, q, k_source, v, mask, s1, s2, zero, fill, bias):
        kt = op.Transpose(k_source, _allow_other_attributes=True, _outputs=["kt"])
        if self._scale_style == "split":
            scores = op.MatMul(op.Mul(q, s1), op.Mul(kt, s2), _outputs=["qk"])
        elif self._scale_style == "mul":
            scores = op.Mul(op.MatMul(q, kt, _outputs=["qk"]), s1)
        elif self._scale_style == "div":
            scores = op.Div(op.MatMul(q, kt, _outputs=["qk"]), s1)
        else:
            scores = op.MatMul(q, kt, _outputs=["qk"])
        if self._mask_style == "add":
            scores = op.Add(scores, mask)
        elif self._mask_style == "add_bias":  # T5: a position bias, then the mask
            scores = op.Add(op.Add(scores, bias), mask)
        elif self._mask_style == "where":
            scores = op.Where(mask, scores, fill)
        probs = op.Softmax(scores, _allow_other_attributes=True, _outputs=["probs"])
        return op.MatMul(op.Where(op.IsNaN(probs), zero, probs) if self._guarded else probs, v)

    def check(self, context, q, k_source, v, mask=None, s1=None, s2=None, zero=None, fill=None, bias=None, kt=None,
              probs=None, qk=None):
        result = pattern.MatchResult()
        k_rank = rank(k_source)
        perm = list(kt.producer().attributes.get_ints("perm", []))
        if k_rank is None or k_rank < 2 or len(perm) != k_rank:
            return result.fail("rank of the key is unknown")
        if rank(q) != k_rank or rank(v) != k_rank:
            return result.fail("query, key and value have different ranks (the op broadcasts batch dims only)")
        self._key_perm = [*perm[:-2], perm[-1], perm[-2]]
        # The softmax must run over the scores' last axis (the keys): the scores' rank, which a
        # mask can raise above the key's, decides which axis that is.
        scores_rank = rank(probs)
        axis = probs.producer().attributes.get_int("axis", -1)
        if scores_rank is None or axis not in (-1, scores_rank - 1):
            return result.fail("softmax is not over the last axis of the scores")
        if scores_rank != k_rank or _grows(qk, probs):
            return result.fail("the mask broadcasts the scores to a bigger shape")
        if self._guarded and (scalar(zero) != 0.0 or not fits_into(zero, probs)):
            return result.fail("NaN guard does not substitute a scalar 0")
        if self._mask_style == "where":
            if mask.dtype != ir.DataType.BOOL or scalar(fill) is None or not fits_into(fill, probs):
                return result.fail("Where mask: not a boolean condition with a scalar constant fill")
            if not scalar(fill) < 0 or (math.isfinite(scalar(fill)) and scalar(fill) > -(2.0**120)):
                return result.fail("Where mask: the fill is not -inf or a huge negative number (finfo.min)")
            self._fill = scalar(fill)
        scales = [s for s in (s1, s2) if s is not None]
        if not all(fits_into(s, probs) for s in scales):
            return result.fail("a scale constant adds dims")
        if self._scale_style == "split":
            a, b = scalar(s1), scalar(s2)
            scale = None if a is None or b is None else a * b
        elif self._scale_style == "mul":
            scale = scalar(s1)
        elif self._scale_style == "div":
            scale = None if not scalar(s1) else 1.0 / scalar(s1)
        else:
            scale = 1.0
        if scale is None or scale <= 0:
            return result.fail("scale is not a positive constant")
        self._scale = scale
        return result

    def rewrite(self, op, q, k_source, v, mask=None, s1=None, s2=None, zero=None, fill=None, bias=None, kt=None,
                probs=None, qk=None):
        identity = self._key_perm == list(range(len(self._key_perm)))
        k = k_source if identity else op.Transpose(k_source, perm=self._key_perm)
        if not identity:
            k.dtype = k_source.dtype
            k.shape = ir.Shape([k_source.shape[i] for i in self._key_perm])
        if self._mask_style == "where" and math.isfinite(self._fill):
            dtype = probs.dtype.numpy()
            additive = op.Where(mask, op.Constant(value=ir.tensor(np.zeros((), dtype))),
                                op.Constant(value=ir.tensor(np.asarray(self._fill, dtype))))
            additive.dtype, additive.shape = probs.dtype, mask.shape
            mask = additive
        if self._mask_style == "add_bias":
            combined = op.Add(bias, mask)
            combined.dtype, combined.shape = probs.dtype, None
            mask = combined
        inputs = [q, k, v] + ([mask] if self._masked else [])
        return op.Attention(*inputs, _domain=D, scale=self._scale, causal=0, zero_nan_rows=int(self._guarded))


def _grows(before: ir.Value, after: ir.Value) -> bool:
    """Whether ``after`` has a static dim that differs from ``before``'s (a broadcast grew it)."""
    if before.shape is None or after.shape is None:
        return False
    return any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(before.shape, after.shape))


def _split_heads(op, x, shape, name):
    return op.Transpose(op.Reshape(x, shape, _allow_other_attributes=True, _outputs=[name]), perm=[0, 2, 1, 3])


def _copies_zeros(*reshaped) -> bool:
    """Whether the Reshapes producing these values read 0 as "copy the dim" (allowzero = 0)."""
    return all(v.producer().attributes.get_int("allowzero", 0) == 0 for v in reshaped)


def _keeps_leading_dims(target: list[int], x) -> bool:
    """Whether a reshape target keeps x's first two dims (0 = copy, or the same static size)."""
    return all(t == 0 or (isinstance(x.shape[i], int) and t == x.shape[i]) for i, t in enumerate(target[:2]))


def _heads(shape_value, x) -> int | None:
    """H when ``shape_value`` is a constant [0, 0, H, D] split of the rank-3 value ``x``."""
    target = shape_value.const_value.numpy().tolist() if shape_value.const_value is not None else None
    if target is None or len(target) != 4 or rank(x) != 3 or not _keeps_leading_dims(target, x):
        return None
    heads, size = target[2], target[3]
    width = x.shape[2] if isinstance(x.shape[2], int) else None
    if heads == -1 and size > 0 and width is not None and width % size == 0:
        return width // size
    if heads > 0 and (size == -1 or width is None or heads * size == width):
        return heads
    return None


class HeadsFusion(pattern.RewriteRuleClassBase):
    """Split heads -> leangraph::Attention -> merge heads  =>  leangraph::MultiHeadAttention."""

    def __init__(self, name: str, masked: bool):
        super().__init__(name)
        self._masked = masked

    def pattern(self, op, xq, xk, xv, sq, sk, sv, mask, merge_shape):
        inputs = [_split_heads(op, xq, sq, "rq"), _split_heads(op, xk, sk, "rk"), _split_heads(op, xv, sv, "rv")]
        if self._masked:
            inputs.append(mask)
        out = op.Attention(*inputs, _domain=D, _allow_other_attributes=True, _outputs=["attended"])
        return op.Reshape(op.Transpose(out, perm=[0, 2, 1, 3]), merge_shape, _allow_other_attributes=True,
                          _outputs=["merged"])

    def check(self, context, xq, xk, xv, sq, sk, sv, mask=None, merge_shape=None, attended=None, rq=None, rk=None,
              rv=None, merged=None):
        result = pattern.MatchResult()
        if not _copies_zeros(rq, rk, rv, merged):
            return result.fail("a head reshape has allowzero=1")
        heads = {_heads(sq, xq), _heads(sk, xk), _heads(sv, xv)}
        if len(heads) != 1 or None in heads:
            return result.fail("q, k and v are not split into the same number of heads")
        merge = merge_shape.const_value.numpy().tolist() if merge_shape.const_value is not None else None
        if merge is None or len(merge) != 3 or not _keeps_leading_dims(merge, xq) or merge[2] not in (-1, xv.shape[2]):
            return result.fail("heads are not merged back into the last dim")
        attrs = attended.producer().attributes
        self._attrs = {"num_heads": heads.pop(), "scale": attrs.get_float("scale", 0.0),
                       "causal": attrs.get_int("causal", 0), "zero_nan_rows": attrs.get_int("zero_nan_rows", 1)}
        return result

    def rewrite(self, op, xq, xk, xv, sq, sk, sv, mask=None, merge_shape=None, attended=None, **_):
        inputs = [xq, xk, xv] + ([mask] if self._masked else [])
        return op.MultiHeadAttention(*inputs, _domain=D, **self._attrs)


class FromOnnxAttention(pattern.RewriteRuleClassBase):
    """ONNX's Attention (opset 23 on) without a KV cache -> leangraph::Attention or MultiHeadAttention."""

    def pattern(self, op, q, k, v):
        return op.Attention(q, k, v, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, q, k, v, y):
        result = pattern.MatchResult()
        node = y.producer()
        extra = list(node.inputs[3:])
        self._mask = extra[0] if extra else None
        if any(x is not None for x in extra[1:]):
            return result.fail("it has KV cache inputs (past_key/past_value) or nonpad_kv_seqlen")
        if any(out is not None and out.uses() for out in node.outputs[1:]):
            return result.fail("its present_key/present_value or qk_matmul output is used")
        attrs = node.attributes
        if attrs.get_float("softcap", 0.0) != 0.0:
            return result.fail("softcap is set")
        if attrs.get_int("left_window_size", -1) != -1 or attrs.get_int("right_window_size", -1) != -1:
            return result.fail("it has a sliding window")
        if not all(is_float32(x) for x in (q, k, v)) or attrs.get_int("softmax_precision", 1) != ir.DataType.FLOAT:
            return result.fail("only float32 attention with its softmax in float32")
        mask = self._mask
        if mask is not None:
            keys = k.shape[-2] if rank(k) == 4 else k.shape[1] if rank(k) == 3 else None
            if mask.dtype not in (ir.DataType.BOOL, ir.DataType.FLOAT):
                return result.fail("its mask is neither boolean nor float")
            if mask.shape is None or keys is None or mask.shape[-1] != keys:
                return result.fail("its mask is not known to be as long as the keys (ONNX pads a shorter one "
                                   "with -inf)")
        self._attrs = {"scale": attrs.get_float("scale", 0.0), "causal": attrs.get_int("is_causal", 0),
                       "zero_nan_rows": 1}  # ONNX: a fully masked row gives 0
        self._repeat = 0
        ranks = {rank(q), rank(k), rank(v)}
        if ranks == {4}:
            q_heads, kv_heads = q.shape[1], k.shape[1]
            if kv_heads != v.shape[1]:
                return result.fail("k and v have different numbers of heads")
            if q_heads != kv_heads:
                if not (isinstance(q_heads, int) and isinstance(kv_heads, int) and q_heads % kv_heads == 0
                        and isinstance(k.shape[3], int) and isinstance(v.shape[3], int)):
                    return result.fail("q's heads are not a static multiple of k's and v's")
                self._repeat, self._q_heads = q_heads // kv_heads, q_heads
            self._op = "Attention"
        elif ranks == {3}:
            heads = attrs.get_int("q_num_heads", 0)
            if not heads or heads != attrs.get_int("kv_num_heads", 0):
                return result.fail("3-D inputs with grouped KV heads (q_num_heads != kv_num_heads)")
            self._attrs["num_heads"] = heads
            self._op = "MultiHeadAttention"
        else:
            return result.fail("q, k and v are not all 4-D or all 3-D")
        return result

    def _repeat_heads(self, op, x):
        """ONNX's (and HF's repeat_kv) order: each KV head repeated in place, [b, h, s, d] -> [b, h*r, s, d]."""
        copies = op.Constant(value=ir.tensor(np.array([1, 1, self._repeat, 1, 1], dtype=np.int64)))
        target = op.Constant(value=ir.tensor(np.array([0, self._q_heads, -1, x.shape[3]], dtype=np.int64)))
        axis = op.Constant(value=ir.tensor(np.array([2], dtype=np.int64)))
        return op.Reshape(op.Expand(op.Unsqueeze(x, axis), copies), target)

    def rewrite(self, op, q, k, v, y):
        if self._repeat:
            k, v = self._repeat_heads(op, k), self._repeat_heads(op, v)
        inputs = [q, k, v] + ([self._mask] if self._mask is not None else [])
        return getattr(op, self._op)(*inputs, _domain=D, **self._attrs)


def _rules():
    for style, mask, guarded in itertools.product(("split", "mul", "div", "none"), ("add", "where", None),
                                                  (True, False)):
        name = (f"sdpa_{style}_scale" + (f"_{mask}_mask" if mask else "") + ("_nan_guard" if guarded else ""))
        rule = AttentionFusion.rule(name, style, mask, guarded)
        yield from (rule.commute() if mask == "add" else [rule])
    for guarded in (True, False):  # T5: no scale, a position bias and the mask
        rule = AttentionFusion.rule("sdpa_none_scale_add_bias_mask" + ("_nan_guard" if guarded else ""), "none",
                                    "add_bias", guarded)
        yield from rule.commute()


FUSE_ATTENTION = RulePass(
    "fuse_attention",
    [*_rules(), FromOnnxAttention.rule(name="onnx_attention"), HeadsFusion.rule("attention_heads_masked", True),
     HeadsFusion.rule("attention_heads", False)],
    __doc__,
).as_pass()
