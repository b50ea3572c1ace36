"""leangraph::RMSNorm(x, scale) -> y = x / sqrt(mean(x^2 over the last dims) + epsilon) * scale,
as Llama-style decoders (and T5) normalize. ``axis`` is the first normalized dim (negative).
"""

from __future__ import annotations

import numpy as np

from leangraph.ir.ops._util import const
from leangraph.ir.registry import OpDef, TensorInfo, register


def _shape(inputs, attrs):
    return [TensorInfo(inputs[0].dtype, inputs[0].shape)]


def _axes(axis: int) -> list[int]:
    if axis >= 0:
        raise ValueError("RMSNorm axis must be negative (counted from the last dim)")
    return list(range(axis, 0))


def _reference(x, scale, axis=-1, epsilon=1e-6):
    axes = tuple(_axes(axis))
    mean_square = (x * x).mean(axis=axes, keepdims=True)
    return ((x / np.sqrt(mean_square + np.asarray(epsilon, x.dtype))) * scale).astype(x.dtype),


def _decompose(tape, inputs, attrs):
    x, scale = inputs
    dtype = x.dtype.numpy()
    axes = const(tape, _axes(attrs["axis"]), np.int64)
    mean_square = tape.op("ReduceMean", [tape.op("Mul", [x, x]), axes], {"keepdims": 1})
    rms = tape.op("Sqrt", [tape.op("Add", [mean_square, const(tape, attrs["epsilon"], dtype)])])
    return [tape.op("Mul", [tape.op("Div", [x, rms]), scale])]


RMS_NORM = register(
    OpDef(
        name="RMSNorm",
        doc=__doc__,
        inputs=("x", "scale"),
        outputs=("y",),
        attributes={"axis": -1, "epsilon": 1e-6},
        shape_rule=_shape,
        reference=_reference,
        decompose=_decompose,
    )
)
