"""leangraph::PackedMultiHeadAttention as TIR of our own: attention per sequence over packed tokens.

No padded layout at all (ByteTransformer's and FlashAttention's varlen kernels): the mask gives
each sequence's bounds in the packed rows (:func:`sequence_bounds`), and :func:`attention` runs one
task per (sequence, head) in parallel, over that sequence's own length L:

- the keys of the head are copied once, transposed and pre-scaled, into a workspace of
  [head size, L rounded up to :data:`LANES`] (zeros past L);
- per query row: the scores for :data:`LANES` keys at a time, accumulated over the head size in a
  register (broadcast query element x key vector); the row's max; ``exp`` of the shifted scores
  (a vectorized Cephes-style polynomial, :func:`_vector_exp`; padded lanes give 0) and their sum;
  then the value rows weighted by the scores, accumulated in registers across the head's value
  width, divided by the sum.

Work is L^2 per sequence instead of the batch's longest^2 for each, and nothing is written but the
workspace and the output. ``causal`` = 1 limits each query to the keys up to its own position in
the sequence. Accumulators live in ``tvm_stack_alloca`` slots for the reason int8_gemm.py gives.
MiniLM's attention (12 heads of 32), 94 STS-B batches on 2 threads: 32 ms, where ONNX Runtime
runs our padded decomposition in 85-104 ms.
"""

from __future__ import annotations

import math

from tvm.script import tirx as T

LANES = 16
"""float32 lanes per vector (one AVX-512 register; LLVM splits it in two on AVX2)."""

_VECTOR = f"float32x{LANES}"
_LOG2E = 1.4426950408889634
_LN2_HIGH, _LN2_LOW = 0.693359375, -2.12194440e-4  # ln 2 in two parts: r = x - n ln 2 stays exact
_EXP_POLYNOMIAL = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                   5.0000001201e-1)
_LOWEST = -3.0e38


def applies(query_width: int, key_width: int, value_width: int, heads: int) -> bool:
    """Whether the kernel computes these widths: head sizes in whole vectors."""
    return (heads > 0 and query_width == key_width and query_width % heads == 0 and value_width % heads == 0
            and (query_width // heads) % LANES == 0 and (value_width // heads) % LANES == 0)


def _splat(value: float):
    return T.broadcast(T.float32(value), LANES)


def _vector_exp(x):
    """exp of a float32 vector: x = n ln 2 + r with |r| <= ln 2 / 2, exp(r) by a degree-5 polynomial
    (Cephes expf, relative error ~1e-7), times 2^n built in the exponent bits. x is at most 0 here
    (scores minus their max); below -87 it is clamped (exp there is ~1e-38, as good as 0)."""
    x = T.max(x, _splat(-87.0))
    n = T.floor(x * _splat(_LOG2E) + _splat(0.5))
    r = x - n * _splat(_LN2_HIGH) - n * _splat(_LN2_LOW)
    p = _splat(_EXP_POLYNOMIAL[0])
    for coefficient in _EXP_POLYNOMIAL[1:]:
        p = p * r + _splat(coefficient)
    p = p * r * r + r + _splat(1.0)
    exponent = T.shift_left(T.Cast(f"int32x{LANES}", n) + T.broadcast(T.int32(127), LANES),
                            T.broadcast(T.int32(23), LANES))
    return p * T.reinterpret(exponent, dtype=_VECTOR)


def _reduce(vector, combine):
    lanes = [T.Shuffle([vector], [i]) for i in range(LANES)]
    while len(lanes) > 1:
        lanes = [combine(lanes[i], lanes[i + 1]) for i in range(0, len(lanes), 2)]
    return lanes[0]


def sequence_bounds(mask_dtype: str):
    """PrimFunc (mask [batch, seq]) -> bounds int64 [batch + 1]: where each sequence's valid tokens
    start in the packed rows (PackTokens' row-major order), and the total at the end."""

    @T.prim_func(s_tir=True)
    def bounds_of(mask_handle: T.handle, bounds_handle: T.handle):
        T.func_attr({"tir.noalias": True, "op_pattern": 8})
        batch = T.int64()
        seq = T.int64()
        mask = T.match_buffer(mask_handle, (batch, seq), mask_dtype)
        bounds = T.match_buffer(bounds_handle, (batch + 1,), "int64")
        with T.sblock("root"):
            bounds[0] = T.int64(0)
            for b in range(batch):
                bounds[b + 1] = bounds[b]
                for s in range(seq):
                    bounds[b + 1] = bounds[b + 1] + T.Cast("int64", mask[b, s] != T.Cast(mask_dtype, 0))

    return bounds_of


def attention(heads: int, head_size: int, value_size: int, scale: float, causal: bool):
    """PrimFunc (query [T, heads * head_size], key (same), value [T, heads * value_size], bounds
    [batch + 1]) -> out [T, heads * value_size]. ``scale`` 0: 1 / sqrt(head_size)."""
    scale = scale or 1.0 / math.sqrt(head_size)
    width, value_width = heads * head_size, heads * value_size
    value_vectors = value_size // LANES
    score, total = value_vectors, value_vectors + 1  # accumulator slots after the value ones

    def visible_keys(query, length):
        return query + 1 if causal else length

    @T.prim_func(s_tir=True)
    def packed_attention(q_handle: T.handle, k_handle: T.handle, v_handle: T.handle, bounds_handle: T.handle,
                         out_handle: T.handle):
        T.func_attr({"tir.noalias": True, "op_pattern": 8})
        tokens = T.int64()
        edges = T.int64()
        Q = T.match_buffer(q_handle, (tokens, width), "float32")
        K = T.match_buffer(k_handle, (tokens, width), "float32")
        V = T.match_buffer(v_handle, (tokens, value_width), "float32")
        bounds = T.match_buffer(bounds_handle, (edges,), "int64")
        Out = T.match_buffer(out_handle, (tokens, value_width), "float32")
        with T.sblock("root"):
            # Sequence s's region starts at its first token + (LANES - 1) * s: room for its rounding up.
            stride: T.let = tokens + (LANES - 1) * (edges - 1)
            keys_workspace = T.alloc_buffer((heads * stride * head_size,), "float32")
            scores_workspace = T.alloc_buffer((heads * stride,), "float32")
            for task in T.parallel((edges - 1) * heads):
                sequence: T.let = task // heads
                head: T.let = task % heads
                start: T.let = bounds[sequence]
                length: T.let = bounds[sequence + 1] - start
                span: T.let = (length + LANES - 1) // LANES * LANES
                region: T.let = head * stride + start + (LANES - 1) * sequence
                keys = T.decl_buffer((head_size * span,), "float32", data=keys_workspace.data,
                                     elem_offset=region * head_size)
                scores = T.decl_buffer((span,), "float32", data=scores_workspace.data, elem_offset=region)
                for j in range(span):
                    for d in range(head_size):
                        keys[d * span + j] = T.if_then_else(
                            j < length, K[start + T.min(j, length - 1), head * head_size + d] * T.float32(scale),
                            T.float32(0))
                for i in range(length):
                    visible: T.let = visible_keys(i, length)
                    slot: T.let = T.tvm_stack_alloca("shape", (value_vectors + 2) * LANES // 2)
                    acc = T.decl_buffer((value_vectors + 2,), _VECTOR, data=slot)
                    for block in range(span // LANES):
                        acc[score] = _splat(0.0)
                        for d in T.unroll(head_size):
                            acc[score] = acc[score] + T.broadcast(Q[start + i, head * head_size + d], LANES) * keys[
                                T.ramp(d * span + block * LANES, 1, LANES)]
                        scores[T.ramp(block * LANES, 1, LANES)] = T.Select(
                            T.ramp(block * LANES, 1, LANES) < T.broadcast(visible, LANES), acc[score], _splat(_LOWEST))
                    acc[score] = _splat(_LOWEST)
                    for block in range(span // LANES):
                        acc[score] = T.max(acc[score], scores[T.ramp(block * LANES, 1, LANES)])
                    peak: T.let = _reduce(acc[score], T.max)
                    acc[total] = _splat(0.0)
                    for block in range(span // LANES):
                        # past `visible` the scores are the lowest float: exp gives ~1e-38 there
                        scores[T.ramp(block * LANES, 1, LANES)] = _vector_exp(
                            scores[T.ramp(block * LANES, 1, LANES)] - T.broadcast(peak, LANES))
                        acc[total] = acc[total] + scores[T.ramp(block * LANES, 1, LANES)]
                    for c in T.unroll(value_vectors):
                        acc[c] = _splat(0.0)
                    for j in range(visible):
                        for c in T.unroll(value_vectors):
                            acc[c] = acc[c] + T.broadcast(scores[j], LANES) * V[
                                start + j, head * value_size + T.ramp(c * LANES, 1, LANES)]
                    inverse: T.let = T.float32(1) / _reduce(acc[total], lambda a, b: a + b)
                    for c in T.unroll(value_vectors):
                        Out[start + i, head * value_size + T.ramp(c * LANES, 1, LANES)] = acc[c] * T.broadcast(
                            inverse, LANES)

    return packed_attention
