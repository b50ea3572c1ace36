"""leangraph::LayerNorm(x, scale, bias?) -> y: normalize over the dims from ``axis`` to the last,
then ``y = (x - mean) / sqrt(var + epsilon) * scale + bias`` (biased variance, as torch and ONNX).
"""

from __future__ import annotations

import numpy as np

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
    """ONNX LayerNormalization (opset 17): one kernel in ONNX Runtime where the formula is six."""
    return [tape.op("LayerNormalization", [i for i in inputs if i is not None],
                    {"axis": attrs["axis"], "epsilon": float(attrs["epsilon"])})]


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
