"""RMS norm -> leangraph::RMSNorm.

Rewrites ``scale * (x * 1/sqrt(mean(x^2) + eps))`` over the last axis, as Llama, Qwen and T5
compute it (with Reciprocal(Sqrt), Div, or ``Div(1, Sqrt)``: TorchScript's rsqrt), in either
multiplication order, or without the scale
(a scale of ones, which the algebraic pass removes as a multiplication by 1), float32: the square is
``Pow(x, 2)`` with exactly 2, the mean keeping its dim (``keepdims`` 1 or left out), ``eps`` a one-element constant captured as the op's epsilon (adding
no dims), ``scale`` a constant of shape [D] (D the static last dim) or a scalar, broadcast to [D].
ONNX's RMSNormalization (opset 23) over the last axis becomes the op too. Exact up to round-off.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from leangraph.passes.base import RulePass
from leangraph.passes.fusion._checks import (as_row, constant, fits_into, is_exactly, is_float32, keeps_dims,
                                             last_dim, rank, row_vector, scalar)

D = "leangraph"


class RMSNormFusion(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, scale: str, inverse: str):
        super().__init__(name)
        # scale: "first", "last" or "none"; inverse: "reciprocal", "div" (x / rms) or "one_div" (x * (1 / rms))
        self._scale_at, self._inverse = scale, inverse

    def pattern(self, op, x, two, axes, eps, scale, one):
        rms = op.Sqrt(op.Add(op.ReduceMean(op.Pow(x, two), axes, _allow_other_attributes=True, _outputs=["mean"]), eps))
        normalized = {"reciprocal": lambda: op.Mul(x, op.Reciprocal(rms)), "div": lambda: op.Div(x, rms),
                      "one_div": lambda: op.Mul(x, op.Div(one, rms))}[self._inverse]()
        if self._scale_at == "none":
            return normalized
        return op.Mul(scale, normalized) if self._scale_at == "first" else op.Mul(normalized, scale)

    def check(self, context, x, two, axes, eps, mean, scale=None, one=None):
        result = pattern.MatchResult()
        if not keeps_dims(mean):
            return result.fail("the ReduceMean drops the reduced dim (keepdims=0)")
        if not is_float32(x) or not is_exactly(two, 2.0):
            return result.fail("needs float32 x and a square (Pow with exactly 2)")
        if self._inverse == "one_div" and not (is_exactly(one, 1.0) and fits_into(one, x)):
            return result.fail("1 / rms with another numerator than a scalar 1")
        if (array := constant(axes)) is None or array.reshape(-1).tolist() != [-1]:
            return result.fail("normalizes over other axes than the last")
        if scalar(eps) is None or not fits_into(eps, x):
            return result.fail("epsilon must be a one-element constant that adds no dims")
        if scale is None:  # the scale is 1
            self._scale = None if last_dim(x) is None else np.ones(last_dim(x), np.float32)
        else:
            self._scale = row_vector(scale, last_dim(x), rank(x))
        if self._scale is None:
            return result.fail("scale must be a constant of shape [D] or a scalar (D: x's static last dim)")
        self._eps = scalar(eps)
        return result

    def rewrite(self, op, x, two, axes, eps, mean, scale=None, one=None):
        scale = op.Constant(value=ir.tensor(self._scale)) if scale is None else as_row(op, scale, self._scale)
        return op.RMSNorm(x, scale, _domain=D, axis=-1, epsilon=self._eps)


class FromOnnxRMSNormalization(pattern.RewriteRuleClassBase):
    """ONNX's own RMSNormalization (opset 23) over the last axis, float32 computed in float32."""

    def pattern(self, op, x, scale):
        return op.RMSNormalization(x, scale, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, x, scale, y):
        result = pattern.MatchResult()
        attrs = y.producer().attributes
        axis, width = attrs.get_int("axis", -1), last_dim(x)
        if not is_float32(x) or rank(x) is None or axis not in (-1, rank(x) - 1):
            return result.fail("not float32 normalized over its last axis")
        if attrs.get_int("stash_type", 1) != ir.DataType.FLOAT:
            return result.fail("stash_type is not float32")
        self._scale = row_vector(scale, width, rank(x))
        if self._scale is None:
            return result.fail("scale must be a constant of shape [D] or a scalar (D: x's static last dim)")
        self._eps = attrs.get_float("epsilon", 1e-5)
        return result

    def rewrite(self, op, x, scale, y):
        return op.RMSNorm(x, as_row(op, scale, self._scale), _domain=D, axis=-1, epsilon=self._eps)


_SCALE_NAMES = {"first": "scale_first", "last": "scale_last", "none": "no_scale"}

FUSE_RMS_NORM = RulePass(
    "fuse_rms_norm",
    [
        RMSNormFusion.rule(f"rms_norm_{_SCALE_NAMES[s]}_{inverse}", s, inverse)
        for s in ("first", "last", "none")
        for inverse in ("reciprocal", "div", "one_div")
    ] + [FromOnnxRMSNormalization.rule("onnx_rms_normalization")],
    __doc__,
).as_pass()
