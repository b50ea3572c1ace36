"""leangraph::DynamicQuantLinear(a, weight, weight_scale, bias?) -> y: an int8 linear layer.

``weight`` is int8 [K, N], quantized per output channel (symmetric: ``w ~= weight * weight_scale``,
``weight_scale`` float [N]). ``a`` (float [..., K]) is quantized per call, per tensor, to
``activation_bits`` unsigned bits (asymmetric over [min(a, 0), max(a, 0)], zero exactly
representable); the product is accumulated in int32 and scaled back:
``y = activation((a_q - zero) @ weight * a_scale * weight_scale + bias)``.

On AVX2 without VNNI the u8 x s8 kernels sum pairs of products in int16 (``vpmaddubsw``), which
saturates unless one side gives up a bit: 7-bit activations (``activation_bits`` = 7, fbgemm's
``reduce_range``) with 8-bit weights, or 8-bit activations with weights in [-63, 63] (ONNX Runtime's
MatMulInteger). With ``activation_bits`` = 8 the decomposition is ONNX's DynamicQuantizeLinear +
MatMulInteger, which ONNX Runtime fuses into one kernel (DynamicQuantizeMatMul).
Written by the mixed-precision quantization pass (passes/quantization).
"""

from __future__ import annotations

import numpy as np

from leangraph.ir.ops._util import const
from leangraph.ir.ops.matmul_bias_act import bias_activation, bias_activation_onnx, linear_shape
from leangraph.ir.registry import OpDef, register


def range_scale(low: float, high: float, bits: int) -> tuple[np.float32, float]:
    """(scale, zero point) of asymmetric quantization to ``bits`` unsigned bits over
    [min(low, 0), max(high, 0)] (zero exactly representable)."""
    levels = float(2**bits - 1)
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = np.float32((high - low) / levels) or np.float32(1.0)
    return scale, float(np.clip(np.round(-low / scale), 0, levels))


def quantize_activations(a: np.ndarray, bits: int) -> tuple[np.ndarray, float, float]:
    """(a_q, scale, zero point) of the per-tensor asymmetric quantization defined above."""
    scale, zero = range_scale(a.min(initial=0.0), a.max(initial=0.0), bits)
    return np.clip(np.round(a / scale) + zero, 0, float(2**bits - 1)), float(scale), zero


def quantize_weight(weight: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(int8 [K, N], float32 scale [N]): symmetric per output channel, to ``bits`` signed bits
    (8: [-127, 127]; 7: [-63, 63], for 8-bit activations on AVX2 without VNNI)."""
    levels = 2 ** (bits - 1) - 1
    peak = np.abs(weight).max(axis=0)
    scale = np.where(peak > 0, peak / levels, 1.0).astype(np.float32)
    return np.clip(np.round(weight / scale), -levels, levels).astype(np.int8), scale


def _reference(a, weight, weight_scale, bias=None, activation="none", activation_bits=7):
    q, scale, zero = quantize_activations(a, activation_bits)
    accumulated = (q.astype(np.int64) - int(zero)) @ weight.astype(np.int64)
    y = accumulated.astype(np.float64) * (scale * weight_scale.astype(np.float64))
    return (bias_activation(y, bias, activation, a.dtype),)


def _quantize_onnx(tape, a, bits: int):
    """(u8 values, scale, u8 zero point) of ``a`` in ONNX: DynamicQuantizeLinear for 8 bits (which
    ONNX Runtime fuses with the MatMulInteger after it), written out for fewer."""
    if bits == 8:
        return tape.op_multi_out("DynamicQuantizeLinear", [a], num_outputs=3)
    levels = float(2**bits - 1)
    zero_f = const(tape, 0.0)
    low = tape.op("Min", [tape.op("ReduceMin", [a], {"keepdims": 0}), zero_f])
    high = tape.op("Max", [tape.op("ReduceMax", [a], {"keepdims": 0}), zero_f])
    scale = tape.op("Div", [tape.op("Sub", [high, low]), const(tape, levels)])
    scale = tape.op("Where", [tape.op("Equal", [scale, zero_f]), const(tape, 1.0), scale])
    zero = tape.op("Clip", [tape.op("Round", [tape.op("Div", [tape.op("Neg", [low]), scale])]), zero_f,
                            const(tape, levels)])
    quantized = tape.op("Clip", [tape.op("Add", [tape.op("Round", [tape.op("Div", [a, scale])]), zero]), zero_f,
                                 const(tape, levels)])
    uint8 = {"to": 2}  # TensorProto.UINT8
    return tape.op("Cast", [quantized], uint8), scale, tape.op("Cast", [zero], uint8)


def _decompose(tape, inputs, attrs):
    """ONNX: the activations quantized, MatMulInteger (u8 x s8 -> int32), scaled back."""
    a, weight, weight_scale = inputs[:3]
    bias = inputs[3] if len(inputs) > 3 else None
    quantized, scale, zero = _quantize_onnx(tape, a, attrs["activation_bits"])
    accumulated = tape.op("MatMulInteger", [quantized, weight, zero])
    y = tape.op("Mul", [tape.op("Cast", [accumulated], {"to": 1}), tape.op("Mul", [scale, weight_scale])])
    return [bias_activation_onnx(tape, y, bias, attrs, np.float32)]


DYNAMIC_QUANT_LINEAR = register(
    OpDef(
        name="DynamicQuantLinear",
        doc=__doc__,
        inputs=("a", "weight", "weight_scale", "bias?"),
        outputs=("y",),
        attributes={"activation": "none", "activation_bits": 7},
        shape_rule=linear_shape(1),
        reference=_reference,
        decompose=_decompose,
    )
)
