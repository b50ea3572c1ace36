"""Per-shape timings of the linear-layer kernels every backend can call, in fp32, int8 and bf16.

The mixed-precision search predicts a layer's latency in each precision from these (measured on
this machine, not modelled): which int8 kernel is faster than the fp32 GEMM at which shape (on AVX2
without VNNI, barely), and whether bf16 is fast at all (with AVX-512 BF16, 4x fp32; without, 50x
slower), is exactly what cannot be guessed.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import numpy as np

from leangraph.cost_model.timing import median_seconds
from leangraph.ir.ops.quant_linear import quantize_weight

KERNEL_ROWS = 512
"""Rows of the activations the kernels are timed at (a batch of 32 sentences of 16 tokens)."""

FBGEMM, ORT_INT8 = "fbgemm (int8)", "ORT DynamicQuantizeMatMul (int8)"
TVM_INT8 = "TVM int8 micro-kernel (int8, int16 pair sums)"


def exact_u8s8_products() -> bool:
    """Whether this CPU has AVX-512 VNNI, whose ``vpdpbusd`` adds u8 x s8 products straight into
    int32: ONNX Runtime's MLAS kernels use it where present, and 8-bit activations with 8-bit
    weights then cannot saturate (without it they are summed in pairs in int16 first)."""
    import torch

    return bool(torch.cpu.get_capabilities().get("avx512_vnni", False))


class Int8Scheme(NamedTuple):
    """How an int8 kernel wants a layer quantized: the bits of each side (without VNNI one side
    gives up a bit, see leangraph::DynamicQuantLinear) and whether the activations take a fixed,
    calibrated scale (leangraph::StaticQuantLinear) instead of one found per call."""

    activation_bits: int
    weight_bits: int
    static_activations: bool = False

    precision = "int8"


class Bf16Scheme(NamedTuple):
    """bfloat16 weights and activations, float32 accumulation (leangraph::Bf16Linear)."""

    precision = "bf16"


ORT_STATIC_INT8 = "ORT MatMulIntegerToFloat (int8, static activations)"
TORCH_BF16 = "torch GEMM (bf16)"

_EXACT_U8S8 = exact_u8s8_products()
_ORT_WEIGHT_BITS = 8 if _EXACT_U8S8 else 7
INT8_BITS = {FBGEMM: Int8Scheme(8 if _EXACT_U8S8 else 7, 8), ORT_INT8: Int8Scheme(8, _ORT_WEIGHT_BITS),
             ORT_STATIC_INT8: Int8Scheme(8, _ORT_WEIGHT_BITS, static_activations=True), TVM_INT8: Int8Scheme(7, 7)}
"""The scheme of each int8 kernel; a layer is quantized as the kernel chosen for it wants. With
AVX-512 VNNI every side keeps 8 bits: ONNX Runtime's kernels take 8-bit weights, fbgemm 8-bit
activations (``reduce_range`` off: half the activation error, MiniLM's layers measured as fast).
So a model quantized on such a machine carries values that an AVX2 machine's kernels may saturate
on: compile where it will run. Without VNNI fbgemm keeps ``reduce_range`` (7-bit activations) and
ONNX Runtime takes 7-bit weights; the TVM micro-kernel is written for ``vpmaddubsw``."""

BACKEND_KERNELS = {
    "tvm": {"fp32": "torch GEMM (fp32)",  # oneDNN's where torch has it, else MKL's (library.fp32_linear)
            "reduced": {FBGEMM: INT8_BITS[FBGEMM], TVM_INT8: INT8_BITS[TVM_INT8], TORCH_BF16: Bf16Scheme()}},
    "onnxruntime": {"fp32": "ORT MatMul (fp32)",
                    "reduced": {ORT_INT8: INT8_BITS[ORT_INT8], ORT_STATIC_INT8: INT8_BITS[ORT_STATIC_INT8]}},
}
"""The fp32 kernel each backend calls for a linear layer, and the reduced-precision (int8, bf16)
kernels the search may give a layer, with their schemes (a layer's options are those faster than
fp32 at its shape: torch's bf16 GEMM is on CPUs with AVX-512 BF16 or AMX, and 50x slower without;
a kernel that does not tile a shape is timed as infinitely slow there). ONNX Runtime has no fast
bf16 or fp16 CPU GEMM. The TVM backend runs every dynamic int8 layer it is given on fbgemm
(library.quant_linear_function; ONNX Runtime's kernel inside TVM's process has to stop spinning and
measured slower: MiniLM, 960 STS-B sentences, every layer int8: 2.35 vs 2.16 s); it has no converter
for the static one (such layers would run on ONNX Runtime pieces)."""

def kernel_names() -> list[str]:
    """Every kernel time_kernels times (a stored table missing one is measured again)."""
    names = [BACKEND_KERNELS[b]["fp32"] for b in BACKEND_KERNELS]
    return list(dict.fromkeys(names + [k for b in BACKEND_KERNELS for k in BACKEND_KERNELS[b]["reduced"]]))


_time_calls = partial(median_seconds, calls=20, rounds=3)


def time_kernels(weight: np.ndarray, rows: int = KERNEL_ROWS) -> dict[str, float]:
    """Seconds per call of every linear-layer kernel at this weight's shape."""
    import torch

    from leangraph.backends.onnxruntime import inference_session, linear_model, session_options
    from leangraph.backends.tvm import int8_gemm
    from leangraph.backends.tvm.library import fbgemm_linear, fp32_linear

    k, n = weight.shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    seconds = {}
    xt, wt = torch.from_numpy(x), torch.from_numpy(weight)
    _, fp32_gemm = fp32_linear()
    seconds[BACKEND_KERNELS["tvm"]["fp32"]] = _time_calls(lambda: fp32_gemm(xt, wt, None))
    fbgemm = fbgemm_linear(*quantize_weight(weight, INT8_BITS[FBGEMM].weight_bits), None,
                           INT8_BITS[FBGEMM].activation_bits)
    seconds[FBGEMM] = _time_calls(lambda: fbgemm(xt))
    weight_bf16 = wt.to(torch.bfloat16)
    seconds[TORCH_BF16] = _time_calls(lambda: torch.mm(xt.to(torch.bfloat16), weight_bf16).float())
    seconds[TVM_INT8] = math.inf
    if int8_gemm.applies(k, n):
        tvm_linear = int8_gemm.linear(*quantize_weight(weight, INT8_BITS[TVM_INT8][1]), None, rows)
        seconds[TVM_INT8] = _time_calls(lambda: tvm_linear(x))
    ort_int8 = quantize_weight(weight, INT8_BITS[ORT_INT8][1])
    for name, model in ((BACKEND_KERNELS["onnxruntime"]["fp32"], linear_model(weight)),
                        (ORT_INT8, linear_model(*ort_int8, activation_bits=INT8_BITS[ORT_INT8][0])),
                        (ORT_STATIC_INT8, linear_model(*ort_int8, activation_range=(x.min(), x.max())))):
        session = inference_session(model, session_options(threads=torch.get_num_threads()))
        seconds[name] = _time_calls(lambda s=session: s.run(None, {"x": x}))
    return seconds

