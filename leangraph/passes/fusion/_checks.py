"""Conditions shared by the fusion rules."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir


def scalar(value: ir.Value | None) -> float | None:
    """The value of a constant holding one number (any shape of size 1), else None."""
    if value is None or value.const_value is None or value.const_value.size != 1:
        return None
    return float(np.asarray(value.const_value.numpy()).reshape(-1)[0])


def is_scalar(value: ir.Value | None, expected: float, rel: float = 1e-3) -> bool:
    got = scalar(value)
    return got is not None and math.isclose(got, expected, rel_tol=rel, abs_tol=1e-12)


def single_use(value: ir.Value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


def rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def is_float32(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == ir.DataType.FLOAT
