"""leangraph::StaticQuantLinear(a, a_scale, a_zero, weight, weight_scale, bias?) -> y: an int8 linear
layer whose activations are quantized with a fixed, calibrated scale.

As leangraph::DynamicQuantLinear, but ``a`` is not searched for its range on every call: ``a_scale``
(float scalar) and ``a_zero`` (uint8 scalar) were found once on calibration data, and values outside
that range saturate at 0 or 255: ``a_q = clip(round(a / a_scale) + a_zero, 0, 255)``,
``y = activation((a_q - a_zero) @ weight * a_scale * weight_scale + bias)``. ``weight`` is int8
[K, N], symmetric per output channel (``weight_scale`` [N]). Rounding is half to even, as ONNX's
QuantizeLinear. Written by the mixed-precision quantization pass (passes/quantization) where a
backend's static kernel is faster and the layer's sensitivity allows it.
"""

from __future__ import annotations

import numpy as np

from leangraph.ir.ops.matmul_bias_act import bias_activation, bias_activation_onnx, linear_shape
from leangraph.ir.ops.quant_linear import range_scale
from leangraph.ir.registry import OpDef, register


def calibrated_scale(low: float, high: float) -> tuple[np.float32, np.uint8]:
    """(a_scale, a_zero) for activations seen within [low, high] on calibration data."""
    scale, zero = range_scale(low, high, 8)
    return scale, np.uint8(zero)


def quantize(a: np.ndarray, a_scale, a_zero) -> np.ndarray:
    return np.clip(np.round(a / np.float32(a_scale)) + float(a_zero), 0, 255)


def _reference(a, a_scale, a_zero, weight, weight_scale, bias=None, activation="none"):
    zero = int(np.asarray(a_zero))
    accumulated = (quantize(a, a_scale, zero).astype(np.int64) - zero) @ weight.astype(np.int64)
    y = accumulated.astype(np.float64) * (float(np.asarray(a_scale)) * weight_scale.astype(np.float64))
    return (bias_activation(y, bias, activation, a.dtype),)


def _decompose(tape, inputs, attrs):
    """ONNX in the QDQ form: QuantizeLinear of ``a``, DequantizeLinear of it and of the weight (per
    column), MatMul (+ bias). ONNX Runtime turns the two DequantizeLinear + MatMul into its int8
    MatMulIntegerToFloat (MatMulInteger + Cast + Mul would not fuse here: with both scales constant,
    constant folding removes the scales' Mul its fusion looks for)."""
    a, a_scale, a_zero, weight, weight_scale = inputs[:5]
    bias = inputs[5] if len(inputs) > 5 else None
    quantized = tape.op("QuantizeLinear", [a, a_scale, a_zero])
    y = tape.op("MatMul", [tape.op("DequantizeLinear", [quantized, a_scale, a_zero]),
                           tape.op("DequantizeLinear", [weight, weight_scale], {"axis": 1})])
    return [bias_activation_onnx(tape, y, bias, attrs, np.float32)]


def decompose_for_onnxruntime(tape, inputs, attrs):
    """ONNX Runtime's own kernel: QuantizeLinear + com.microsoft.MatMulIntegerToFloat with the bias
    inside it (its QDQ rewrite of the standard form leaves the bias Add outside, an extra pass over
    the output that BiasGelu then makes slower than Gelu alone)."""
    a, a_scale, a_zero, weight, weight_scale = inputs[:5]
    bias = inputs[5] if len(inputs) > 5 else None
    quantized = tape.op("QuantizeLinear", [a, a_scale, a_zero])
    y = tape.op("MatMulIntegerToFloat", [quantized, weight, a_scale, weight_scale, a_zero, None, bias],
                domain="com.microsoft")
    return [bias_activation_onnx(tape, y, None, attrs, np.float32)]  # the bias went into the kernel


STATIC_QUANT_LINEAR = register(
    OpDef(
        name="StaticQuantLinear",
        doc=__doc__,
        inputs=("a", "a_scale", "a_zero", "weight", "weight_scale", "bias?"),
        outputs=("y",),
        attributes={"activation": "none"},
        shape_rule=linear_shape(3),
        reference=_reference,
        decompose=_decompose,
    )
)
