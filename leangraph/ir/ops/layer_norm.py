"""leangraph::LayerNorm(x, scale, bias?) -> y: normalize over the dims from ``axis`` to the last,
then ``y = (x - mean) / sqrt(var + epsilon) * scale + bias`` (biased variance, as torch and ONNX).
"""

from __future__ import annotations

import numpy as np

from leangraph.ir.ops._util import const
from leangraph.ir.registry import OpDef, TensorInfo, register


def _axes(axis: int, rank: int | None) -> list[int]:
    if axis < 0:
        return list(range(axis, 0))
    if rank is None:
        raise ValueError("LayerNorm with a non-negative axis needs the input's rank")
    return list(range(axis, rank))


def _shape(inputs, attrs):
    return [TensorInfo(inputs[0].dtype, inputs[0].shape)]


def _reference(x, scale, bias=None, axis=-1, epsilon=1e-5):
    axes = tuple(_axes(axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=axes, keepdims=True)
    y = centered / np.sqrt(var + np.asarray(epsilon, x.dtype)) * scale
    if bias is not None:
        y = y + bias
    return (y.astype(x.dtype),)


def _decompose(tape, inputs, attrs):
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    rank = len(x.shape) if x.shape is not None else None
    dtype = x.dtype.numpy()
    axes = const(tape, _axes(attrs["axis"], rank), np.int64)
    mean = tape.op("ReduceMean", [x, axes], {"keepdims": 1})
    centered = tape.op("Sub", [x, mean])
    var = tape.op("ReduceMean", [tape.op("Mul", [centered, centered]), axes], {"keepdims": 1})
    std = tape.op("Sqrt", [tape.op("Add", [var, const(tape, attrs["epsilon"], dtype)])])
    y = tape.op("Mul", [tape.op("Div", [centered, std]), scale])
    if bias is not None:
        y = tape.op("Add", [y, bias])
    return [y]


LAYER_NORM = register(
    OpDef(
        name="LayerNorm",
        doc=__doc__,
        inputs=("x", "scale", "bias?"),
        outputs=("y",),
        attributes={"axis": -1, "epsilon": 1e-5},
        shape_rule=_shape,
        reference=_reference,
        decompose=_decompose,
    )
)
