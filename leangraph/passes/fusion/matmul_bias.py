"""Linear layers -> leangraph::MatMulBiasAct, then activations folded into them.

- ``MatMul(x, W) + b`` with constant W (2-D) and b -> ``MatMulBiasAct(x, W, b)``.
- ``Gemm(x, W, b)`` (alpha = beta = 1, no transA) with constant W -> ``MatMulBiasAct`` (W transposed
  once at compile time when transB = 1).

Every bias is a row the product broadcasts over: shape [N] or [1, N], or a scalar ([] or [1]), which
is broadcast to [N] (exact: the same number added to every column); a Gemm bias of shape [M, 1] or
[M, N] varies by row and is left alone, as is any bias that would add dims to the product. A graph
input is never a constant weight or bias, even with an initializer (then only its default).
- ``Reshape(Gemm(Reshape(x, [-1, K]), W, b), [..., N])`` (how the exporter writes GPT-2's Conv1D
  and addmm on 3-D inputs) -> ``MatMulBiasAct(x, W, b)`` when the outer reshape restores x's
  leading dims.
- ``Reshape(MatMulBiasAct(Reshape(x, [-1, K]), ...), [d0, .., dm, N])`` where d0..dm are x's
  leading dims and its other dims multiply to K (GPT-2's head merge flattens [B, S, H, D] straight
  into its Conv1D) -> ``MatMulBiasAct(Reshape(x, [0, .., 0, -1]), ...)``: the head merge is then
  the [0, 0, -1] reshape that attention fusion folds into leangraph::MultiHeadAttention.
- ``act(MatMulBiasAct(...))`` for act in Relu, Sigmoid, Tanh, leangraph Gelu, x*Sigmoid(x) (SiLU)
  -> ``MatMulBiasAct(..., activation=act)`` when nothing else reads the linear output.

Exact up to round-off.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from leangraph.passes.base import RulePass
from leangraph.passes.fusion._checks import as_row, rank, row_vector, single_use
from leangraph.passes.shape_exprs import elements, same_dim

D = "leangraph"


def _const_matrix(value: ir.Value) -> bool:
    return value.const_value is not None and not value.is_graph_input() and len(value.const_value.shape) == 2


def _bias_row(b: ir.Value | None, w: ir.Value, trans_b: int, product_rank: int | None):
    """The bias as a [N] row (see the module doc), else None."""
    return row_vector(b, int(w.const_value.shape[0 if trans_b else 1]), product_rank)


class MatMulAdd(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, w, b):
        return op.Add(op.MatMul(x, w), b)

    def check(self, context, x, w, b):
        result = pattern.MatchResult()
        if not _const_matrix(w):
            return result.fail("weight must be a constant matrix")
        if rank(x) is None or rank(x) < 2:
            return result.fail("x must have rank >= 2")
        self._bias = _bias_row(b, w, 0, rank(x))
        if self._bias is None:
            return result.fail("bias must be a constant row of the output width (or a scalar)")
        return result

    def rewrite(self, op, x, w, b):
        return op.MatMulBiasAct(x, w, as_row(op, b, self._bias), _domain=D, activation="none")


def _plain_gemm(attrs) -> bool:
    """Gemm computing A @ B (+ C): alpha = beta = 1, A not transposed."""
    return attrs.get_float("alpha", 1.0) == 1.0 and attrs.get_float("beta", 1.0) == 1.0 and not attrs.get_int("transA", 0)


def _gemm_weight(op, w, trans_b: int):
    if not trans_b:
        return w
    array = w.const_value.numpy().T.copy()
    return op.initializer(ir.tensor(array, name=f"{w.name}_T"))


class GemmLinear(pattern.RewriteRuleClassBase):
    def __init__(self, name, with_bias: bool):
        super().__init__(name)
        self._with_bias = with_bias

    def pattern(self, op, x, w, b):
        if self._with_bias:
            return op.Gemm(x, w, b, _allow_other_attributes=True, _outputs=["y"])
        return op.Gemm(x, w, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, x, w, b=None, y=None):
        result = pattern.MatchResult()
        attrs = y.producer().attributes
        if not _plain_gemm(attrs):
            return result.fail("alpha/beta must be 1 and A not transposed")
        if not _const_matrix(w):
            return result.fail("weight must be a constant")
        self._trans_b = attrs.get_int("transB", 0)
        self._bias = None if b is None else _bias_row(b, w, self._trans_b, 2)
        if b is not None and self._bias is None:
            return result.fail("bias must be a constant row of the output width or a scalar, not one per row")
        return result

    def rewrite(self, op, x, w, b=None, y=None):
        bias = [as_row(op, b, self._bias)] if b is not None else []
        inputs = [x, _gemm_weight(op, w, self._trans_b), *bias]
        return op.MatMulBiasAct(*inputs, _domain=D, activation="none")


class ReshapedGemm(pattern.RewriteRuleClassBase):
    def __init__(self, name, with_bias: bool):
        super().__init__(name)
        self._with_bias = with_bias

    def pattern(self, op, x, flat_shape, w, b, out_shape):
        flat = op.Reshape(x, flat_shape, _allow_other_attributes=True)
        if self._with_bias:
            gemm = op.Gemm(flat, w, b, _allow_other_attributes=True, _outputs=["y"])
        else:
            gemm = op.Gemm(flat, w, _allow_other_attributes=True, _outputs=["y"])
        return op.Reshape(gemm, out_shape, _allow_other_attributes=True)

    def check(self, context, x, flat_shape, w, b=None, out_shape=None, y=None):
        result = pattern.MatchResult()
        attrs = y.producer().attributes
        if not _plain_gemm(attrs):
            return result.fail("alpha/beta must be 1 and A not transposed")
        if not _const_matrix(w) or not single_use(y):
            return result.fail("weight must be a constant, the Gemm read once")
        self._trans_b = attrs.get_int("transB", 0)
        # a row bias only: one varying by the flattened rows would not survive restoring x's dims
        self._bias = None if b is None else _bias_row(b, w, self._trans_b, 2)
        if b is not None and self._bias is None:
            return result.fail("bias must be a constant row of the output width or a scalar, not one per row")
        k = w.const_value.shape[1 if self._trans_b else 0]
        n = w.const_value.shape[0 if self._trans_b else 1]
        flat, out = elements(flat_shape), elements(out_shape)
        x_rank = rank(x)
        # the flattened width: K, or x's own last dim read off the graph (TorchScript's
        # x.view(-1, x.size(-1)): the Gemm's K then forces it to be K)
        keeps_width = flat is not None and x_rank is not None and len(flat) == 2 and (
            flat[-1] == k or same_dim(flat[-1], x, x_rank - 1))
        if out is None or not keeps_width or len(out) != x_rank:
            return result.fail("reshapes do not flatten x's leading dims and restore them")
        if flat[0] != -1 or out[-1] != n or not all(same_dim(e, x, i) for i, e in enumerate(out[:-1])):
            return result.fail("outer reshape does not restore x's leading dims")
        return result

    def rewrite(self, op, x, flat_shape, w, b=None, out_shape=None, y=None):
        bias = [as_row(op, b, self._bias)] if b is not None else []
        inputs = [x, _gemm_weight(op, w, self._trans_b), *bias]
        return op.MatMulBiasAct(*inputs, _domain=D, activation="none")


class ReshapedLinear(pattern.RewriteRuleClassBase):
    def __init__(self, name, with_bias: bool):
        super().__init__(name)
        self._with_bias = with_bias

    def pattern(self, op, x, flat_shape, w, b, out_shape):
        flat = op.Reshape(x, flat_shape, _allow_other_attributes=True)
        inputs = (flat, w, b) if self._with_bias else (flat, w)
        linear = op.MatMulBiasAct(*inputs, _domain=D, _allow_other_attributes=True, _outputs=["y"])
        return op.Reshape(linear, out_shape, _allow_other_attributes=True)

    def check(self, context, x, flat_shape, w, b=None, out_shape=None, y=None):
        result = pattern.MatchResult()
        flat, out, x_rank = elements(flat_shape), elements(out_shape), rank(x)
        if flat is None or out is None or x_rank is None or rank(w) != 2 or not single_use(y) or len(out) < 2:
            return result.fail("shapes unknown, or the linear output read elsewhere")
        kept = len(out) - 1
        k, n = w.shape[0], w.shape[1]
        merged = x.shape[kept:]
        if flat != [-1, k] or out[-1] != n or kept >= x_rank or not all(isinstance(d, int) for d in merged):
            return result.fail("the reshapes do not flatten x's trailing dims into K and restore N")
        if int(np.prod(merged)) != k or not all(same_dim(e, x, i) for i, e in enumerate(out[:-1])):
            return result.fail("the outer reshape does not restore x's leading dims")
        if b is not None and (not isinstance(n, int) or row_vector(b, n, 2) is None):
            return result.fail("bias must be a constant row of the output width, not varying by row")
        self._kept = kept
        self._activation = y.producer().attributes.get_string("activation", "none")
        return result

    def rewrite(self, op, x, flat_shape, w, b=None, out_shape=None, y=None):
        target = op.Constant(value=ir.tensor(np.array([0] * self._kept + [-1], dtype=np.int64)))
        inputs = [op.Reshape(x, target), w] + ([b] if b is not None else [])
        return op.MatMulBiasAct(*inputs, _domain=D, activation=self._activation)


class FoldActivation(pattern.RewriteRuleClassBase):
    """act(MatMulBiasAct(a, b, bias, activation=none)) -> MatMulBiasAct(..., activation=act)."""

    def __init__(self, name, activation: str, with_bias: bool):
        super().__init__(name)
        self._activation, self._with_bias = activation, with_bias

    def pattern(self, op, a, b, bias):
        inputs = (a, b, bias) if self._with_bias else (a, b)
        linear = op.MatMulBiasAct(*inputs, _domain=D, activation="none", _outputs=["linear"])
        if self._activation == "silu":
            return op.Mul(linear, op.Sigmoid(linear))
        if self._activation in ("gelu", "gelu_tanh"):
            return op.Gelu(linear, _domain=D, approximate="none" if self._activation == "gelu" else "tanh")
        return {"relu": op.Relu, "sigmoid": op.Sigmoid, "tanh": op.Tanh}[self._activation](linear)

    def check(self, context, a, b, bias=None, linear=None):
        uses = len(linear.uses())
        expected = 2 if self._activation == "silu" else 1
        if uses != expected or linear.is_graph_output():
            return pattern.MatchResult().fail("the linear output is also read elsewhere")
        return pattern.MatchResult()

    def rewrite(self, op, a, b, bias=None, linear=None):
        inputs = (a, b, bias) if self._with_bias else (a, b)
        return op.MatMulBiasAct(*inputs, _domain=D, activation=self._activation)


FUSE_MATMUL_BIAS = RulePass(
    "fuse_matmul_bias",
    [
        *MatMulAdd.rule(name="matmul_add").commute(),
        ReshapedGemm.rule("reshaped_gemm_bias", with_bias=True),
        ReshapedGemm.rule("reshaped_gemm", with_bias=False),
        GemmLinear.rule("gemm_bias", with_bias=True),
        GemmLinear.rule("gemm", with_bias=False),
        ReshapedLinear.rule("reshaped_linear_bias", with_bias=True),
        ReshapedLinear.rule("reshaped_linear", with_bias=False),
    ],
    __doc__,
).as_pass()

FUSE_MATMUL_ACTIVATION = RulePass(
    "fuse_matmul_activation",
    [
        FoldActivation.rule(f"fold_{act}{'' if bias else '_no_bias'}", act, bias)
        for act in ("relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "silu")
        for bias in (True, False)
    ],
    "Activations folded into the leangraph::MatMulBiasAct that feeds them (see fuse_matmul_bias).",
).as_pass()
