"""leangraph::PackedMultiHeadAttention(query, key, value, mask) -> output: multi-head self-attention
over packed sequences.

``query``/``key``/``value`` are [tokens, heads * head_size]: the valid tokens of a padded batch
packed together by leangraph::PackTokens with the same ``mask`` ([batch, seq], non-zero = valid).
Every token attends to the tokens of its own sequence only (block-diagonal attention, as
ByteTransformer's and FlashAttention's varlen kernels), with ``causal`` = 1 also hiding the tokens
after it in its sequence. The output is [tokens, heads * value_head_size]. It is
leangraph::MultiHeadAttention on the padded batch with the key-padding mask, restricted to the
valid rows.

``size_bias`` = 1: the mask holds token sizes (how many original tokens a merged token stands for,
leangraph::MergeTokens) and each key's score gets ``log(size)``: ToMe's proportional attention,
softmax as if each merged key were its tokens repeated.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from leangraph.ir.ops import attention, multi_head_attention
from leangraph.ir.ops._util import const
from leangraph.ir.ops.packing import valid_indices
from leangraph.ir.registry import OpDef, TensorInfo, register


def _shape(inputs, attrs):
    q, v = inputs[0], inputs[2]
    if q.shape is None or v.shape is None:
        return [TensorInfo(q.dtype, None)]
    return [TensorInfo(q.dtype, (q.shape[0], v.shape[-1]))]


def sequence_bounds(mask: np.ndarray) -> np.ndarray:
    """[batch + 1] offsets of each sequence's tokens in the packed order."""
    return np.concatenate([[0], np.cumsum((mask != 0).sum(axis=1))])


def _reference(query, key, value, mask, num_heads=0, scale=0.0, causal=0, size_bias=0):
    bounds = sequence_bounds(mask)
    sizes = mask[mask != 0].astype(query.dtype)
    if bounds[-1] != query.shape[0]:
        raise ValueError(f"{query.shape[0]} packed tokens, but the mask has {bounds[-1]} valid positions")
    out = np.zeros((query.shape[0], value.shape[-1]), dtype=query.dtype)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop > start:
            bias = np.log(sizes[None, None, None, start:stop]) if size_bias else None
            (rows,) = multi_head_attention._reference(query[None, start:stop], key[None, start:stop],
                                                      value[None, start:stop], bias, num_heads, scale, causal)
            out[start:stop] = rows[0]
    return (out,)


def _decompose(tape, inputs, attrs):
    """The per-sequence layout [batch, heads, longest, head_size], longest = the most valid tokens of
    any sequence (not the mask's width: a batch padded to a fixed length attends over its longest
    sentence only), gathered straight from the packed rows viewed as [tokens * heads, head_size]: no
    zero-filled buffer, no head transposes; positions past a sequence's length read token 0's rows,
    masked out as keys and dropped as queries. Attention with an additive key-padding bias, and the
    output gathered back to [tokens, heads, head_size]. A batch without a valid token has longest 0:
    every gather is then empty and no row is read, so no If guards it (an If costs ~60 us a call in
    ONNX Runtime: MiniLM on STS-B dev, 33 of 290 ms of attention)."""
    query, key, value, mask = inputs
    heads = attrs["num_heads"]
    rows, bias, out_rows = _gather_indices(tape, mask, heads, query.dtype, attrs.get("size_bias", 0))

    fused = _split_source(query, key, value)
    if fused is not None:  # row (token * 3 + part) * heads + head of the fused tensor, for each part
        part_rows = [tape.op("Add", [tape.op("Mul", [rows, const(tape, 3, np.int64)]),
                                     const(tape, part * heads - 2 * np.arange(heads).reshape(1, heads, 1), np.int64)])
                     for part in range(3)]

    def last_dim(x, parts=1):
        """[-1, x's last dim / parts] as a Reshape target (Reshape, not Flatten: with 0 tokens
        Flatten's [0, -1] has no answer)."""
        width = x.shape[-1] if x.shape is not None else None
        if isinstance(width, int):
            return const(tape, [-1, width // parts], np.int64)
        size = tape.op("Div", [tape.op("Shape", [x], {"start": -1}), const(tape, [parts], np.int64)])
        return tape.op("Concat", [const(tape, [-1], np.int64), size], {"axis": 0})

    def rows_by_head(x, parts):  # [tokens * parts * heads, size]
        return tape.op("Reshape", [x, last_dim(x, parts * heads)])

    # One view of the fused projection serves the three parts.
    fused_rows = rows_by_head(fused, 3) if fused is not None else None

    def heads_first(x, part):
        source, index = (fused_rows, part_rows[part]) if fused is not None else (rows_by_head(x, 1), rows)
        out = tape.op("Gather", [source, index], {"axis": 0})
        out.dtype, out.shape = query.dtype, ir.Shape([None, None, None, None])
        return out

    q, k, v = (heads_first(x, part) for part, x in enumerate((query, key, value)))
    (out,) = attention._decompose(tape, [q, k, v, bias], {"scale": attrs["scale"], "causal": attrs["causal"]},
                                  empty_rows=False)
    out.dtype = query.dtype  # a shape without a dtype is dropped, with a warning, when serialized
    out.shape = ir.Shape([None, None, None, value.shape[-1] // heads if value.shape is not None
                          and isinstance(value.shape[-1], int) else None])
    by_head = tape.op("Gather", [tape.op("Reshape", [out, last_dim(out)]), out_rows], {"axis": 0})  # [tokens, heads, size]
    if value.shape is not None and isinstance(value.shape[-1], int):  # always so under a fused projection
        width = const(tape, [0, value.shape[-1]], np.int64)
    else:  # not [0, -1]: a Reshape cannot infer -1 with 0 tokens
        width = tape.op("Concat", [const(tape, [0], np.int64), tape.op("Shape", [value], {"start": 1, "end": 2})],
                        {"axis": 0})
    return [tape.op("Reshape", [by_head, width])]


def _gather_indices(tape, mask, heads, dtype, size_bias=0):
    """From the [batch, seq] mask, with longest = the most valid tokens of a sequence: the packed row
    (token * heads + head) each [batch, heads, longest] position reads (a sequence's j-th valid token,
    or token 0 past its length), the additive key-padding bias [batch, 1, longest, longest], and for
    each [token, head] its row in the flattened [batch * heads * longest] output. Tokens keep their
    order within a sequence (PackTokens' row-major order), so a causal mask over positions holds."""
    valid = tape.op("Cast", [tape.op("Cast", [mask], {"to": int(ir.DataType.BOOL)})], {"to": int(ir.DataType.INT64)})
    lengths = tape.op("ReduceSum", [valid, const(tape, [1], np.int64)], {"keepdims": 0})  # [batch]
    starts = tape.op("Sub", [tape.op("CumSum", [lengths, const(tape, 0, np.int64)]), lengths])
    # Max with 0: ReduceMax over an empty batch gives the lowest int64.
    longest = tape.op("Max", [tape.op("ReduceMax", [lengths], {"keepdims": 1}), const(tape, [0], np.int64)])
    position = tape.op("Range", [const(tape, 0, np.int64), tape.op("Squeeze", [longest]), const(tape, 1, np.int64)])
    in_sequence = tape.op("Less", [tape.op("Unsqueeze", [position, const(tape, [0], np.int64)]),
                                   tape.op("Unsqueeze", [lengths, const(tape, [1], np.int64)])])  # [batch, longest]
    token = tape.op("Add", [tape.op("Unsqueeze", [starts, const(tape, [1], np.int64)]),
                            tape.op("Unsqueeze", [position, const(tape, [0], np.int64)])])
    source = tape.op("Where", [in_sequence, token, const(tape, 0, np.int64)])
    rows = tape.op("Add", [tape.op("Mul", [tape.op("Unsqueeze", [source, const(tape, [1], np.int64)]),
                                            const(tape, heads, np.int64)]),
                           const(tape, np.arange(heads).reshape(1, heads, 1), np.int64)])
    visible = const(tape, 0.0, dtype.numpy())
    if size_bias:  # log of each key's size: the packed sizes, read as the packed rows are
        flat = tape.op("Reshape", [mask, const(tape, [-1], np.int64)])
        sizes = tape.op("Cast", [tape.op("Gather", [flat, valid_indices(tape, mask)], {"axis": 0})], {"to": int(dtype)})
        visible = tape.op("Unsqueeze", [tape.op("Log", [tape.op("Gather", [sizes, source], {"axis": 0})]),
                                        const(tape, [1, 2], np.int64)])
    key_bias = tape.op("Where", [tape.op("Unsqueeze", [in_sequence, const(tape, [1, 2], np.int64)]),
                                 visible, const(tape, -np.inf, dtype.numpy())])
    # Spelled out over the query rows once per batch: ONNX Runtime adds a [batch, 1, n, n] bias to the
    # scores in n * n runs, a [batch, 1, 1, n] one in runs of n (MiniLM, STS-B dev: 15 vs 35 ms).
    bias = tape.op("Expand", [key_bias, tape.op("Concat", [const(tape, [1, 1], np.int64), longest,
                                                           const(tape, [1], np.int64)], {"axis": 0})])
    bias.dtype = dtype  # the attention decomposition reads it: additive, not boolean
    sequence_of = tape.op("Gather", [tape.op("NonZero", [mask]), const(tape, 0, np.int64)], {"axis": 0})  # [tokens]
    tokens = tape.op("Shape", [sequence_of])
    index = tape.op("Range", [const(tape, 0, np.int64), tape.op("Squeeze", [tokens]), const(tape, 1, np.int64)])
    position_of = tape.op("Sub", [index, tape.op("Gather", [starts, sequence_of], {"axis": 0})])
    first_row = tape.op("Add", [tape.op("Mul", [sequence_of, tape.op("Mul", [longest, const(tape, [heads], np.int64)])]),
                                position_of])
    out_rows = tape.op("Add", [tape.op("Unsqueeze", [first_row, const(tape, [1], np.int64)]),
                               tape.op("Mul", [const(tape, np.arange(heads).reshape(1, heads), np.int64), longest])])
    return rows, bias, out_rows


def _split_source(query: ir.Value, key: ir.Value, value: ir.Value) -> ir.Value | None:
    """The [tokens, 3 * width] value that one Split cuts into ``query``, ``key`` and ``value`` of equal
    widths (fuse_sibling_linears' Q, K, V projection), else None: the heads are then gathered from it
    and the Split, left without readers, is removed after lowering."""
    split = query.producer()
    if split is None or split.op_type != "Split" or split.domain not in ("", "ai.onnx"):
        return None
    if list(split.outputs) != [query, key, value] or any(len(v.uses()) != 1 for v in split.outputs):
        return None
    source = split.inputs[0]
    if source.shape is None or len(source.shape) != 2 or split.attributes.get_int("axis", 0) not in (1, -1):
        return None
    widths = {v.shape[-1] if v.shape is not None else None for v in split.outputs}
    if len(widths) != 1 or not isinstance(source.shape[1], int) or 3 * next(iter(widths)) != source.shape[1]:
        return None
    return source


PACKED_MULTI_HEAD_ATTENTION = register(
    OpDef(
        name="PackedMultiHeadAttention",
        doc=__doc__,
        inputs=("query", "key", "value", "mask"),
        outputs=("output",),
        attributes={"num_heads": 0, "scale": 0.0, "causal": 0, "size_bias": 0},
        shape_rule=_shape,
        reference=_reference,
        decompose=_decompose,
    )
)
