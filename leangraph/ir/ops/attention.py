"""leangraph::Attention(query, key, value, mask?) -> output: scaled dot-product attention.

``softmax(query @ key^T * scale + mask) @ value`` over the last two dims; leading dims (batch,
heads) broadcast. ``scale`` = 0 means 1/sqrt(head size). ``mask`` broadcasts to
[..., q_len, kv_len]: boolean (True = may attend) or additive float. ``causal`` = 1 also hides
keys after the query's position (top-left aligned, as torch's ``is_causal``).

``zero_nan_rows`` = 1 (the default): a query row whose softmax is NaN (no visible key, or NaN or
infinite scores) yields zeros, as torch's scaled_dot_product_attention does (its export guards the
softmax with ``Where(IsNaN(p), 0, p)``). ``zero_nan_rows`` = 0: such a row yields NaN, as a plain
softmax does (HF's eager attention, which has no guard).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from leangraph.ir.ops._util import broadcast_dims, const
from leangraph.ir.registry import OpDef, TensorInfo, register


def _shape(inputs, attrs):
    q, v = inputs[0], inputs[2]
    if q.shape is None or v.shape is None:
        return [TensorInfo(q.dtype, None)]
    return [TensorInfo(q.dtype, (*broadcast_dims(q.shape[:-2], v.shape[:-2]), q.shape[-2], v.shape[-1]))]


def _reference(query, key, value, mask=None, scale=0.0, causal=0, zero_nan_rows=1):
    dtype = query.dtype
    scale = scale or 1.0 / math.sqrt(query.shape[-1])
    scores = (query @ np.swapaxes(key, -1, -2)) * np.asarray(scale, dtype)
    neg_inf = np.asarray(-np.inf, dtype)
    if causal:
        visible = np.tril(np.ones((query.shape[-2], key.shape[-2]), dtype=bool))
        scores = np.where(visible, scores, neg_inf)
    if mask is not None:
        scores = np.where(mask, scores, neg_inf) if mask.dtype == np.bool_ else scores + mask
    with np.errstate(invalid="ignore"):
        scores = scores - scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores)
        weights = weights / weights.sum(axis=-1, keepdims=True)
    if zero_nan_rows:
        weights = np.where(np.isnan(weights), np.zeros((), dtype), weights)
    return ((weights @ value).astype(dtype),)


def _decompose(tape, inputs, attrs, empty_rows: bool = True):
    """``empty_rows`` = False: the caller knows every row sees a key; the zeroing guard is left out
    (as it is for ``zero_nan_rows`` = 0)."""
    query, key, value = inputs[:3]
    mask = inputs[3] if len(inputs) > 3 else None
    known = key if key.shape is not None else query  # key and query have the same rank
    if known.shape is None:
        raise ValueError("decomposing leangraph::Attention needs the rank of its key or query input")
    dtype = query.dtype.numpy()
    rank = len(known.shape)
    perm = [*range(rank - 2), rank - 1, rank - 2]
    scores = tape.op("MatMul", [query, tape.op("Transpose", [key], {"perm": perm})])
    if attrs["scale"]:
        scale = const(tape, attrs["scale"], dtype)
    else:
        head_size = tape.op("Cast", [tape.op("Shape", [query], {"start": -1})], {"to": int(query.dtype)})
        scale = tape.op("Reciprocal", [tape.op("Sqrt", [head_size])])
    scores = tape.op("Mul", [scores, scale])
    neg_inf = const(tape, -np.inf, dtype)
    if attrs["causal"]:
        q_len = tape.op("Shape", [query], {"start": -2, "end": -1})
        kv_len = tape.op("Shape", [key], {"start": -2, "end": -1})
        dims = tape.op("Concat", [q_len, kv_len], {"axis": 0})
        ones = tape.op("ConstantOfShape", [dims], {"value": _one_tensor()})
        visible = tape.op("Cast", [tape.op("Trilu", [ones], {"upper": 0})], {"to": int(_BOOL)})
        scores = tape.op("Where", [visible, scores, neg_inf])
    if mask is not None:
        if mask.dtype == _BOOL:
            scores = tape.op("Where", [mask, scores, neg_inf])
        else:
            scores = tape.op("Add", [scores, mask])
    weights = tape.op("Softmax", [scores], {"axis": -1})
    if empty_rows and attrs.get("zero_nan_rows", 1):
        weights = tape.op("Where", [tape.op("IsNaN", [weights]), const(tape, 0.0, dtype), weights])
    return [tape.op("MatMul", [weights, value])]


def _one_tensor() -> ir.TensorProtocol:
    return ir.tensor(np.ones((1,), dtype=np.float32))


_BOOL = ir.DataType.BOOL

ATTENTION = register(
    OpDef(
        name="Attention",
        doc=__doc__,
        inputs=("query", "key", "value", "mask?"),
        outputs=("output",),
        attributes={"scale": 0.0, "causal": 0, "zero_nan_rows": 1},
        shape_rule=_shape,
        reference=_reference,
        decompose=_decompose,
    )
)
