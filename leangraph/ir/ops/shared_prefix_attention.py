"""leangraph::SharedPrefixAttention(query, key, value, prefix_key, prefix_value, mask?) -> output:
attention over a prefix every sequence of the batch shares, then each sequence's own keys.

Each query attends to ``prefix_key``/``prefix_value`` (batch 1: the batch's common prefix, held
once, every position visible) followed by its own ``key``/``value`` (masked by ``mask``, which
covers the own keys only: boolean, True = may attend, or additive). It equals leangraph::Attention
over the prefix broadcast to the batch and concatenated with the own keys (the reference computes
exactly that). ``num_heads`` = 0: inputs are [batch, heads, len, size]; ``num_heads`` = H > 0:
query/key/value are [batch, len, H * size], heads split inside (as leangraph::MultiHeadAttention).
The prefix is [1, heads, prefix_len, size] either way: its head split is done once by whoever
holds it, not at every call.

The decomposition attends to the prefix once for the whole batch (Hydragen; FlashInfer's cascade
attention): the batch's queries become the rows of one matrix product per head against the
prefix, so the prefix is read once per step, not once per sequence, and is never copied. The two
parts are combined by their softmax statistics (log-sum-exp): exact up to round-off. The prefix
is never empty, so no query row is without a visible key; ``zero_nan_rows`` means what it means
for leangraph::Attention.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from leangraph.ir.ops import attention, multi_head_attention
from leangraph.ir.ops._util import const
from leangraph.ir.registry import OpDef, TensorInfo, register


def _shape(inputs, attrs):
    q, v = inputs[0], inputs[2]
    if q.shape is None or v.shape is None:
        return [TensorInfo(q.dtype, None)]
    return [TensorInfo(q.dtype, (*q.shape[:-1], v.shape[-1]))]


def _heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    return multi_head_attention._split(x, num_heads) if num_heads else x


def _reference(query, key, value, prefix_key, prefix_value, mask=None, num_heads=0, scale=0.0, zero_nan_rows=1):
    q, k, v = (_heads(x, num_heads) for x in (query, key, value))
    pk, pv = prefix_key, prefix_value
    batch, own, shared = q.shape[0], k.shape[-2], pk.shape[-2]
    pk, pv = (np.broadcast_to(x, (batch, *x.shape[1:])) for x in (pk, pv))
    keys, values = np.concatenate([pk, k], axis=-2), np.concatenate([pv, v], axis=-2)
    full = None
    if mask is not None:
        target = np.broadcast_shapes(mask.shape, (batch, 1, q.shape[-2], own))
        mask = np.broadcast_to(mask, target)
        visible = np.ones((*target[:-1], shared), dtype=bool) if mask.dtype == np.bool_ else np.zeros(
            (*target[:-1], shared), dtype=mask.dtype)
        full = np.concatenate([visible, mask], axis=-1)
    (out,) = attention._reference(q, keys, values, full, scale, 0, zero_nan_rows)
    if num_heads:
        b, h, length, size = out.shape
        out = out.transpose(0, 2, 1, 3).reshape(b, length, h * size)
    return (out.astype(query.dtype),)


def _decompose(tape, inputs, attrs):
    heads = attrs["num_heads"]
    query, key, value, prefix_key, prefix_value = inputs[:5]
    mask = inputs[5] if len(inputs) > 5 else None
    dtype = query.dtype.numpy()
    if heads:
        split_shape = const(tape, [0, 0, heads, -1], np.int64)

        def split(x):
            return tape.op("Transpose", [tape.op("Reshape", [x, split_shape])], {"perm": [0, 2, 1, 3]})

        query, key, value = (split(x) for x in inputs[:3])
    if attrs["scale"]:
        scale = const(tape, attrs["scale"], dtype)
    else:
        size = tape.op("Cast", [tape.op("Shape", [query], {"start": -1})], {"to": int(inputs[0].dtype)})
        scale = tape.op("Reciprocal", [tape.op("Sqrt", [size])])
    last = const(tape, [-1], np.int64)

    def row_max(scores):
        return tape.op("ReduceMax", [scores, last], {"keepdims": 1})

    # the prefix, once for the batch: [heads, batch * queries, size] against [heads, prefix, size]
    heads_first = tape.op("Transpose", [query], {"perm": [1, 0, 2, 3]})  # [h, b, n, d]
    rows = tape.op("Reshape", [heads_first, tape.op("Concat", [tape.op("Shape", [heads_first], {"end": 1}),
                                                               last, tape.op("Shape", [heads_first], {"start": 3})],
                                                    {"axis": 0})])
    zero = const(tape, [0], np.int64)
    shared_key = tape.op("Squeeze", [prefix_key, zero])  # [h, S, d]
    shared_value = tape.op("Squeeze", [prefix_value, zero])
    shared_scores = tape.op("Mul", [tape.op("MatMul", [rows, tape.op("Transpose", [shared_key], {"perm": [0, 2, 1]})]),
                                    scale])
    shared_max = row_max(shared_scores)
    shared_weights = tape.op("Exp", [tape.op("Sub", [shared_scores, shared_max])])
    shared_sum = tape.op("ReduceSum", [shared_weights, last], {"keepdims": 1})
    shared_out = tape.op("MatMul", [shared_weights, shared_value])  # [h, b * n, d]

    def batch_first(x, width):  # [h, b * n, width] -> [b, h, n, width]
        shape = tape.op("Concat", [tape.op("Shape", [heads_first], {"end": 3}), width], {"axis": 0})
        return tape.op("Transpose", [tape.op("Reshape", [x, shape])], {"perm": [1, 0, 2, 3]})

    one = const(tape, [1], np.int64)
    shared_out = batch_first(shared_out, tape.op("Shape", [heads_first], {"start": 3}))
    shared_max, shared_sum = batch_first(shared_max, one), batch_first(shared_sum, one)

    # the own keys, masked
    own_scores = tape.op("Mul", [tape.op("MatMul", [query, tape.op("Transpose", [key], {"perm": [0, 1, 3, 2]})]), scale])
    if mask is not None:
        if mask.dtype == ir.DataType.BOOL:
            own_scores = tape.op("Where", [mask, own_scores, const(tape, -np.inf, dtype)])
        else:
            own_scores = tape.op("Add", [own_scores, mask])
    high = tape.op("Max", [shared_max, row_max(own_scores)])  # finite: the prefix is visible to every row
    own_weights = tape.op("Exp", [tape.op("Sub", [own_scores, high])])
    own_sum = tape.op("ReduceSum", [own_weights, last], {"keepdims": 1})
    own_out = tape.op("MatMul", [own_weights, value])
    rescale = tape.op("Exp", [tape.op("Sub", [shared_max, high])])
    out = tape.op("Div", [tape.op("Add", [tape.op("Mul", [shared_out, rescale]), own_out]),
                          tape.op("Add", [tape.op("Mul", [shared_sum, rescale]), own_sum])])
    if attrs.get("zero_nan_rows", 1):
        out = tape.op("Where", [tape.op("IsNaN", [out]), const(tape, 0.0, dtype), out])
    if heads:
        merged = tape.op("Transpose", [out], {"perm": [0, 2, 1, 3]})
        out = tape.op("Reshape", [merged, const(tape, [0, 0, -1], np.int64)])
    return [out]


SHARED_PREFIX_ATTENTION = register(
    OpDef(
        name="SharedPrefixAttention",
        doc=__doc__,
        inputs=("query", "key", "value", "prefix_key", "prefix_value", "mask?"),
        outputs=("output",),
        attributes={"num_heads": 0, "scale": 0.0, "zero_nan_rows": 1},
        shape_rule=_shape,
        reference=_reference,
        decompose=_decompose,
    )
)
