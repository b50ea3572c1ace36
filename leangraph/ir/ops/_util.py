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
