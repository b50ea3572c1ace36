"""GELU -> leangraph::Gelu.

Rewrites ONNX ``Gelu`` (opset 20), the erf form ``0.5 * x * (1 + erf(x / sqrt(2)))`` and the tanh
form ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` (GPT-2's gelu_new), float32.
The constants must be GELU's: 0.5, 1 and 3 exactly, sqrt(2), 0.044715 and sqrt(2/pi) within a few
float32 ulps of their float32 values (see _checks.py); a near miss is another function and stays as
written. Every constant is a scalar that does not broadcast x to more dims. Exact up to round-off.
"""

from __future__ import annotations

import math

from onnxscript.rewriter import pattern

from leangraph.passes.base import RulePass
from leangraph.passes.fusion._checks import fits_into, is_exactly, is_float32, is_near

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
        result = pattern.MatchResult()
        if not is_float32(x):
            return result.fail("only float32")
        if not (is_near(root2, math.sqrt(2)) and is_exactly(one, 1.0) and is_exactly(half, 0.5)):
            return result.fail("constants are not GELU's (sqrt(2), 1, 0.5)")
        if not all(fits_into(c, x) for c in (root2, one, half)):
            return result.fail("a constant broadcasts x to more dims")
        return result

    def rewrite(self, op, x, root2, one, half):
        return op.Gelu(x, _domain=D, approximate="none")


class TanhGelu(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, half, three, coeff, root, one):
        inner = op.Mul(op.Add(x, op.Mul(op.Pow(x, three), coeff)), root)
        return op.Mul(op.Mul(x, half), op.Add(op.Tanh(inner), one))

    def check(self, context, x, half, three, coeff, root, one):
        result = pattern.MatchResult()
        if not is_float32(x):
            return result.fail("only float32")
        if not (is_exactly(half, 0.5) and is_exactly(three, 3.0) and is_near(coeff, 0.044715)
                and is_near(root, math.sqrt(2 / math.pi)) and is_exactly(one, 1.0)):
            return result.fail("constants are not tanh-GELU's (0.5, 3, 0.044715, sqrt(2/pi), 1)")
        if not all(fits_into(c, x) for c in (half, three, coeff, root, one)):
            return result.fail("a constant broadcasts x to more dims")
        return result

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
