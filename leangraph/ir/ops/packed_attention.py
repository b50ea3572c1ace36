"""leangraph::PackedMultiHeadAttention(query, key, value, mask) -> output: multi-head self-attention
over packed sequences.

``query``/``key``/``value`` are [tokens, heads * head_size]: the valid tokens of a padded batch
packed together by leangraph::PackTokens with the same ``mask`` ([batch, seq], non-zero = valid).
Every token attends to the tokens of its own sequence only (block-diagonal attention, as
ByteTransformer's and FlashAttention's varlen kernels), with ``causal`` = 1 also hiding the tokens
after it in its sequence. The output is [tokens, heads * value_head_size]. It is
leangraph::MultiHeadAttention on the padded batch with the key-padding mask, restricted to the
valid rows.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from leangraph.ir.ops import multi_head_attention
from leangraph.ir.ops._util import const
from leangraph.ir.ops.packing import pack, unpack
from leangraph.ir.registry import OpDef, TensorInfo, register


def _shape(inputs, attrs):
    q, v = inputs[0], inputs[2]
    if q.shape is None or v.shape is None:
        return [TensorInfo(q.dtype, None)]
    return [TensorInfo(q.dtype, (q.shape[0], v.shape[-1]))]


def sequence_bounds(mask: np.ndarray) -> np.ndarray:
    """[batch + 1] offsets of each sequence's tokens in the packed order."""
    return np.concatenate([[0], np.cumsum((mask != 0).sum(axis=1))])


def _reference(query, key, value, mask, num_heads=0, scale=0.0, causal=0):
    bounds = sequence_bounds(mask)
    if bounds[-1] != query.shape[0]:
        raise ValueError(f"{query.shape[0]} packed tokens, but the mask has {bounds[-1]} valid positions")
    out = np.zeros((query.shape[0], value.shape[-1]), dtype=query.dtype)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop > start:
            (rows,) = multi_head_attention._reference(query[None, start:stop], key[None, start:stop],
                                                      value[None, start:stop], None, num_heads, scale, causal)
            out[start:stop] = rows[0]
    return (out,)


def _decompose(tape, inputs, attrs):
    """Unpacked, attention with the key-padding mask, packed again: the same rows."""
    query, key, value, mask = inputs
    padded = [unpack(tape, x, mask) for x in (query, key, value)]
    for x, source in zip(padded, (query, key, value)):
        x.dtype, x.shape = source.dtype, ir.Shape([None, None, None])
    visible = tape.op("Unsqueeze", [tape.op("Cast", [mask], {"to": int(ir.DataType.BOOL)}), const(tape, [1, 2], np.int64)])
    visible.dtype = ir.DataType.BOOL  # the attention decomposition reads it: boolean, not additive
    # A valid query always sees a valid key (itself), so no row of the attention is empty: the
    # guard that zeroes empty rows is left out (padded rows may be NaN; pack drops them).
    (out,) = multi_head_attention._decompose(tape, [*padded, visible], attrs, empty_rows=False)
    return [pack(tape, out, mask, broadcast=False)]


PACKED_MULTI_HEAD_ATTENTION = register(
    OpDef(
        name="PackedMultiHeadAttention",
        doc=__doc__,
        inputs=("query", "key", "value", "mask"),
        outputs=("output",),
        attributes={"num_heads": 0, "scale": 0.0, "causal": 0},
        shape_rule=_shape,
        reference=_reference,
        decompose=_decompose,
    )
)
