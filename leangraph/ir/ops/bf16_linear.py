"""leangraph::Bf16Linear(a, weight, bias?) -> y: a linear layer computed in bfloat16.

``weight`` is bfloat16 [K, N]; ``a`` (float32 [..., K]) is rounded to bfloat16 (to nearest, ties
to even), the product accumulated in float32 and rounded to bfloat16, as a bfloat16 GEMM with
bfloat16 output gives it (oneDNN's through torch.mm on CPUs with AVX-512 BF16 or AMX); then, in
float32, ``y = activation(product + bias)``. Lossy: written by the mixed-precision pass
(passes/quantization) where a backend has a fast bfloat16 GEMM and the layer's sensitivity allows it.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

from leangraph.ir.ops.matmul_bias_act import bias_activation, bias_activation_onnx, linear_shape
from leangraph.ir.registry import OpDef, register

BFLOAT16 = ml_dtypes.bfloat16


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(BFLOAT16)


def _reference(a, weight, bias=None, activation="none"):
    product = to_bfloat16(a).astype(np.float32) @ weight.astype(np.float32)
    return (bias_activation(to_bfloat16(product).astype(np.float32), bias, activation, a.dtype),)


def _decompose(tape, inputs, attrs):
    """ONNX: the roundings as Casts through bfloat16 around a float MatMul (exact emulation, not
    fast: no backend here offers bfloat16 on ONNX Runtime)."""
    a, weight = inputs[:2]
    bias = inputs[2] if len(inputs) > 2 else None
    bf16, f32 = {"to": int(ir.DataType.BFLOAT16)}, {"to": int(ir.DataType.FLOAT)}
    rounded = tape.op("Cast", [tape.op("Cast", [a], bf16)], f32)
    product = tape.op("MatMul", [rounded, tape.op("Cast", [weight], f32)])
    y = tape.op("Cast", [tape.op("Cast", [product], bf16)], f32)
    return [bias_activation_onnx(tape, y, bias, attrs, np.float32)]


BF16_LINEAR = register(
    OpDef(
        name="Bf16Linear",
        doc=__doc__,
        inputs=("a", "weight", "bias?"),
        outputs=("y",),
        attributes={"activation": "none"},
        shape_rule=linear_shape(1),
        reference=_reference,
        decompose=_decompose,
    )
)
