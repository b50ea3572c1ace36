"""Conditions shared by the fusion rules.

A fused op computes a fixed formula, so a rule may only fire when the graph computes that formula:
its constants must be the formula's constants, not merely close to them (a GELU written with
0.0447 is another function, and substituting exact GELU for it changes the outputs by far more
than round-off). Exporters write the irrational constants in float32 or compute them in float32
arithmetic (``1 / sqrt(2)`` vs ``sqrt(0.5)``), so those are accepted within a few float32 ulps;
the exactly representable ones (0.5, 1, 2, 3) must be exact. Values a fused op carries as an
attribute (epsilons, scales) are captured, not compared.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

ULPS = 4
"""How many float32 ulps an irrational constant may be from the float32 rounding of its value:
the spread of the ways exporters compute it (rounding once, or a few float32 operations)."""


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The array of a constant value (initializer, Constant output), else None. A graph input is
    never constant, even one with an initializer: the initializer is only its default, and the
    caller may pass another value."""
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    try:
        return np.asarray(value.const_value.numpy())
    except FileNotFoundError:  # external data that is not there
        return None


def scalar(value: ir.Value | None) -> float | None:
    """The value of a constant holding one number (any shape of size 1), else None."""
    array = constant(value)
    if array is None or array.size != 1 or array.dtype.kind not in "biuf":
        return None
    return float(array.reshape(-1)[0])


def is_exactly(value: ir.Value | None, expected: float) -> bool:
    """Whether ``value`` is a one-element constant equal to ``expected`` (0.5, 1, 2, 3: numbers
    every float format holds exactly, which an exporter writes exactly)."""
    got = scalar(value)
    return got is not None and got == expected


def is_near(value: ir.Value | None, expected: float, ulps: int = ULPS) -> bool:
    """Whether ``value`` is a one-element float constant within ``ulps`` float32 ulps of the
    float32 rounding of ``expected`` (an irrational constant such as sqrt(2) or sqrt(2/pi))."""
    got = scalar(value)
    if got is None:
        return False
    target = np.float32(expected)
    return abs(got - float(target)) <= ulps * float(np.spacing(np.abs(target)))


def fits_into(const: ir.Value | None, x: ir.Value | None) -> bool:
    """Whether the constant ``const``, broadcast against ``x``, leaves x's shape as it is: no more
    dims than x, and each dim 1 or x's (static) size. A rule that replaces ``x op const`` by an op
    producing x's shape needs this; ``x + c`` with c of shape [1, 1, 1, 1] and x of rank 3 has
    rank 4."""
    if const is None or const.const_value is None:
        return False
    dims = list(const.const_value.shape)
    if not dims:
        return True
    if x is None or x.shape is None or len(dims) > len(x.shape):
        return False
    for size, x_size in zip(reversed(dims), reversed(list(x.shape))):
        if size != 1 and not (isinstance(x_size, int) and x_size == size):
            return False
    return True


def single_use(value: ir.Value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


def keeps_dims(reduced: ir.Value) -> bool:
    """Whether the reduce op producing ``reduced`` keeps the reduced dims: its ``keepdims``, which
    defaults to 1 and which the TorchScript exporter leaves out at opsets below 18."""
    return reduced.producer().attributes.get_int("keepdims", 1) == 1


def rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def is_float32(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == ir.DataType.FLOAT


def last_dim(value: ir.Value | None) -> int | None:
    """The static size of ``value``'s last dim, else None."""
    if value is None or value.shape is None or not len(value.shape):
        return None
    size = value.shape[-1]
    return size if isinstance(size, int) else None


def row_vector(value: ir.Value | None, width: int | None, product_rank: int | None) -> np.ndarray | None:
    """The bias ``value`` added to a [..., width] product of rank ``product_rank``, as a [width]
    array, when it has shape [], [1], [width] or (rank >= 2) [1, width]: broadcasting it to [width]
    is exact and keeps the product's shape, and every fused kernel reads a [width] bias. Else None
    (a bias varying by row, or one that would add dims)."""
    array = constant(value)
    if array is None or width is None or product_rank is None or product_rank < 1:
        return None
    if array.shape in ((), (1,)):
        return np.broadcast_to(array.reshape(()), (width,)).copy()
    if array.shape == (width,) or (array.shape == (1, width) and product_rank >= 2):
        return array.reshape(width)
    return None


def as_row(op, value: ir.Value, row: np.ndarray) -> ir.Value:
    """In a rewrite: ``value`` itself when it already is the array ``row`` (same shape), else a
    Constant holding ``row`` (cleanup lifts it into an initializer)."""
    if value.const_value is not None and tuple(value.const_value.shape) == row.shape:
        return value
    return op.Constant(value=ir.tensor(row))
