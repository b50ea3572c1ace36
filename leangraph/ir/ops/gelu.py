"""leangraph::Gelu(x) -> y, with ``approximate`` = "none" (erf form) or "tanh".

Same semantics as ONNX Gelu-20, kept in our domain so graphs at older opsets and backends without
Gelu-20 can carry it; its decomposition is the erf (or tanh) formula.
"""

from __future__ import annotations

from leangraph.ir.ops import activations
from leangraph.ir.registry import OpDef, TensorInfo, register

_MODES = {"none": "gelu", "tanh": "gelu_tanh"}


def _activation(attrs) -> str:
    mode = attrs["approximate"]
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in _MODES:
        raise ValueError(f"Gelu approximate must be 'none' or 'tanh', got {mode!r}")
    return _MODES[mode]


def _shape(inputs, attrs):
    return [TensorInfo(inputs[0].dtype, inputs[0].shape)]


def _reference(x, approximate="none"):
    return (activations.NUMPY[_activation({"approximate": approximate})](x),)


def _decompose(tape, inputs, attrs):
    x = inputs[0]
    return [activations.to_onnx(tape, x, _activation(attrs), x.dtype.numpy())]


GELU = register(
    OpDef(
        name="Gelu",
        doc=__doc__,
        inputs=("x",),
        outputs=("y",),
        attributes={"approximate": "none"},
        shape_rule=_shape,
        reference=_reference,
        decompose=_decompose,
    )
)
