"""Per-shape timings of the linear-layer kernels every backend can call, in fp32 and int8.

The mixed-precision search predicts a layer's latency in each precision from these (measured on
this machine, not modelled): on AVX2 without VNNI, which int8 kernel is faster than the fp32 GEMM
at which shape is exactly what cannot be guessed.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import onnx_ir as ir

from leangraph.cost_model.timing import median_seconds
from leangraph.ir import DOMAIN, TARGET_OPSET, lower_to_onnx
from leangraph.ir.ops.quant_linear import quantize_weight

KERNEL_ROWS = 512
"""Rows of the activations the kernels are timed at (a batch of 32 sentences of 16 tokens)."""

BACKEND_KERNELS = {
    "tvm": {"fp32": "torch GEMM (fp32)", "int8": "fbgemm (int8)", "activation_bits": 7, "weight_bits": 8},
    "onnxruntime": {"fp32": "ORT MatMul (fp32)", "int8": "ORT DynamicQuantizeMatMul (int8)", "activation_bits": 8,
                    "weight_bits": 7},
}
"""The kernel each backend calls for a linear layer in each precision, and the int8 kernel's bits
(without VNNI one side gives up a bit, see leangraph::DynamicQuantLinear)."""

_time_calls = partial(median_seconds, calls=20, rounds=3)


def time_kernels(weight: np.ndarray, rows: int = KERNEL_ROWS) -> dict[str, float]:
    """Seconds per call of every linear-layer kernel at this weight's shape."""
    import onnxruntime as ort
    import torch

    from leangraph.backends.onnxruntime import session_options
    from leangraph.backends.tvm.library import fbgemm_prepack

    k, n = weight.shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    seconds = {}
    xt, wt = torch.from_numpy(x), torch.from_numpy(weight)
    seconds[BACKEND_KERNELS["tvm"]["fp32"]] = _time_calls(lambda: torch.mm(xt, wt))
    quantized, scale = quantize_weight(weight, BACKEND_KERNELS["tvm"]["weight_bits"])
    packed = fbgemm_prepack(quantized, scale)
    seconds[BACKEND_KERNELS["tvm"]["int8"]] = _time_calls(lambda: torch.ops.quantized.linear_dynamic(xt, packed, True))
    ort_int8 = quantize_weight(weight, BACKEND_KERNELS["onnxruntime"]["weight_bits"])
    for precision, model in (("fp32", _ort_linear(weight, None)), ("int8", _ort_linear(*ort_int8))):
        session = ort.InferenceSession(model, session_options(threads=torch.get_num_threads()),
                                       providers=["CPUExecutionProvider"])
        seconds[BACKEND_KERNELS["onnxruntime"][precision]] = _time_calls(lambda s=session: s.run(None, {"x": x}))
    return seconds


def _ort_linear(weight: np.ndarray, scale: np.ndarray | None) -> bytes:
    """A one-layer ONNX model: MatMul, or leangraph::DynamicQuantLinear lowered to MatMulInteger."""

    k, n = weight.shape
    x = ir.val("x", ir.DataType.FLOAT, ir.Shape(["rows", k]))
    inputs = [x]
    for name, array in (("w", weight), ("scale", scale)):
        if array is not None:
            inputs.append(ir.Value(name=name, shape=ir.Shape(array.shape), const_value=ir.tensor(array),
                                   type=ir.TensorType(ir.DataType.from_numpy(array.dtype))))
    if scale is None:
        node = ir.node("MatMul", inputs)
    else:
        bits = BACKEND_KERNELS["onnxruntime"]["activation_bits"]
        node = ir.node("DynamicQuantLinear", inputs, {"activation": "none", "activation_bits": bits}, domain=DOMAIN)
    node.outputs[0].name = "y"
    node.outputs[0].dtype, node.outputs[0].shape = ir.DataType.FLOAT, ir.Shape(["rows", n])
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=inputs[1:],
                     opset_imports={"": TARGET_OPSET, DOMAIN: 1}, name="linear")
    return ir.to_proto(lower_to_onnx(ir.Model(graph, ir_version=10))).SerializeToString()
