"""GELU -> leangraph::Gelu.

Rewrites ONNX ``Gelu`` (opset 20), the erf form ``0.5 * x * (1 + erf(x / sqrt(2)))`` and the tanh
form ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` (GPT-2's gelu_new) whose constants
match to 1e-3 relative. Exact up to round-off.
"""

from __future__ import annotations

import math

from onnxscript.rewriter import pattern

from leangraph.passes.base import RulePass
from leangraph.passes.fusion._checks import is_float32, is_scalar

D = "leangraph"


class FromOnnxGelu(pattern.RewriteRuleClassBase):
    def pattern(self, op, x):
        return op.Gelu(x, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, x, y):
        self._approximate = y.producer().attributes.get_string("approximate", "none")
        return pattern.MatchResult()

    def rewrite(self, op, x, y):
        return op.Gelu(x, _domain=D, approximate=self._approximate)


class ErfGelu(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, root2, one, half):
        return op.Mul(op.Mul(x, half), op.Add(op.Erf(op.Div(x, root2)), one))

    def check(self, context, x, root2, one, half):
        ok = is_float32(x) and is_scalar(root2, math.sqrt(2)) and is_scalar(one, 1.0) and is_scalar(half, 0.5)
        return pattern.MatchResult() if ok else pattern.MatchResult().fail("constants are not GELU's")

    def rewrite(self, op, x, root2, one, half):
        return op.Gelu(x, _domain=D, approximate="none")


class TanhGelu(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, half, three, coeff, root, one):
        inner = op.Mul(op.Add(x, op.Mul(op.Pow(x, three), coeff)), root)
        return op.Mul(op.Mul(x, half), op.Add(op.Tanh(inner), one))

    def check(self, context, x, half, three, coeff, root, one):
        ok = (is_float32(x) and is_scalar(half, 0.5) and is_scalar(three, 3.0) and is_scalar(coeff, 0.044715)
              and is_scalar(root, math.sqrt(2 / math.pi)) and is_scalar(one, 1.0))
        return pattern.MatchResult() if ok else pattern.MatchResult().fail("constants are not tanh-GELU's")

    def rewrite(self, op, x, half, three, coeff, root, one):
        return op.Gelu(x, _domain=D, approximate="tanh")


FUSE_GELU = RulePass(
    "fuse_gelu",
    [
        FromOnnxGelu.rule(name="onnx_gelu"),
        *ErfGelu.rule(name="erf_gelu").commute(),
        *TanhGelu.rule(name="tanh_gelu").commute(),
    ],
    __doc__,
).as_pass()
