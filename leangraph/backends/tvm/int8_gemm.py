"""leangraph::DynamicQuantLinear as TIR of our own: an int8 GEMM micro-kernel for AVX2 without VNNI.

Two PrimFuncs per layer shape, compiled by TVM's LLVM backend into the model's library:

- :func:`quantize_rows` finds the activations' range (8-lane min/max over row chunks in parallel)
  and writes them as 7-bit unsigned values, rows padded to a multiple of :data:`ROWS` (the padding
  rows are the zero point; their products are never stored), plus (scale, zero point);
- :func:`gemm` runs the micro-kernel: per 16-column weight panel (the parallel loop) and per block of
  :data:`ROWS` rows, 2 x ROWS int32x8 accumulators stay in registers while K is walked 8 at a time.
  Each step broadcasts 4 activation bytes, multiplies them with 32 weight bytes by ``vpmaddubsw``
  (u8 x s8 -> pairs summed in int16), adds the int16 results of two such steps (k..k+3 and k+4..k+7)
  and only then widens with ``vpmaddwd`` by ones into int32. The epilogue subtracts the zero point's
  share (``zero * column sums of W``) and scales to float with the bias added.

Why 7 x 7 bits: ``vpmaddubsw`` saturates at 32767. With 7-bit activations (0..127) and 7-bit weights
([-63, 63]) one pair sum is at most 2 * 127 * 63 = 16002, so two of them add in int16 without
overflow: 3 multiply-port instructions per 64 multiply-adds instead of the 4 that ONNX Runtime's
and fbgemm's AVX2 kernels issue (they widen after every ``vpmaddubsw``). The result equals the exact
integer product of the quantized operands (tests/backends/test_tvm_int8_gemm.py). Measured here it
is about as fast as those kernels, not faster (the kernel table times all three per layer shape).

The accumulators live in memory from ``tvm_stack_alloca``: TVM 0.27 lowers every ``alloc_buffer``,
however small, to ``TVMBackendAllocWorkspace``, a pointer LLVM cannot prove distinct from the
operands, so the accumulators were stored and the broadcasts reloaded on every step; a stack slot is
promoted to registers (512 x 384 x 1536 with the quantization, interleaved medians: 2.59 vs 3.46 ms
on 2 threads, 3.71 vs 6.15 ms on 1). Blocking rows for L2 (16 blocks x 4 panels per task) measured
no faster at MiniLM's shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from tvm.script import tirx as T

ROWS = 4
"""Rows per micro-kernel block: 8 accumulators + 4 weight vectors + 2 broadcasts fill the 16 ymm
registers (2, 3 and 6 measured no faster)."""

_RANGE_CHUNKS = 8
"""Row chunks the activations' min/max is found over in parallel."""

ACTIVATION_BITS = WEIGHT_BITS = 7
_ACTIVATION_MAX = 2**ACTIVATION_BITS - 1


def applies(k: int, n: int, weight: np.ndarray | None = None) -> bool:
    """Whether the kernel computes a [k, n] layer: K in steps of 8, N in panels of 16, and (given
    the int8 weight) every weight within 7 bits."""
    if not (k % 8 == 0 and n % 16 == 0 and k > 0 and n > 0):
        return False
    return weight is None or int(np.abs(weight.astype(np.int16)).max(initial=0)) <= 2 ** (WEIGHT_BITS - 1) - 1


def padded_rows(rows):
    """Rows of the quantized activations (an int or a TIR expression)."""
    return (rows + ROWS - 1) // ROWS * ROWS


def pack_weight(weight: np.ndarray) -> np.ndarray:
    """int8 [K, N] -> [N/16, K/8, 4, 32]: per panel and 8-step of K, the four 32-byte vectors the
    micro-kernel multiplies: (columns 0-7, k 0-3), (columns 8-15, k 0-3), (columns 0-7, k 4-7),
    (columns 8-15, k 4-7), each column's 4 k values adjacent (``vpmaddubsw`` pairs)."""
    k, n = weight.shape
    blocks = weight.reshape(k // 8, 2, 4, n // 16, 2, 8)  # k-step, k half, k in half, panel, column half, column
    return np.ascontiguousarray(blocks.transpose(3, 0, 1, 4, 5, 2).reshape(n // 16, k // 8, 4, 32))


def gemm_constants(weight: np.ndarray, weight_scale: np.ndarray, bias: np.ndarray | None) -> list[np.ndarray]:
    """The constant operands of :func:`gemm` after ``a`` and params: packed weight, weight scale,
    column sums (the zero point's share), bias (zeros when the layer has none)."""
    n = weight.shape[1]
    return [pack_weight(weight), weight_scale.astype(np.float32), weight.astype(np.int32).sum(axis=0, dtype=np.int32),
            np.zeros(n, np.float32) if bias is None else bias.astype(np.float32)]


def quantize_rows(k: int):
    """PrimFunc (x float32 [M, k]) -> (a uint8 [padded M, k], params float32 [scale, zero point]):
    leangraph::DynamicQuantLinear's per-tensor asymmetric quantization to 7 bits."""
    levels = float(_ACTIVATION_MAX)

    @T.prim_func(s_tir=True)
    def quantize(x_handle: T.handle, a_handle: T.handle, params_handle: T.handle):
        T.func_attr({"tir.noalias": True, "op_pattern": 8})
        rows = T.int64()
        padded = T.int64()
        X = T.match_buffer(x_handle, (rows, k), "float32")
        A = T.match_buffer(a_handle, (padded, k), "uint8")
        params = T.match_buffer(params_handle, (2,), "float32")
        with T.sblock("root"):
            partial = T.alloc_buffer((_RANGE_CHUNKS * 2,), "float32x8")  # per chunk of rows: lane min, max
            bounds = T.alloc_buffer((2,), "float32", scope="local")
            for chunk in T.parallel(_RANGE_CHUNKS):
                range_slot: T.let = T.tvm_stack_alloca("shape", 8)
                lanes = T.decl_buffer((2,), "float32x8", data=range_slot)
                lanes[0] = T.broadcast(T.float32(0), 8)
                lanes[1] = T.broadcast(T.float32(0), 8)
                for i in range(chunk * rows // _RANGE_CHUNKS, (chunk + 1) * rows // _RANGE_CHUNKS):
                    for k8 in range(k // 8):
                        lanes[0] = T.min(lanes[0], X[i, T.ramp(k8 * 8, 1, 8)])
                        lanes[1] = T.max(lanes[1], X[i, T.ramp(k8 * 8, 1, 8)])
                partial[chunk * 2] = lanes[0]
                partial[chunk * 2 + 1] = lanes[1]
            bounds[0] = T.float32(0)
            bounds[1] = T.float32(0)
            for chunk in range(_RANGE_CHUNKS):
                for lane in T.unroll(8):
                    bounds[0] = T.min(bounds[0], T.Shuffle([partial[chunk * 2]], [lane]))
                    bounds[1] = T.max(bounds[1], T.Shuffle([partial[chunk * 2 + 1]], [lane]))
            params[0] = T.if_then_else(bounds[1] - bounds[0] > T.float32(0),
                                       (bounds[1] - bounds[0]) / T.float32(levels), T.float32(1))
            params[1] = T.nearbyint(-bounds[0] / params[0])
            inverse: T.let = T.float32(1) / params[0]
            zero: T.let = params[1]
            for i in T.parallel(padded):
                for k8 in range(k // 8):
                    A[i, T.ramp(k8 * 8, 1, 8)] = T.if_then_else(
                        i < rows,
                        T.Cast("uint8x8", T.max(T.min(
                            T.nearbyint(X[T.min(i, rows - 1), T.ramp(k8 * 8, 1, 8)] * T.broadcast(inverse, 8))
                            + T.broadcast(zero, 8), T.broadcast(T.float32(levels), 8)), T.broadcast(T.float32(0), 8))),
                        T.Cast("uint8x8", T.broadcast(zero, 8)))

    return quantize


def _pmaddubsw(a, b):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a, b, dtype="int16x16")


def _pmaddwd_ones(a):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a,
                                   T.broadcast(T.int16(1), 16), dtype="int32x8")


def _broadcast_4_bytes(A, row, col):
    return T.reinterpret(T.broadcast(T.reinterpret(A.vload([row, col], "uint8x4"), dtype="int32"), 8), dtype="uint8x32")


def gemm(k: int, n: int):
    """PrimFunc (a uint8 [padded M, k], params, packed weight, weight scale [n], column sums [n],
    bias [n]) -> y float32 [M, n]: ``(a - zero) @ W * scale * weight_scale + bias``."""
    steps, panels, rows_per_block = k // 8, n // 16, ROWS

    @T.prim_func(s_tir=True)
    def int8_gemm(a_handle: T.handle, params_handle: T.handle, w_handle: T.handle, scale_handle: T.handle,
                  sums_handle: T.handle, bias_handle: T.handle, y_handle: T.handle):
        T.func_attr({"tir.noalias": True, "op_pattern": 8})
        rows = T.int64()
        padded = T.int64()
        A = T.match_buffer(a_handle, (padded, k), "uint8")
        params = T.match_buffer(params_handle, (2,), "float32")
        W = T.match_buffer(w_handle, (panels, steps, 4, 32), "int8")
        weight_scale = T.match_buffer(scale_handle, (n,), "float32")
        sums = T.match_buffer(sums_handle, (n,), "int32")
        bias = T.match_buffer(bias_handle, (n,), "float32")
        Y = T.match_buffer(y_handle, (rows, n), "float32")
        with T.sblock("root"):
            for panel in T.parallel(panels):
                for block in range(padded // rows_per_block):
                    acc_slot: T.let = T.tvm_stack_alloca("shape", rows_per_block * 8)
                    acc = T.decl_buffer((rows_per_block * 2,), "int32x8", data=acc_slot)
                    for r in T.unroll(rows_per_block):
                        acc[r * 2] = T.broadcast(T.int32(0), 8)
                        acc[r * 2 + 1] = T.broadcast(T.int32(0), 8)
                    for step in range(steps):
                        for r in T.unroll(rows_per_block):
                            low = T.meta_var(_broadcast_4_bytes(A, block * rows_per_block + r, step * 8))
                            high = T.meta_var(_broadcast_4_bytes(A, block * rows_per_block + r, step * 8 + 4))
                            acc[r * 2] = acc[r * 2] + _pmaddwd_ones(
                                _pmaddubsw(low, W.vload([panel, step, 0, 0], "int8x32"))
                                + _pmaddubsw(high, W.vload([panel, step, 2, 0], "int8x32")))
                            acc[r * 2 + 1] = acc[r * 2 + 1] + _pmaddwd_ones(
                                _pmaddubsw(low, W.vload([panel, step, 1, 0], "int8x32"))
                                + _pmaddubsw(high, W.vload([panel, step, 3, 0], "int8x32")))
                    for r in T.unroll(rows_per_block):
                        if block * rows_per_block + r < rows:
                            for half in T.unroll(2):
                                columns = T.meta_var(T.ramp(panel * 16 + half * 8, 1, 8))
                                Y[block * rows_per_block + r, columns] = (
                                    T.Cast("float32x8", acc[r * 2 + half]
                                           - T.broadcast(T.Cast("int32", params[1]), 8) * sums[columns])
                                    * weight_scale[columns] * T.broadcast(params[0], 8) + bias[columns])

    return int8_gemm


@lru_cache(maxsize=None)
def standalone(k: int, n: int):
    """Both PrimFuncs of a [k, n] layer compiled on their own (functions ``quantize`` and ``gemm``),
    for the kernel timer and the tests; models get them inside their Relax module."""
    import tvm

    from leangraph.backends.tvm import host_target

    module = tvm.IRModule({"quantize": quantize_rows(k).with_attr("global_symbol", "quantize"),
                           "gemm": gemm(k, n).with_attr("global_symbol", "gemm")})
    return tvm.compile(module, target=host_target())


def linear(weight: np.ndarray, weight_scale: np.ndarray, bias: np.ndarray | None,
           rows: int) -> Callable[[np.ndarray], object]:
    """``x [rows, K] -> y [rows, N]`` (a TVM tensor, reused by the next call) through the standalone
    kernel, buffers allocated once."""
    import tvm

    k, n = weight.shape
    module = standalone(k, n)
    quantize, run_gemm = module["quantize"], module["gemm"]
    device = tvm.cpu()
    quantized = tvm.runtime.empty((padded_rows(rows), k), "uint8", device)
    params = tvm.runtime.empty((2,), "float32", device)
    constants = [tvm.runtime.tensor(c, device) for c in gemm_constants(weight, weight_scale, bias)]
    y = tvm.runtime.empty((rows, n), "float32", device)

    def call(x: np.ndarray):
        quantize(tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), device), quantized, params)
        run_gemm(quantized, params, *constants, y)
        return y

    return call
