"""GELU -> leangraph::Gelu.

Rewrites ONNX ``Gelu`` (opset 20), ONNX Runtime's ``com.microsoft`` Gelu / FastGelu / BiasGelu
(the transformers optimizer's output), the erf form ``0.5 * x * (1 + erf(x / sqrt(2)))`` and the
tanh form ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` (GPT-2's gelu_new), float32,
with the halving anywhere in the product (``(0.5 * x) * g``: torch.export; ``(x * g) * 0.5``: the
TorchScript exporter; ``x * (g * 0.5)``) and ``x / sqrt(2)`` also as ``x * (1 / sqrt(2))``.
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


def _halved_product(op, x, half, gate):
    """``0.5 * x * gate`` in the association named by the rule (see the module doc)."""
    return {"half_x": lambda: op.Mul(op.Mul(x, half), gate), "x_gate": lambda: op.Mul(op.Mul(x, gate), half),
            "half_gate": lambda: op.Mul(x, op.Mul(gate, half))}


class ErfGelu(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, product: str, scaled_by: str):
        super().__init__(name)
        self._product, self._scaled_by = product, scaled_by

    def pattern(self, op, x, root2, one, half):
        scaled = op.Div(x, root2) if self._scaled_by == "div" else op.Mul(x, root2)
        return _halved_product(op, x, half, op.Add(op.Erf(scaled), one))[self._product]()

    def check(self, context, x, root2, one, half):
        result = pattern.MatchResult()
        if not is_float32(x):
            return result.fail("only float32")
        root = math.sqrt(2) if self._scaled_by == "div" else math.sqrt(0.5)
        if not (is_near(root2, root) and is_exactly(one, 1.0) and is_exactly(half, 0.5)):
            return result.fail("constants are not GELU's (sqrt(2) or 1/sqrt(2), 1, 0.5)")
        if not all(fits_into(c, x) for c in (root2, one, half)):
            return result.fail("a constant broadcasts x to more dims")
        return result

    def rewrite(self, op, x, root2, one, half):
        return op.Gelu(x, _domain=D, approximate="none")


class TanhGelu(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, product: str):
        super().__init__(name)
        self._product = product

    def pattern(self, op, x, half, three, coeff, root, one):
        inner = op.Mul(op.Add(x, op.Mul(op.Pow(x, three), coeff)), root)
        return _halved_product(op, x, half, op.Add(op.Tanh(inner), one))[self._product]()

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


_PRODUCTS = ("half_x", "x_gate", "half_gate")

MS = "com.microsoft"


class MicrosoftGelu(pattern.RewriteRuleClassBase):
    """ONNX Runtime's contrib GELUs: Gelu (erf), FastGelu (tanh; with an optional bias input) and
    BiasGelu (erf of x + bias)."""

    def __init__(self, name: str, op_type: str, biased: bool):
        super().__init__(name)
        self._op_type, self._biased = op_type, biased

    def pattern(self, op, x, bias):
        inputs = [x, bias] if self._biased else [x]
        return getattr(op, self._op_type)(*inputs, _domain=MS)

    def check(self, context, x, bias=None):
        result = pattern.MatchResult()
        if not is_float32(x):
            return result.fail("only float32")
        return result

    def rewrite(self, op, x, bias=None):
        source = x
        if self._biased:
            source = op.Add(x, bias)
            source.dtype, source.shape = x.dtype, x.shape  # the decomposition reads the dtype
        return op.Gelu(source, _domain=D, approximate="tanh" if self._op_type == "FastGelu" else "none")


def _microsoft_rules():
    yield MicrosoftGelu.rule("ms_gelu", "Gelu", False)
    yield MicrosoftGelu.rule("ms_fast_gelu", "FastGelu", False)
    yield MicrosoftGelu.rule("ms_fast_gelu_bias", "FastGelu", True)
    yield MicrosoftGelu.rule("ms_bias_gelu", "BiasGelu", True)


FUSE_GELU = RulePass(
    "fuse_gelu",
    [
        FromOnnxGelu.rule(name="onnx_gelu"),
        *(rule for product in _PRODUCTS for scaled_by in ("div", "mul")
          for rule in ErfGelu.rule(f"erf_gelu_{product}" + ("" if scaled_by == "div" else "_mul"), product,
                                   scaled_by).commute()),
        # (0.5 * x) * g (HF's NewGELU, torch.export) and (x * g) * 0.5 (TorchScript): 64 commuted forms each
        *(rule for product in _PRODUCTS[:2] for rule in TanhGelu.rule(f"tanh_gelu_{product}", product).commute()),
        *_microsoft_rules(),
    ],
    __doc__,
).as_pass()
