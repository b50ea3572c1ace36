"""Kernel timings (cost_model.linear_kernels): every backend's fp32 and int8 linear kernel is timed."""

import numpy as np
import onnxruntime as ort

from leangraph.cost_model.linear_kernels import (BACKEND_KERNELS, INT8_BITS, ORT_INT8, ORT_STATIC_INT8, _static_int8_model,
                                                 time_kernels)
from leangraph.ir.ops.quant_linear import quantize_weight


def test_every_backend_kernel_is_timed():
    weight = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
    seconds = time_kernels(weight, rows=32)
    names = {name for kernels in BACKEND_KERNELS.values() for name in (kernels["fp32"], *kernels["int8"])}
    assert set(seconds) == names | {ORT_STATIC_INT8}  # the static one is timed for the report only
    assert all(0 < s < 1 for s in seconds.values()), seconds


def test_static_int8_kernel_computes_the_linear_layer():
    rng = np.random.default_rng(0)
    weight, x = rng.standard_normal((64, 96)).astype(np.float32), rng.standard_normal((32, 64)).astype(np.float32)
    # With the weight bits it is timed with (7: u8 x s8 pair sums saturate on AVX2 with 8-bit weights).
    quantized = quantize_weight(weight, INT8_BITS[ORT_INT8][1])
    session = ort.InferenceSession(_static_int8_model(*quantized, x), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    exact = x @ weight
    assert np.abs(y - exact).max() / np.abs(exact).max() < 0.02


def test_ort_int8_kernel_does_not_saturate_at_the_bits_chosen_for_this_cpu():
    # The worst case of u8 x s8 pair sums: every activation at 255, every weight at its bits' limit.
    # Without VNNI 8-bit weights would give 2 * 255 * 127 > 32767 in int16; INT8_BITS keeps them at 7.
    from leangraph.backends.onnxruntime import inference_session, linear_model, session_options
    from leangraph.ir.registry import lookup

    activation_bits, weight_bits = INT8_BITS[ORT_INT8]
    x = np.ones((4, 64), np.float32)
    weight = np.full((64, 16), 2 ** (weight_bits - 1) - 1, np.int8)
    weight[:, 8:] *= -1
    scale = np.full(16, 0.01, np.float32)
    session = inference_session(linear_model(weight, scale, activation_bits=activation_bits), session_options(threads=1))
    (y,) = session.run(None, {"x": x})
    (exact,) = lookup("DynamicQuantLinear").reference(x, weight, scale, activation_bits=activation_bits)
    np.testing.assert_allclose(y, exact, rtol=1e-5)
