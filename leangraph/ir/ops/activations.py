"""Elementwise activations shared by leangraph::Gelu and leangraph::MatMulBiasAct: each one's numpy
semantics and its expansion into standard ONNX ops."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from scipy import special

from leangraph.ir.ops._util import const

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu(x: np.ndarray) -> np.ndarray:
    return (0.5 * x * (1.0 + special.erf(x / np.asarray(math.sqrt(2.0), x.dtype)))).astype(x.dtype)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    inner = np.asarray(_SQRT_2_OVER_PI, x.dtype) * (x + np.asarray(0.044715, x.dtype) * x * x * x)
    return (0.5 * x * (1.0 + np.tanh(inner))).astype(x.dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return special.expit(x).astype(x.dtype)


NUMPY = {
    "none": lambda x: x,
    "relu": lambda x: np.maximum(x, np.zeros((), x.dtype)),
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "silu": lambda x: (x * _sigmoid(x)).astype(x.dtype),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
}


def to_onnx(tape: ir.tape.Tape, x: ir.Value, activation: str, dtype) -> ir.Value:
    """``activation(x)`` as standard ONNX ops (opset >= 13), in the element type ``dtype``."""
    if activation == "none":
        return x
    if activation == "relu":
        return tape.op("Relu", [x])
    if activation == "sigmoid":
        return tape.op("Sigmoid", [x])
    if activation == "tanh":
        return tape.op("Tanh", [x])
    if activation == "silu":
        return tape.op("Mul", [x, tape.op("Sigmoid", [x])])
    half_x = tape.op("Mul", [x, const(tape, 0.5, dtype)])
    if activation == "gelu":
        erf = tape.op("Erf", [tape.op("Div", [x, const(tape, math.sqrt(2.0), dtype)])])
        return tape.op("Mul", [half_x, tape.op("Add", [erf, const(tape, 1.0, dtype)])])
    if activation == "gelu_tanh":
        cube = tape.op("Mul", [tape.op("Mul", [x, x]), x])
        inner = tape.op("Add", [x, tape.op("Mul", [cube, const(tape, 0.044715, dtype)])])
        tanh = tape.op("Tanh", [tape.op("Mul", [inner, const(tape, _SQRT_2_OVER_PI, dtype)])])
        return tape.op("Mul", [half_x, tape.op("Add", [tanh, const(tape, 1.0, dtype)])])
    raise ValueError(f"unknown activation {activation!r}; known: {sorted(NUMPY)}")
