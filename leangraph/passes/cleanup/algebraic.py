"""Algebraic simplification: rewrites that compute the same values with fewer or cheaper nodes.

From onnxscript's rule library: x*1, x+0, x-0, x/1, inference Dropout, Cast to the same type and
Cast chains, Transpose pairs and identity Transposes, Reshape chains, Expand to the same shape,
Unsqueeze chains, Slice collapsing, ConstantOfShape+Cast. And our own:

- ``reshape_copy_dims``: ``Reshape(x, Concat(dim0(x), dim1(x), [-1], [32]))`` -> ``Reshape(x, [0, 0, -1, 32])``:
  a target built from x's own dims at the same positions becomes a constant, and the shape
  arithmetic feeding it dies.
- ``reshape_leading_inferred``: ``Reshape(x[b, 17, 32], [-1, 17, 4, 8])`` -> ``Reshape(x, [0, 17, 4, 8])``.
- ``reshape_to_own_shape``: ``Reshape(x[b, 12, s, 32], [0, 12, 0, 32])`` -> ``x``.
- ``transpose_last_two_chain``: ``Reshape(Transpose(Reshape(k, [-1, S, D]), [0, 2, 1]), [..., D, S])``,
  how torch's exporter transposes the key inside scaled_dot_product_attention, -> ``Transpose(k)``
  swapping the last two axes.

All rules are exact.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxscript.rewriter.rules.common as library
from onnxscript.rewriter import pattern

from leangraph.passes.base import Pass, PassResult, RulePass
from leangraph.passes.cleanup.constant_folding import defaults_hidden
from leangraph.passes.fusion._checks import constant, fits_into
from leangraph.passes.shape_exprs import Dim, elements, same_dim


def _is_identity_element(array: np.ndarray, op_type: str) -> bool:
    """Whether every element of ``array`` leaves any x unchanged, bit for bit, under ``op_type``."""
    if array.size == 0 or array.dtype.kind not in "biuf":
        return False
    if op_type in ("Mul", "Div"):
        return bool(np.all(array == 1))
    if not np.all(array == 0):
        return False
    if array.dtype.kind != "f":
        return True
    # x + (-0.0) == x and x - (+0.0) == x for every x, -0.0 included; x + 0.0 and x - (-0.0) give
    # +0.0 for x = -0.0.
    negative = np.signbit(array)
    return bool(np.all(negative) if op_type == "Add" else not np.any(negative))


class IdentityConstant(pattern.RewriteRuleClassBase):
    """``x op c`` (or ``c op x`` for Add and Mul) -> x, where c is op's identity element exactly."""

    def __init__(self, name: str, op_type: str, constant_first: bool = False):
        super().__init__(name)
        self._op_type, self._constant_first = op_type, constant_first

    def pattern(self, op, x, c):
        build = getattr(op, self._op_type)
        return build(c, x) if self._constant_first else build(x, c)

    def check(self, context, x, c):
        result = pattern.MatchResult()
        array = constant(c)
        if array is None:
            return result.fail("the other operand is no constant (a graph input is none, whatever its default)")
        if c.dtype != x.dtype or x.dtype is None:
            return result.fail("operand types differ or are unknown")
        if not _is_identity_element(array, self._op_type):
            identity = "1" if self._op_type in ("Mul", "Div") else "a neutral 0"
            return result.fail(f"the constant is not exactly {identity} in every element")
        if not fits_into(c, x):
            return result.fail("the constant broadcasts x to a bigger shape")
        return result

    def rewrite(self, op, x, c):
        return op.Identity(x)


_NARROW_FLOATS = frozenset({ir.DataType.FLOAT16, ir.DataType.BFLOAT16})
_EXACT_IN_FLOAT32 = frozenset({
    ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.BOOL, ir.DataType.INT8,
    ir.DataType.UINT8, ir.DataType.INT16, ir.DataType.UINT16, ir.DataType.INT4, ir.DataType.UINT4,
    ir.DataType.FLOAT8E4M3FN, ir.DataType.FLOAT8E4M3FNUZ, ir.DataType.FLOAT8E5M2, ir.DataType.FLOAT8E5M2FNUZ,
})
"""Types whose every value float32 holds exactly: casting them to float32 first changes nothing."""


class CastChain(pattern.RewriteRuleClassBase):
    """``Cast(Cast(x, to=float32), to=float16 | bfloat16)`` -> ``Cast(x, to=...)``, when x's type
    converts to float32 exactly (onnxscript's cast_cast also takes float64 and int32/int64 x, whose
    two roundings can differ from the one: float64 -> float32 -> float16 is double rounding)."""

    def pattern(self, op, x, to, to_ignored):
        return op.Cast(op.Cast(x, to=to_ignored), to=to)

    def check(self, context, x, to, to_ignored):
        result = pattern.MatchResult()
        if to_ignored.as_int() != ir.DataType.FLOAT or to.as_int() not in _NARROW_FLOATS:
            return result.fail("not float32 then float16/bfloat16")
        if x.dtype not in _EXACT_IN_FLOAT32:
            return result.fail(f"{x.dtype} does not convert to float32 exactly: two roundings")
        return result

    def rewrite(self, op, x, to, to_ignored):
        return op.Cast(x, to=to.as_int())


class ReshapeCopyDims(pattern.RewriteRuleClassBase):
    """Reshape whose target copies x's own dims in place -> Reshape to a constant with 0s."""

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _allow_other_attributes=True)

    def check(self, context, x, shape):
        result = pattern.MatchResult()
        parts = elements(shape)
        if parts is None or not any(isinstance(p, Dim) for p in parts):
            return result.fail("target is constant or cannot be read off the graph")
        if x.shape is None:
            return result.fail("rank of the reshaped value is unknown")
        resolved = []
        for position, part in enumerate(parts):
            if isinstance(part, Dim):
                if position >= len(x.shape) or not same_dim(part, x, position):
                    return result.fail(f"element {position} is a runtime dim, not dim {position} of the input")
                resolved.append(0)
            elif part == 0:
                return result.fail("a literal 0 (empty dim under allowzero=1) must stay")
            else:
                resolved.append(part)
        if resolved.count(-1) > 1:
            return result.fail("more than one -1")
        self._target = resolved
        return result

    def rewrite(self, op, x, shape):
        target = op.Constant(value=ir.tensor(np.array(self._target, dtype=np.int64)))
        return op.Reshape(x, target, allowzero=0)


class ReshapeLeadingInferred(pattern.RewriteRuleClassBase):
    """Reshape(x, [-1, *rest]) with prod(rest) == prod(x.shape[1:]) (static) -> Reshape(x, [0, *rest]).

    The -1 can only be x's first dim then; a copied dim (0) says so without arithmetic, which the
    attention rules rely on to see a head split or merge."""

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _allow_other_attributes=True)

    def check(self, context, x, shape):
        result = pattern.MatchResult()
        target = shape.const_value.numpy().tolist() if shape.const_value is not None else None
        if not target or target[0] != -1 or 0 in target[1:] or -1 in target[1:] or x.shape is None or len(x.shape) < 2:
            return result.fail("not a constant [-1, ...] target without other 0/-1")
        dims = list(x.shape)
        if not all(isinstance(d, int) for d in dims[1:]):
            return result.fail("x's dims after the first are not static")
        if int(np.prod(target[1:])) != int(np.prod(dims[1:])):
            return result.fail("the -1 would not be x's first dim")
        self._target = [0, *target[1:]]
        return result

    def rewrite(self, op, x, shape):
        target = op.Constant(value=ir.tensor(np.array(self._target, dtype=np.int64)))
        return op.Reshape(x, target, allowzero=0)


class ReshapeToItsOwnShape(pattern.RewriteRuleClassBase):
    """Reshape(x, target) whose target keeps every dim of x (0 = copy, or x's static size; at most
    one -1, which then can only be the remaining dim) -> x. TorchScript's exporter writes one after
    attention (the [batch, heads, seq, size] result reshaped to its own shape)."""

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _allow_other_attributes=True, _outputs=["reshaped"])

    def check(self, context, x, shape, reshaped):
        result = pattern.MatchResult()
        array = constant(shape)
        target = None if array is None else array.reshape(-1).tolist()
        if target is None or x.shape is None or len(target) != len(x.shape):
            return result.fail("not a constant target of x's rank")
        allowzero = reshaped.producer().attributes.get_int("allowzero", 0)
        kept = [(t == 0 and not allowzero) or (isinstance(d, int) and t == d) for t, d in zip(target, x.shape)]
        if sum(not k for k in kept) > (1 if target.count(-1) == 1 else 0) or (not all(kept) and -1 not in target):
            return result.fail("the target changes a dim")
        return result

    def rewrite(self, op, x, shape, reshaped):
        return op.Identity(x)


class TransposeLastTwoChain(pattern.RewriteRuleClassBase):
    """Reshape -> Transpose(0,2,1) -> Reshape that swaps the last two axes of a value -> one Transpose."""

    def pattern(self, op, k, merged_shape, split_shape):
        merged = op.Reshape(k, merged_shape, _allow_other_attributes=True)
        return op.Reshape(op.Transpose(merged, perm=[0, 2, 1]), split_shape, _allow_other_attributes=True)

    def check(self, context, k, merged_shape, split_shape):
        result = pattern.MatchResult()
        if k.shape is None or len(k.shape) < 3:
            return result.fail("rank of the transposed value is unknown or < 3")
        rank = len(k.shape)
        merged, split = elements(merged_shape), elements(split_shape)
        if merged is None or split is None or len(merged) != 3 or len(split) != rank:
            return result.fail("reshape targets cannot be read off the graph")
        if merged[0] != -1 or not same_dim(merged[1], k, rank - 2) or not same_dim(merged[2], k, rank - 1):
            return result.fail("first reshape does not merge the leading dims into one")
        expected = [*range(rank - 2), rank - 1, rank - 2]
        if not all(same_dim(part, k, index) for part, index in zip(split, expected)):
            return result.fail("second reshape does not restore the leading dims with the last two swapped")
        self._rank = rank
        return result

    def rewrite(self, op, k, merged_shape, split_shape):
        rank = self._rank
        return op.Transpose(k, perm=[*range(rank - 2), rank - 1, rank - 2])


def _named(name: str, rules) -> list[pattern.RewriteRule]:
    """Library rules under our names (the report counts rewrites per rule name)."""
    rules = rules if isinstance(rules, (list, tuple)) else [rules]
    for index, rule in enumerate(rules):
        rule.name = name if len(rules) == 1 else f"{name}[{index}]"
    return list(rules)


RULES = [
    *_named("mul_by_one", [IdentityConstant.rule(None, "Mul"), IdentityConstant.rule(None, "Mul", True)]),
    *_named("add_zero", [IdentityConstant.rule(None, "Add"), IdentityConstant.rule(None, "Add", True)]),
    *_named("sub_zero", IdentityConstant.rule(None, "Sub")),
    *_named("div_by_one", IdentityConstant.rule(None, "Div")),
    *_named("dropout_zero", library.dropout_zero_rule),
    *_named("dropout_inference", library.dropout_inference_rule),
    *_named("cast_identity", library.no_op_cast_rule),
    *_named("cast_cast", CastChain.rule()),
    *_named("transpose_identity", library.no_op_transpose_rule),
    *_named("transpose_transpose", library.transpose_transpose_rule),
    *_named("reshape_reshape", library.reshape_reshape_rule),
    *_named("expand_identity", library.no_op_expand_rule),
    *_named("unsqueeze_unsqueeze", library.unsqueeze_unsqueeze_rule),
    *_named("collapse_slice", library.collapse_slice_rule),
    *_named("collapse_slice2", library.collapse_slice2_rule),
    *_named("cast_constant_of_shape", library.cast_constant_of_shape_rule),
    *_named("cast_constant_of_shape_no_value", library.cast_constant_of_shape_without_value_rule),
    ReshapeCopyDims.rule(name="reshape_copy_dims"),
    ReshapeLeadingInferred.rule(name="reshape_leading_inferred"),
    ReshapeToItsOwnShape.rule(name="reshape_to_own_shape"),
    TransposeLastTwoChain.rule(name="transpose_last_two_chain"),
]

_RULES = RulePass("algebraic", RULES, __doc__)


def _algebraic(model: ir.Model) -> PassResult:
    # The library rules read const_value of any value: graph inputs' defaults are set aside.
    with defaults_hidden(model):
        return _RULES(model)


ALGEBRAIC = Pass("algebraic", _algebraic, __doc__)
