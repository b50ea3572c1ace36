"""The TVM backend's own int8 GEMM (backends/tvm/int8_gemm.py): exact integer products, the op's
quantization, and leangraph::DynamicQuantLinear layers with 7-bit weights running on it, saved and
loaded with the model's library."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from leangraph.backends.reference import ReferenceExecutable
from leangraph.backends.tvm import TVMBackend, TVMExecutable, int8_gemm
from leangraph.backends.tvm.converters import _uses_tir_int8_gemm
from leangraph.ir.ops.quant_linear import quantize_activations, quantize_weight
from tests.backends.test_tvm import with_constant_weights
from tests.ir.test_ops import single_op_model

rng = np.random.default_rng(0)


def run_kernels(x: np.ndarray, weight: np.ndarray, weight_scale: np.ndarray, bias: np.ndarray):
    """(quantized rows, (scale, zero), y) of the two standalone PrimFuncs."""
    import tvm

    k, n = weight.shape
    module = int8_gemm.standalone(k, n)
    quantized = tvm.runtime.empty((int8_gemm.padded_rows(len(x)), k), "uint8", tvm.cpu())
    params = tvm.runtime.empty((2,), "float32", tvm.cpu())
    module["quantize"](tvm.runtime.tensor(x), quantized, params)
    y = tvm.runtime.empty((len(x), n), "float32", tvm.cpu())
    constants = [tvm.runtime.tensor(a) for a in int8_gemm.gemm_constants(weight, weight_scale, bias)]
    module["gemm"](quantized, params, *constants, y)
    return quantized.numpy(), params.numpy(), y.numpy()


@pytest.mark.parametrize("rows", [0, 1, 6, 21, 64])
def test_gemm_is_the_integer_product_of_the_quantized_operands(rows):
    k, n = 48, 32
    x = rng.standard_normal((rows, k)).astype(np.float32) * 3
    weight = rng.integers(-63, 64, (k, n)).astype(np.int8)
    weight[:, 0] = 63  # the extremes: two 127 * 63 pair sums still add in int16
    x[:, :8] = x.max(initial=1.0)
    weight_scale, bias = rng.random(n).astype(np.float32) + 0.5, rng.standard_normal(n).astype(np.float32)
    quantized, (scale, zero), y = run_kernels(x, weight, weight_scale, bias)
    assert quantized.shape == (int8_gemm.padded_rows(rows), k) and quantized.max(initial=0) <= 127
    assert (quantized[rows:] == zero).all()  # padding rows: the zero point, never stored
    exact = (quantized[:rows].astype(np.int64) - int(zero)) @ weight.astype(np.int64)
    np.testing.assert_allclose(y, exact * np.float64(scale) * weight_scale + bias, rtol=1e-6, atol=1e-4)


def test_quantization_is_the_ops():
    x = rng.standard_normal((37, 64)).astype(np.float32)
    quantized, (scale, zero), _ = run_kernels(x, np.zeros((64, 16), np.int8), np.ones(16, np.float32),
                                              np.zeros(16, np.float32))
    expected, expected_scale, expected_zero = quantize_activations(x, 7)
    assert np.isclose(scale, expected_scale, rtol=1e-6) and zero == expected_zero
    # x * (1 / scale) and x / scale may round a value lying on a .5 boundary apart
    assert np.abs(quantized[:37].astype(np.int64) - expected).max() <= 1
    assert (quantized[:37] != expected).mean() < 1e-3


def test_applies_to_7_bit_weights_at_shapes_it_tiles():
    seven_bit, _ = quantize_weight(rng.standard_normal((64, 32)).astype(np.float32), 7)
    eight_bit, _ = quantize_weight(rng.standard_normal((64, 32)).astype(np.float32), 8)
    assert int8_gemm.applies(64, 32, seven_bit) and not int8_gemm.applies(64, 32, eight_bit)
    assert not int8_gemm.applies(60, 32) and not int8_gemm.applies(64, 24)


def quant_linear_model(rows, weight, weight_scale, bias, activation):
    k = weight.shape[0]
    model = single_op_model("DynamicQuantLinear", [np.zeros((2, 3, k), np.float32), weight, weight_scale, bias],
                            {"activation": activation, "activation_bits": 7})
    model.graph.inputs[0].shape = ir.Shape([rows, 3, k])  # a symbolic leading dim
    model.graph.outputs[0].shape = ir.Shape([rows, 3, weight.shape[1]])
    return with_constant_weights(model, [weight, weight_scale, bias])


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_seven_bit_layers_run_on_it_and_survive_the_library(activation, tmp_path):
    weight, weight_scale = quantize_weight(rng.standard_normal((64, 48)).astype(np.float32), 7)
    model = quant_linear_model("batch", weight, weight_scale, rng.standard_normal(48).astype(np.float32), activation)
    assert TVMBackend().supports(model.graph.node(0)) and _uses_tir_int8_gemm(model.graph.node(0))
    executable = TVMExecutable(model)
    for batch in (0, 5):
        a = rng.standard_normal((batch, 3, 64)).astype(np.float32)
        expected = ReferenceExecutable(model)([a])[0]
        got = executable([a])[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3 * max(np.abs(expected).max(initial=0), 1))
    executable.export_library(tmp_path / "layer.so")
    loaded = TVMBackend().load_library(model, tmp_path / "layer.so")
    np.testing.assert_array_equal(loaded([a])[0], got)


def test_eight_bit_weights_stay_on_fbgemm():
    weight, weight_scale = quantize_weight(rng.standard_normal((64, 48)).astype(np.float32), 8)
    model = quant_linear_model("batch", weight, weight_scale, np.zeros(48, np.float32), "none")
    assert not _uses_tir_int8_gemm(model.graph.node(0))


def test_eight_threads_calling_at_once_match_serial_calls():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    weight, weight_scale = quantize_weight(rng.standard_normal((64, 48)).astype(np.float32), 7)
    model = quant_linear_model("batch", weight, weight_scale, rng.standard_normal(48).astype(np.float32), "gelu")
    executable = TVMExecutable(model)
    inputs = [rng.standard_normal((batch, 3, 64)).astype(np.float32) for batch in [1, 2, 3, 4, 7, 9, 16, 33] * 2]
    serial = [executable([a])[0] for a in inputs]
    barrier = threading.Barrier(8)

    def work(index):
        if index < 8:
            barrier.wait()  # all eight threads call at once
        return executable([inputs[index]])[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(len(inputs))))
    for got, expected in zip(results, serial):
        np.testing.assert_array_equal(got, expected)
