"""Small helpers shared by the op definitions: scalar constants, broadcasting of shape-rule dims."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from leangraph.ir.registry import Dim


def const(tape: ir.tape.Tape, value, dtype=np.float32) -> ir.Value:
    """A Constant node holding ``value`` (a scalar or array) in ``dtype``."""
    return tape.op("Constant", [], {"value": ir.tensor(np.asarray(value, dtype=dtype))})


def broadcast_dims(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """Numpy broadcasting of two shapes whose dims may be symbols or unknown (None)."""
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + tuple(a)
    b = (1,) * (rank - len(b)) + tuple(b)
    out: list[Dim] = []
    for x, y in zip(a, b):
        if x == 1:
            out.append(y)
        elif y == 1 or x == y:
            out.append(x)
        elif isinstance(x, int) and isinstance(y, int):
            raise ValueError(f"shapes {a} and {b} do not broadcast")
        else:
            out.append(x if isinstance(x, int) else y if isinstance(y, int) else None)
    return tuple(out)


def matmul_dims(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """Shape of numpy/ONNX MatMul of ranks >= 2."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("matmul shape rule expects rank >= 2 operands")
    batch = broadcast_dims(a[:-2], b[:-2])
    return (*batch, a[-2], b[-1])


def left_aligned(rows, row_sizes, x: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence token rows and sizes of different lengths as one batch, left-aligned, zeros
    (size 0) after: the outputs of the token-reducing ops (MergeTokens, PruneTokens)."""
    longest = max((len(s) for s in row_sizes), default=0)
    out = np.zeros((x.shape[0], longest, x.shape[2]), x.dtype)
    out_sizes = np.zeros((x.shape[0], longest), sizes.dtype)
    for b, (r, s) in enumerate(zip(rows, row_sizes)):
        out[b, :len(s)], out_sizes[b, :len(s)] = r, s
    return out, out_sizes


def reduced_tokens_shape(x, sizes) -> list:
    """The shape rule of a token-reducing op: [batch, fewer tokens, width] and their [batch, fewer] sizes."""
    from leangraph.ir.registry import TensorInfo

    shape = None if x.shape is None else (x.shape[0], None, x.shape[2])
    return [TensorInfo(x.dtype, shape), TensorInfo(sizes.dtype, None if shape is None else shape[:2])]


def token_tape(tape: ir.tape.Tape, sizes: ir.Value):
    """Shorthands for the token-reducing ops' decompositions: ``c(value, dtype)`` a constant,
    ``op(name, *inputs, **attributes)`` a node, and from the [batch, seq] sizes: ``valid`` (bool),
    ``valid_i`` (int64) and ``rank`` (each real token's index among its sequence's real ones)."""
    def c(value, dt=np.int64):
        return const(tape, value, dt)

    def op(name, *args, **kwargs):
        return tape.op(name, list(args), kwargs or None)

    valid = op("Greater", sizes, c(0, sizes.dtype.numpy()))
    valid_i = op("Cast", valid, to=int(ir.DataType.INT64))
    rank = op("Sub", op("CumSum", valid_i, c(1)), c(1))
    return c, op, valid, valid_i, rank
