"""RMS norm -> leangraph::RMSNorm.

Rewrites ``scale * (x * 1/sqrt(mean(x^2) + eps))`` over the last axis, as Llama, Qwen and T5
compute it (with Reciprocal(Sqrt) or Div), in either multiplication order. Exact up to round-off.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from leangraph.passes.base import RulePass
from leangraph.passes.fusion._checks import is_float32, is_scalar, scalar

D = "leangraph"


class RMSNormFusion(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, scale_first: bool, reciprocal: bool):
        super().__init__(name)
        self._scale_first, self._reciprocal = scale_first, reciprocal

    def pattern(self, op, x, two, axes, eps, scale):
        rms = op.Sqrt(op.Add(op.ReduceMean(op.Pow(x, two), axes, keepdims=1, _allow_other_attributes=True), eps))
        normalized = op.Mul(x, op.Reciprocal(rms)) if self._reciprocal else op.Div(x, rms)
        return op.Mul(scale, normalized) if self._scale_first else op.Mul(normalized, scale)

    def check(self, context, x, two, axes, eps, scale):
        result = pattern.MatchResult()
        if not is_float32(x) or not is_scalar(two, 2.0):
            return result.fail("needs float32 x and a square")
        if axes.const_value is None or axes.const_value.numpy().reshape(-1).tolist() != [-1]:
            return result.fail("normalizes over other axes than the last")
        if scalar(eps) is None or scale.const_value is None:
            return result.fail("epsilon and scale must be constants")
        self._eps = scalar(eps)
        return result

    def rewrite(self, op, x, two, axes, eps, scale):
        return op.RMSNorm(x, scale, _domain=D, axis=-1, epsilon=self._eps)


FUSE_RMS_NORM = RulePass(
    "fuse_rms_norm",
    [
        RMSNormFusion.rule(f"rms_norm_{'scale_first' if s else 'scale_last'}_{'reciprocal' if r else 'div'}", s, r)
        for s in (True, False)
        for r in (True, False)
    ],
    __doc__,
).as_pass()
