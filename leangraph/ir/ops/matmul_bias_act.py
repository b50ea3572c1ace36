"""leangraph::MatMulBiasAct(a, b, bias?) -> y = activation(a @ b + bias).

``a @ b`` is ONNX MatMul (numpy broadcasting over batch dims); ``bias`` broadcasts against the
product (usually shape [N]); ``activation`` is one of none, relu, gelu, gelu_tanh, silu, sigmoid,
tanh. What a linear layer with its activation becomes after fusion.
"""

from __future__ import annotations

from leangraph.ir.ops import activations
from leangraph.ir.ops._util import broadcast_dims, matmul_dims
from leangraph.ir.registry import OpDef, TensorInfo, register


def _activation(attrs) -> str:
    name = attrs["activation"]
    name = name.decode() if isinstance(name, bytes) else name
    if name not in activations.NUMPY:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(activations.NUMPY)}")
    return name


def bias_activation(y, bias, activation: str, dtype):
    """numpy: ``activation(y + bias)`` in ``dtype``, the end of every linear op's reference."""
    if bias is not None:
        y = y + bias
    return activations.NUMPY[_activation({"activation": activation})](y).astype(dtype)


def bias_activation_onnx(tape, y, bias, attrs, dtype):
    """ONNX: ``activation(y + bias)``, the end of every linear op's decomposition."""
    if bias is not None:
        y = tape.op("Add", [y, bias])
    return activations.to_onnx(tape, y, _activation(attrs), dtype)


def linear_shape(weight_index: int):
    """The shape rule of a linear op whose [K, N] weight is input ``weight_index``: [..., N]."""

    def shape(inputs, attrs):
        a, weight = inputs[0], inputs[weight_index]
        if a.shape is None or weight.shape is None:
            return [TensorInfo(a.dtype, None)]
        return [TensorInfo(a.dtype, (*a.shape[:-1], weight.shape[-1]))]

    return shape


def _shape(inputs, attrs):
    a, b = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    if a.shape is None or b.shape is None:
        return [TensorInfo(a.dtype, None)]
    shape = matmul_dims(a.shape, b.shape)
    if bias is not None and bias.shape is not None:
        shape = broadcast_dims(shape, bias.shape)
    return [TensorInfo(a.dtype, shape)]


def _reference(a, b, bias=None, activation="none"):
    return (bias_activation(a @ b, bias, activation, a.dtype),)


def _decompose(tape, inputs, attrs):
    a, b = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    return [bias_activation_onnx(tape, tape.op("MatMul", [a, b]), bias, attrs, a.dtype.numpy())]


MATMUL_BIAS_ACT = register(
    OpDef(
        name="MatMulBiasAct",
        doc=__doc__,
        inputs=("a", "b", "bias?"),
        outputs=("y",),
        attributes={"activation": "none"},
        shape_rule=_shape,
        reference=_reference,
        decompose=_decompose,
    )
)
