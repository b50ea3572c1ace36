"""leangraph::MultiHeadAttention(query, key, value, mask?) -> output: attention on packed heads.

``query`` is [batch, q_len, heads * head_size], ``key``/``value`` [batch, kv_len, heads * ...],
the output [batch, q_len, heads * value_head_size]: the head split (Reshape + Transpose) and merge
(Transpose + Reshape) around leangraph::Attention, folded into the op, as ONNX Runtime's
MultiHeadAttention. ``num_heads`` splits the last dim; ``mask``, ``scale``, ``causal`` and ``zero_nan_rows``
mean what they mean for leangraph::Attention.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from leangraph.ir.ops import attention
from leangraph.ir.ops._util import const
from leangraph.ir.registry import OpDef, TensorInfo, register


def _split(x: np.ndarray, heads: int) -> np.ndarray:
    batch, length, width = x.shape
    return x.reshape(batch, length, heads, width // heads).transpose(0, 2, 1, 3)


def _shape(inputs, attrs):
    q, v = inputs[0], inputs[2]
    if q.shape is None or v.shape is None:
        return [TensorInfo(q.dtype, None)]
    return [TensorInfo(q.dtype, (q.shape[0], q.shape[1], v.shape[2]))]


def _reference(query, key, value, mask=None, num_heads=0, scale=0.0, causal=0, zero_nan_rows=1):
    if num_heads <= 0 or query.shape[-1] % num_heads or value.shape[-1] % num_heads:
        raise ValueError(f"num_heads={num_heads} does not divide the widths {query.shape[-1]}, {value.shape[-1]}")
    (out,) = attention._reference(_split(query, num_heads), _split(key, num_heads), _split(value, num_heads),
                                  mask, scale, causal, zero_nan_rows)
    batch, heads, length, size = out.shape
    return (out.transpose(0, 2, 1, 3).reshape(batch, length, heads * size),)


def _decompose(tape, inputs, attrs):
    heads = attrs["num_heads"]

    def split(x):
        # the head size spelled out where the width is static: -1 cannot be inferred on an empty
        # sequence (a KV cache's past at prefill is [batch, 0, width])
        width = x.shape[-1] if x.shape is not None and len(x.shape) == 3 else None
        size = width // heads if isinstance(width, int) else -1
        split_shape = const(tape, [0, 0, heads, size], np.int64)
        heads_first = tape.op("Transpose", [tape.op("Reshape", [x, split_shape])], {"perm": [0, 2, 1, 3]})
        heads_first.dtype = x.dtype  # the attention decomposition reads the dtype and the key's rank
        heads_first.shape = ir.Shape([None, None, None, None])
        return heads_first

    query, key, value = (split(x) for x in inputs[:3])
    mask = inputs[3] if len(inputs) > 3 else None
    (out,) = attention._decompose(tape, [query, key, value, mask], {"scale": attrs["scale"], "causal": attrs["causal"],
                                                                      "zero_nan_rows": attrs["zero_nan_rows"]})
    merged = tape.op("Transpose", [out], {"perm": [0, 2, 1, 3]})
    return [tape.op("Reshape", [merged, const(tape, [0, 0, -1], np.int64)])]


MULTI_HEAD_ATTENTION = register(
    OpDef(
        name="MultiHeadAttention",
        doc=__doc__,
        inputs=("query", "key", "value", "mask?"),
        outputs=("output",),
        attributes={"num_heads": 0, "scale": 0.0, "causal": 0, "zero_nan_rows": 1},
        shape_rule=_shape,
        reference=_reference,
        decompose=_decompose,
    )
)
