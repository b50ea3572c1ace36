"""Layer norm -> leangraph::LayerNorm.

Rewrites ONNX ``LayerNormalization`` (what torch's exporter emits for nn.LayerNorm) on float32
inputs with float32 statistics (stash_type=1), and the decomposed form
``(x - mean(x)) / sqrt(var(x) + eps) * scale + bias`` over the last axis. Exact up to round-off.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from leangraph.passes.base import RulePass
from leangraph.passes.fusion._checks import is_float32, is_scalar, scalar

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
    def pattern(self, op, x, axes, axes2, two, eps, scale, bias):
        centered = op.Sub(x, op.ReduceMean(x, axes, keepdims=1, _allow_other_attributes=True))
        var = op.ReduceMean(op.Pow(centered, two), axes2, keepdims=1, _allow_other_attributes=True)
        normalized = op.Div(centered, op.Sqrt(op.Add(var, eps)))
        return op.Add(op.Mul(normalized, scale), bias)

    def check(self, context, x, axes, axes2, two, eps, scale, bias):
        result = pattern.MatchResult()
        if not is_float32(x) or not is_scalar(two, 2.0):
            return result.fail("needs float32 x and a square")
        for a in (axes, axes2):
            if a.const_value is None or a.const_value.numpy().reshape(-1).tolist() != [-1]:
                return result.fail("normalizes over other axes than the last")
        if scalar(eps) is None or scale.const_value is None or bias.const_value is None:
            return result.fail("epsilon, scale and bias must be constants")
        self._eps = scalar(eps)
        return result

    def rewrite(self, op, x, axes, axes2, two, eps, scale, bias):
        return op.LayerNorm(x, scale, bias, _domain=D, axis=-1, epsilon=self._eps)


FUSE_LAYER_NORM = RulePass(
    "fuse_layer_norm",
    [FromOnnxLayerNorm.rule(name="onnx_layer_norm"), DecomposedLayerNorm.rule(name="decomposed_layer_norm")],
    __doc__,
).as_pass()
