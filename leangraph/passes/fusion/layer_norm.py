"""Layer norm -> leangraph::LayerNorm.

Rewrites ONNX ``LayerNormalization`` (what torch's exporter emits for nn.LayerNorm) on float32
inputs with float32 statistics (stash_type=1), and the decomposed form
``(x - mean(x)) / sqrt(var(x) + eps) * scale + bias`` over the last axis, float32, where the square
is ``Pow(x - mean, 2)`` with exactly 2, the means keep their dim (``keepdims`` given as 1 or left
out, as the TorchScript exporter does below opset 18) and ``eps`` is a one-element constant, captured as the op's
epsilon whatever its size (BERT's 1e-12 included: leaving it out turns a constant row into NaN).
``scale`` and ``bias`` are constants of shape [D] (D the static last dim) or scalars, broadcast to
[D]; either may be missing (a scale of ones is removed by the algebraic pass as a multiplication by
1), and is then 1 or 0. ``eps`` adds no dims. Exact up to round-off.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from leangraph.passes.base import RulePass
from leangraph.passes.fusion._checks import (as_row, constant, fits_into, is_exactly, is_float32, keeps_dims,
                                             last_dim, rank, row_vector, scalar)

D = "leangraph"


class FromOnnxLayerNorm(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, scale, bias):
        return op.LayerNormalization(x, scale, bias, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, x, scale, bias, y):
        result = pattern.MatchResult()
        node = y.producer()
        if len(node.outputs) > 1 and any(o.uses() for o in node.outputs[1:]):
            return result.fail("mean/inv-std outputs are used")
        if not is_float32(x) or node.attributes.get_int("stash_type", 1) != 1:
            return result.fail("only float32 layer norm with float32 statistics")
        self._attrs = {"axis": node.attributes.get_int("axis", -1), "epsilon": node.attributes.get_float("epsilon", 1e-5)}
        return result

    def rewrite(self, op, x, scale, bias, y):
        return op.LayerNorm(x, scale, bias, _domain=D, **self._attrs)


class DecomposedLayerNorm(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, scaled: bool, biased: bool):
        super().__init__(name)
        self._scaled, self._biased = scaled, biased

    def pattern(self, op, x, axes, axes2, two, eps, scale, bias):
        centered = op.Sub(x, op.ReduceMean(x, axes, _allow_other_attributes=True, _outputs=["mean"]))
        var = op.ReduceMean(op.Pow(centered, two), axes2, _allow_other_attributes=True, _outputs=["var"])
        y = op.Div(centered, op.Sqrt(op.Add(var, eps)))
        if self._scaled:
            y = op.Mul(y, scale)
        return op.Add(y, bias) if self._biased else y

    def check(self, context, x, axes, axes2, two, eps, mean, var, scale=None, bias=None):
        result = pattern.MatchResult()
        if not (keeps_dims(mean) and keeps_dims(var)):
            return result.fail("a ReduceMean drops the reduced dim (keepdims=0)")
        if not is_float32(x) or not is_exactly(two, 2.0):
            return result.fail("needs float32 x and a square (Pow with exactly 2)")
        for a in (axes, axes2):
            if (array := constant(a)) is None or array.reshape(-1).tolist() != [-1]:
                return result.fail("normalizes over other axes than the last")
        if scalar(eps) is None or not fits_into(eps, x):
            return result.fail("epsilon must be a one-element constant that adds no dims")
        width = last_dim(x)
        if width is None:
            return result.fail("x's last dim is not static")
        self._scale = row_vector(scale, width, rank(x)) if scale is not None else np.ones(width, np.float32)
        self._bias = row_vector(bias, width, rank(x)) if bias is not None else np.zeros(width, np.float32)
        if self._scale is None or self._bias is None:
            return result.fail("scale and bias must be constants of shape [D] or scalars (D: x's last dim)")
        self._eps = scalar(eps)
        return result

    def rewrite(self, op, x, axes, axes2, two, eps, mean, var, scale=None, bias=None):
        scale = op.Constant(value=ir.tensor(self._scale)) if scale is None else as_row(op, scale, self._scale)
        bias = op.Constant(value=ir.tensor(self._bias)) if bias is None else as_row(op, bias, self._bias)
        return op.LayerNorm(x, scale, bias, _domain=D, axis=-1, epsilon=self._eps)


FUSE_LAYER_NORM = RulePass(
    "fuse_layer_norm",
    [
        FromOnnxLayerNorm.rule(name="onnx_layer_norm"),
        # the affine forms first: the bare one also matches inside them
        DecomposedLayerNorm.rule("decomposed_layer_norm", True, True),
        DecomposedLayerNorm.rule("decomposed_layer_norm_no_bias", True, False),
        DecomposedLayerNorm.rule("decomposed_layer_norm_no_scale", False, True),
        DecomposedLayerNorm.rule("decomposed_layer_norm_no_affine", False, False),
    ],
    __doc__,
).as_pass()
