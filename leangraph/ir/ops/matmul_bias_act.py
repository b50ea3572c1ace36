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
    y = a @ b
    if bias is not None:
        y = y + bias
    return (activations.NUMPY[_activation({"activation": activation})](y).astype(a.dtype),)


def _decompose(tape, inputs, attrs):
    a, b = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    y = tape.op("MatMul", [a, b])
    if bias is not None:
        y = tape.op("Add", [y, bias])
    return [activations.to_onnx(tape, y, _activation(attrs), a.dtype.numpy())]


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
