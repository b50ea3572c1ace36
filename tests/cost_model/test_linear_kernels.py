"""Kernel timings (cost_model.linear_kernels): every backend's fp32 and int8 linear kernel is timed."""

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from leangraph.backends.onnxruntime import inference_session, linear_model, session_options
from leangraph.cost_model.linear_kernels import BACKEND_KERNELS, INT8_BITS, ORT_INT8, ORT_STATIC_INT8, time_kernels
from leangraph.ir.ops.quant_linear import quantize_weight


def test_every_backend_kernel_is_timed():
    weight = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
    seconds = time_kernels(weight, rows=32)
    names = {name for kernels in BACKEND_KERNELS.values() for name in (kernels["fp32"], *kernels["reduced"])}
    assert set(seconds) == names and ORT_STATIC_INT8 in names
    assert all(0 < s < 1 for s in seconds.values()), seconds


def test_static_int8_kernel_computes_the_linear_layer():
    rng = np.random.default_rng(0)
    weight, x = rng.standard_normal((64, 96)).astype(np.float32), rng.standard_normal((32, 64)).astype(np.float32)
    quantized = quantize_weight(weight, INT8_BITS[ORT_STATIC_INT8].weight_bits)
    session = ort.InferenceSession(linear_model(*quantized, activation_range=(x.min(), x.max())),
                                   providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    exact = x @ weight
    assert np.abs(y - exact).max() / np.abs(exact).max() < 0.02


def test_static_int8_kernel_is_one_onnx_runtime_kernel_with_the_bias_inside():
    from leangraph.ir.ops.static_quant_linear import calibrated_scale
    from leangraph.ir.registry import lookup

    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((64, 96)).astype(np.float32), rng.standard_normal(96).astype(np.float32)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    options = session_options(threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        session = inference_session(linear_model(*quantize_weight(weight), bias, activation_range=(-1.0, 2.0)), options)
        ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops == ["QuantizeLinear", "MatMulIntegerToFloat"], ops
    (expected,) = lookup("StaticQuantLinear").reference(x, *calibrated_scale(-1.0, 2.0), *quantize_weight(weight), bias)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)


def test_ort_int8_kernel_does_not_saturate_at_the_bits_chosen_for_this_cpu():
    # The worst case of u8 x s8 pair sums: every activation at 255, every weight at its bits' limit.
    # Without VNNI 8-bit weights would give 2 * 255 * 127 > 32767 in int16; INT8_BITS keeps them at 7.
    from leangraph.ir.registry import lookup

    activation_bits, weight_bits = INT8_BITS[ORT_INT8].activation_bits, INT8_BITS[ORT_INT8].weight_bits
    x = np.ones((4, 64), np.float32)
    weight = np.full((64, 16), 2 ** (weight_bits - 1) - 1, np.int8)
    weight[:, 8:] *= -1
    scale = np.full(16, 0.01, np.float32)
    session = inference_session(linear_model(weight, scale, activation_bits=activation_bits), session_options(threads=1))
    (y,) = session.run(None, {"x": x})
    (exact,) = lookup("DynamicQuantLinear").reference(x, weight, scale, activation_bits=activation_bits)
    np.testing.assert_allclose(y, exact, rtol=1e-5)
