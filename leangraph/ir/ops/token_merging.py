"""leangraph::MergeTokens(x, metric, sizes) -> (merged, merged_sizes): ToMe's bipartite soft
matching (Bolya et al., 2023; see ../shared/PAPERS.md), per sequence of a padded batch.

``x`` is [batch, seq, width], ``metric`` [batch, seq, heads * size] (the attention keys), ``sizes``
[batch, seq] (how many original tokens each token stands for; 0 = padding, never merged). In each
sequence, its real tokens (size > 0) in order, after the first ``protect`` ones (CLS: never merged,
never merged into), alternate between sources A and destinations B. A source's score is the best
cosine similarity of its metric (summed over the ``num_heads`` heads) with a destination's; the
``r + floor(ratio * real tokens)`` best-scoring sources (at most all of A) are merged into their
best destination: the destination becomes the size-weighted mean of itself and its sources, its
size their sum. The kept tokens are written left-aligned in their original order, the rest of the
``merged`` width (the most kept tokens of any sequence) is zeros with size 0.

Ties are broken towards the earlier token (ONNX's ArgMax and TopK order). The sizes are exact token
counts, so a size-weighted sum over the merged tokens is the sum over the original ones.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from leangraph.ir.ops._util import left_aligned, reduced_tokens_shape, token_tape
from leangraph.ir.registry import OpDef, register


def merge_count(real: int, protect: int, ratio: float, r: int) -> tuple[int, int]:
    """(sources, merged) in a sequence of ``real`` tokens: the size of A and how many of it merge."""
    rest = max(real - protect, 0)
    sources, destinations = (rest + 1) // 2, rest // 2
    if destinations == 0:
        return sources, 0
    return sources, min(r + math.floor(ratio * real), sources)


def _reference(x, metric, sizes, ratio=0.0, r=0, protect=1, num_heads=1):
    batch, seq, width = x.shape
    heads_summed = metric.reshape(batch, seq, num_heads, metric.shape[-1] // num_heads).sum(axis=2)
    norm = np.sqrt((heads_summed * heads_summed).sum(axis=-1, keepdims=True))
    unit = heads_summed / np.maximum(norm, np.asarray(1e-12, metric.dtype))
    rows, row_sizes = [], []
    for b in range(batch):
        real = np.flatnonzero(sizes[b] > 0)
        a, d = real[protect:][0::2], real[protect:][1::2]
        _, count = merge_count(len(real), protect, ratio, r)
        group = {int(p): [int(p)] for p in real}
        if count:
            scores = unit[b, a] @ unit[b, d].T
            best, target = scores.max(axis=1), scores.argmax(axis=1)
            for i in np.argsort(-best, kind="stable")[:count]:
                group[int(d[target[i]])] += group.pop(int(a[i]))
        kept = sorted(group)
        totals = np.array([sum(sizes[b, p] for p in group[k]) for k in kept], dtype=sizes.dtype)
        means = np.zeros((len(kept), width), x.dtype)
        for j, k in enumerate(kept):
            means[j] = sum(x[b, p] * sizes[b, p] for p in group[k]) / totals[j]
        rows.append(means)
        row_sizes.append(totals)
    return left_aligned(rows, row_sizes, x, sizes)


def _shape(inputs, attrs):
    return reduced_tokens_shape(inputs[0], inputs[2])


def _decompose(tape, inputs, attrs):
    """Over every position of the [batch, seq] grid at once (per-sequence counts differ, so no slice
    by parity): roles from the rank of each real token, scores of all sources against all
    destinations (one [batch, seq, seq] product, the rest -inf), each source's rank by its best
    score (TopK over the sequence), the merged positions, the size-weighted rows summed into their
    group's row (ScatterND with add over [batch * seq] rows, opset 16), and the kept rows gathered
    left-aligned."""
    x, metric, sizes = inputs
    dtype = x.dtype.numpy()
    i64 = int(ir.DataType.INT64)
    protect, heads = attrs["protect"], attrs["num_heads"]

    c, op, valid, valid_i, rank = token_tape(tape, sizes)
    real = op("ReduceSum", valid_i, c([1]), keepdims=1)  # [b, 1]
    after = op("Sub", rank, c(protect))
    eligible = op("And", valid, op("GreaterOrEqual", after, c(0)))
    odd = op("Cast", op("Mod", after, c(2)), to=int(ir.DataType.BOOL))
    is_source = op("And", eligible, op("Not", odd))
    is_destination = op("And", eligible, odd)

    grid = op("Shape", metric, start=0, end=2)
    # not -1 for the head size: a Reshape cannot infer it with 0 tokens
    head_size = op("Div", op("Shape", metric, start=2), c([heads]))
    by_head = op("Reshape", metric, op("Concat", grid, c([heads]), head_size, axis=0), allowzero=1)
    summed = op("ReduceSum", by_head, c([2]), keepdims=0)  # [b, s, d]
    norm = op("Sqrt", op("ReduceSum", op("Mul", summed, summed), c([-1]), keepdims=1))
    unit = op("Div", summed, op("Max", norm, c(1e-12, dtype)))
    scores = op("MatMul", unit, op("Transpose", unit, perm=[0, 2, 1]))  # [b, s, s]
    pair = op("And", op("Unsqueeze", is_source, c([2])), op("Unsqueeze", is_destination, c([1])))
    neg_inf = c(-np.inf, dtype)
    scores = op("Where", pair, scores, neg_inf)
    # one more column of -inf: ArgMax needs a non-empty axis (a batch of empty sequences)
    scores = op("Concat", scores, op("Expand", neg_inf, op("Concat", grid, c([1]), axis=0)), axis=2)
    target = op("ArgMax", scores, axis=2, keepdims=1)  # [b, s, 1]: each source's best destination
    best = op("Squeeze", op("GatherElements", scores, target, axis=2), c([2]))
    key = op("Where", is_source, best, neg_inf)
    seq = op("Shape", x, start=1, end=2)
    _, order = tape.op_multi_out("TopK", [key, seq], {"axis": 1, "largest": 1, "sorted": 1}, num_outputs=2)
    positions = op("Range", c(0), op("Squeeze", seq, c([0])), c(1))  # [s]
    grid_positions = op("Expand", op("Unsqueeze", positions, c([0])), op("Shape", key))
    score_rank = op("ScatterElements", op("Mul", grid_positions, c(0)), order, grid_positions, axis=1)

    sources = op("ReduceSum", op("Cast", is_source, to=i64), c([1]), keepdims=1)
    destinations = op("ReduceSum", op("Cast", is_destination, to=i64), c([1]), keepdims=1)
    wanted = op("Add", c(attrs["r"]), op("Cast", op("Floor", op("Mul", op("Cast", real, to=int(ir.DataType.DOUBLE)),
                                                                  c(attrs["ratio"], np.float64))), to=i64))
    count = op("Where", op("Greater", destinations, c(0)), op("Min", wanted, sources), c(0))  # [b, 1]
    merged = op("And", is_source, op("Less", score_rank, count))
    kept = op("And", valid, op("Not", merged))

    # Row of the [b * s] grid each position's weighted row is added to: its destination if merged,
    # itself otherwise (padding adds zeros to itself).
    batch = op("Shape", x, start=0, end=1)
    row_base = op("Mul", op("Unsqueeze", op("Range", c(0), op("Squeeze", batch, c([0])), c(1)), c([1])), seq)
    group = op("Add", row_base, op("Where", merged, op("Squeeze", target, c([2])), grid_positions))
    flat_index = op("Reshape", group, c([-1, 1]))
    weighted = op("Mul", x, op("Unsqueeze", op("Cast", sizes, to=int(x.dtype)), c([2])))
    width = op("Shape", x, start=2)
    rows = op("Reshape", weighted, op("Concat", c([-1]), width, axis=0))
    summed_rows = op("ScatterND", op("Mul", rows, c(0, dtype)), flat_index, rows, reduction="add")
    flat_sizes = op("Reshape", sizes, c([-1]))
    summed_sizes = op("ScatterND", op("Mul", flat_sizes, c(0, sizes.dtype.numpy())), flat_index, flat_sizes,
                      reduction="add")

    # Kept positions left-aligned: the j-th kept position of each sequence fills slot j.
    kept_count = op("ReduceSum", op("Cast", kept, to=i64), c([1]), keepdims=1)
    longest = op("Max", op("ReduceMax", kept_count, keepdims=0), c(0))
    slot_key = op("Cast", op("Where", kept, grid_positions, op("Add", grid_positions, seq)), to=int(ir.DataType.DOUBLE))
    _, slots = tape.op_multi_out("TopK", [slot_key, op("Reshape", longest, c([1]))],
                                 {"axis": 1, "largest": 0, "sorted": 1}, num_outputs=2)
    source_rows = op("Reshape", op("Add", row_base, slots), c([-1]))
    out_rows = op("Gather", summed_rows, source_rows, axis=0)
    out_sizes = op("Gather", summed_sizes, source_rows, axis=0)
    # A slot past a sequence's kept tokens reads a merged or padded position, whose sums are zero.
    means = op("Div", out_rows, op("Unsqueeze", op("Max", op("Cast", out_sizes, to=int(x.dtype)), c(1e-30, dtype)),
                                   c([1])))
    out_grid = op("Concat", batch, op("Reshape", longest, c([1])), axis=0)
    # allowzero: with no kept token the target's 0 is a size, not "copy the input's dim"
    merged_x = op("Reshape", means, op("Concat", out_grid, width, axis=0), allowzero=1)
    merged_sizes = op("Reshape", out_sizes, out_grid, allowzero=1)
    for value, like in ((merged_x, x), (merged_sizes, sizes)):
        value.dtype = like.dtype
    return [merged_x, merged_sizes]


MERGE_TOKENS = register(
    OpDef(
        name="MergeTokens",
        doc=__doc__,
        inputs=("x", "metric", "sizes"),
        outputs=("merged", "merged_sizes"),
        attributes={"ratio": 0.0, "r": 0, "protect": 1, "num_heads": 1},
        shape_rule=_shape,
        reference=_reference,
        decompose=_decompose,
    )
)
