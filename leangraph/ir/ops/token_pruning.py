"""leangraph::PruneTokens(x, query, key, sizes) -> (kept, kept_sizes): EViT's inattentive-token
fusion (Liang et al., 2022; see ../shared/PAPERS.md), per sequence of a padded batch.

``x`` is [batch, seq, width], ``query``/``key`` [batch, seq, heads * size] (the layer's attention
inputs), ``sizes`` [batch, seq] (original tokens per token; 0 = padding). In each sequence, the
first real token (CLS) attends to the real tokens: ``softmax(q_cls k^T * scale + log(size))``,
averaged over ``num_heads`` heads. The first ``protect`` real tokens are always kept; of the
others, the ``ceil(keep_rate * count)`` with the most CLS attention are kept as they are, and the
rest are fused into one token, their attention-weighted mean, whose size is the sum of theirs,
placed after the kept ones. Output left-aligned in the original order, zeros (size 0) after.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from leangraph.ir.ops._util import left_aligned, reduced_tokens_shape, token_tape
from leangraph.ir.registry import OpDef, register


def keep_count(candidates: int, keep_rate: float) -> int:
    return min(candidates, math.ceil(keep_rate * candidates - 1e-9))


def _reference(x, query, key, sizes, keep_rate=1.0, protect=1, num_heads=1, scale=0.0):
    batch, seq, width = x.shape
    size = query.shape[-1] // num_heads
    scale = scale or 1.0 / math.sqrt(size)
    rows, row_sizes = [], []
    for b in range(batch):
        real = np.flatnonzero(sizes[b] > 0)
        if len(real) == 0:
            rows.append(np.zeros((0, width), x.dtype))
            row_sizes.append(np.zeros(0, sizes.dtype))
            continue
        q = query[b, real[0]].reshape(num_heads, 1, size)
        k = key[b, real].reshape(len(real), num_heads, size).transpose(1, 2, 0)
        scores = (q @ k)[:, 0, :] * np.asarray(scale, x.dtype) + np.log(sizes[b, real]).astype(x.dtype)
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        attention = (weights / weights.sum(axis=-1, keepdims=True)).mean(axis=0)  # [real]
        candidates = np.arange(protect, len(real))
        keep = keep_count(len(candidates), keep_rate)
        order = candidates[np.argsort(-attention[candidates], kind="stable")]
        kept = np.sort(np.concatenate([np.arange(min(protect, len(real))), order[:keep]])).astype(int)
        pruned = order[keep:]
        out, out_sizes = [x[b, real[kept]]], [sizes[b, real[kept]]]
        if len(pruned):
            a = attention[pruned].astype(x.dtype)
            out.append(((a[:, None] * x[b, real[pruned]]).sum(0) / a.sum())[None])
            out_sizes.append(np.array([sizes[b, real[pruned]].sum()], sizes.dtype))
        rows.append(np.concatenate(out).astype(x.dtype))
        row_sizes.append(np.concatenate(out_sizes))
    return left_aligned(rows, row_sizes, x, sizes)


def _shape(inputs, attrs):
    return reduced_tokens_shape(inputs[0], inputs[3])


def _decompose(tape, inputs, attrs):
    """Over the [batch, seq] grid: the CLS query gathered (the first real position), its attention
    to every key ([batch, heads, 1, seq] product, log sizes added, softmax, mean over heads), each
    candidate's rank by attention (TopK over the sequence), the pruned ones' attention-weighted sum
    as one more row per sequence, and the kept rows, that row, or a zero row gathered per output slot."""
    x, query, key, sizes = inputs
    dtype = x.dtype.numpy()
    i64 = int(ir.DataType.INT64)
    protect, heads = attrs["protect"], attrs["num_heads"]

    c, op, valid, valid_i, rank = token_tape(tape, sizes)
    batch, seq = op("Shape", x, start=0, end=1), op("Shape", x, start=1, end=2)
    sequence = op("Unsqueeze", op("Range", c(0), op("Squeeze", batch, c([0])), c(1)), c([1]))  # [b, 1]
    # The CLS row: each sequence's first real position, read from the query rows and one zero row
    # (a column of ones after the grid gives ArgMax a non-empty axis when seq is 0).
    first = op("ArgMax", op("Concat", valid_i, op("Expand", c([[1]]), op("Concat", batch, c([1]), axis=0)), axis=1),
               axis=1, keepdims=1)  # [b, 1]
    query_width = op("Shape", query, start=2)
    query_rows = op("Concat", op("Reshape", query, op("Concat", c([-1]), query_width, axis=0)),
                    op("ConstantOfShape", op("Concat", c([1]), query_width, axis=0),
                       value=ir.tensor(np.zeros(1, dtype))), axis=0)
    cls_rows = op("Gather", query_rows, op("Reshape", op("Min", op("Add", op("Mul", sequence, seq), first),
                                                         op("Mul", batch, seq)), c([-1])), axis=0)  # [b, w]
    head_size = op("Div", query_width, c([heads]))
    q_cls = op("Reshape", cls_rows, op("Concat", batch, c([heads, 1]), head_size, axis=0), allowzero=1)
    k = op("Transpose", op("Reshape", key, op("Concat", op("Shape", key, start=0, end=2), c([heads]), head_size,
                                              axis=0), allowzero=1), perm=[0, 2, 1, 3])
    scale = c(attrs["scale"], dtype) if attrs["scale"] else op(
        "Reciprocal", op("Sqrt", op("Cast", head_size, to=int(x.dtype))))
    scores = op("Mul", op("MatMul", q_cls, op("Transpose", k, perm=[0, 1, 3, 2])), scale)  # [b, h, 1, s]
    log_sizes = op("Log", op("Cast", sizes, to=int(x.dtype)))
    scores = op("Add", scores, op("Unsqueeze", log_sizes, c([1, 2])))
    attention = op("Mul", op("ReduceSum", op("Softmax", scores, axis=-1), c([1, 2]), keepdims=0),
                   c(1.0 / heads, dtype))  # [b, s]: mean over heads
    # A batch of empty sequences: softmax over -inf only is NaN; no attention is read then.
    attention = op("Where", valid, attention, c(0, dtype))

    candidate = op("And", valid, op("GreaterOrEqual", rank, c(protect)))
    neg_inf = c(-np.inf, dtype)
    _, order = tape.op_multi_out("TopK", [op("Where", candidate, attention, neg_inf), seq],
                                 {"axis": 1, "largest": 1, "sorted": 1}, num_outputs=2)
    positions = op("Range", c(0), op("Squeeze", seq, c([0])), c(1))
    grid_positions = op("Expand", op("Unsqueeze", positions, c([0])), op("Shape", valid))
    attention_rank = op("ScatterElements", op("Mul", grid_positions, c(0)), order, grid_positions, axis=1)
    count = op("ReduceSum", op("Cast", candidate, to=i64), c([1]), keepdims=1)
    keep = op("Min", count, op("Cast", op("Ceil", op("Sub", op("Mul", op("Cast", count, to=int(ir.DataType.DOUBLE)),
                                                            c(attrs["keep_rate"], np.float64)),
                                                  c(1e-9, np.float64))), to=i64))
    kept = op("And", valid, op("Not", op("And", candidate, op("GreaterOrEqual", attention_rank, keep))))
    pruned = op("And", candidate, op("Not", kept))

    weight = op("Mul", attention, op("Cast", pruned, to=int(x.dtype)))  # [b, s]
    weight_sum = op("ReduceSum", weight, c([1]), keepdims=1)  # [b, 1]
    fused = op("Div", op("ReduceSum", op("Mul", x, op("Unsqueeze", weight, c([2]))), c([1]), keepdims=0),
               op("Max", weight_sum, c(1e-30, dtype)))  # [b, w]
    fused_size = op("ReduceSum", op("Mul", sizes, op("Cast", pruned, to=int(sizes.dtype))), c([1]), keepdims=1)
    has_fused = op("Cast", op("Greater", op("ReduceSum", op("Cast", pruned, to=i64), c([1]), keepdims=1), c(0)),
                   to=i64)  # [b, 1]

    kept_count = op("ReduceSum", op("Cast", kept, to=i64), c([1]), keepdims=1)
    lengths = op("Add", kept_count, has_fused)
    longest = op("Max", op("ReduceMax", lengths, keepdims=0), c(0))
    slot_key = op("Cast", op("Where", kept, grid_positions, op("Add", grid_positions, seq)), to=int(ir.DataType.DOUBLE))
    _, slots = tape.op_multi_out("TopK", [slot_key, op("Reshape", longest, c([1]))],
                                 {"axis": 1, "largest": 0, "sorted": 1}, num_outputs=2)
    # Source rows: the b * s grid's rows, then one fused row per sequence, then a zero row.
    rows_total = op("Mul", batch, seq)
    slot = op("Unsqueeze", op("Range", c(0), longest, c(1)), c([0]))  # [1, n']
    source = op("Where", op("Less", slot, kept_count), op("Add", op("Mul", sequence, seq), slots),
                op("Where", op("And", op("Equal", slot, kept_count), op("Greater", has_fused, c(0))),
                   op("Add", rows_total, sequence), op("Add", rows_total, batch)))
    width = op("Shape", x, start=2)
    zero_row = op("ConstantOfShape", op("Concat", c([1]), width, axis=0), value=ir.tensor(np.zeros(1, dtype)))
    table = op("Concat", op("Reshape", x, op("Concat", c([-1]), width, axis=0)), fused, zero_row, axis=0)
    size_table = op("Concat", op("Reshape", sizes, c([-1])), op("Reshape", fused_size, c([-1])),
                    c(np.zeros(1), sizes.dtype.numpy()), axis=0)
    flat_source = op("Reshape", source, c([-1]))
    out_grid = op("Concat", batch, op("Reshape", longest, c([1])), axis=0)
    kept_x = op("Reshape", op("Gather", table, flat_source, axis=0), op("Concat", out_grid, width, axis=0), allowzero=1)
    kept_sizes = op("Reshape", op("Gather", size_table, flat_source, axis=0), out_grid, allowzero=1)
    kept_x.dtype, kept_sizes.dtype = x.dtype, sizes.dtype
    return [kept_x, kept_sizes]


PRUNE_TOKENS = register(
    OpDef(
        name="PruneTokens",
        doc=__doc__,
        inputs=("x", "query", "key", "sizes"),
        outputs=("kept", "kept_sizes"),
        attributes={"keep_rate": 1.0, "protect": 1, "num_heads": 1, "scale": 0.0},
        shape_rule=_shape,
        reference=_reference,
        decompose=_decompose,
    )
)
