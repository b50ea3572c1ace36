"""Library kernels the TVM backend calls through packed functions.

Relax without schedules runs GEMMs as plain loops; on this CPU the library GEMM (torch's, the same
speed ONNX Runtime's MLAS reaches) is what linear layers need. The functions receive TVM tensors
through zero-copy DLPack views and return their result the same way: the kernels allocate their
outputs anyway (oneDNN's linear, fbgemm, torch's layer_norm), and writing into a destination
tensor cost one more copy per call (converters.library_call).
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch
import tvm

ACTIVATIONS = {  # each applied in place to the GEMM's output
    "none": lambda t: None,
    "relu": torch.relu_,
    "gelu": torch._C._nn.gelu_,
    "gelu_tanh": lambda t: torch._C._nn.gelu_(t, approximate="tanh"),
    "silu": lambda t: torch.nn.functional.silu(t, inplace=True),
    "sigmoid": torch.sigmoid_,
    "tanh": torch.tanh_,
}


def function_name(activation: str, with_bias: bool) -> str:
    return f"leangraph.linear.{activation}{'' if with_bias else '.nobias'}"


def _mkl_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if bias is None:
        return torch.mm(x, weight)
    return torch.addmm(bias, x, weight)  # the bias added inside the GEMM's output pass


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # oneDNN's linear (the kernel torch's inductor calls on CPU) reads the [K, N] weight as the
    # transposed view it expects.
    return torch.ops.mkldnn._linear_pointwise(x, weight.t(), bias, "none", [], "")


def to_tvm(result: torch.Tensor, *shape: int) -> tvm.runtime.Tensor:
    """A kernel's result as the TVM tensor a packed function returns (zero-copy), viewed as ``shape``."""
    return tvm.runtime.from_dlpack(result.contiguous().view(*shape) if shape else result.contiguous())


def fp32_linear():
    """(library name, linear(x [rows, K], weight [K, N], bias [N] or None) -> [rows, N]): the fp32
    GEMM the TVM backend's linear layers call. oneDNN's linear (the kernel torch's inductor calls on
    CPU) where torch has oneDNN, else MKL's GEMM (torch.mm). MKL runs AMD CPUs' slow path: AMD EPYC
    with AVX-512, 2 threads, 512 x 384 x 1152: 2.14 ms vs oneDNN's 0.92 ms (ONNX Runtime's MLAS
    0.94). A fixed rule, not a measurement per process: two processes must compute the same outputs."""
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return "oneDNN", _onednn_linear
    return "MKL", _mkl_linear


def _register() -> None:
    _, gemm = fp32_linear()
    for activation, apply in ACTIVATIONS.items():

        def linear(a, w, bias=None, apply=apply):
            x, weight = torch.from_dlpack(a), torch.from_dlpack(w)
            result = gemm(x.reshape(-1, weight.shape[0]), weight, None if bias is None else torch.from_dlpack(bias))
            apply(result)
            return to_tvm(result, *x.shape[:-1], weight.shape[1])

        tvm.register_global_func(function_name(activation, True), linear, override=True)
        tvm.register_global_func(function_name(activation, False), linear, override=True)

    for activation, apply in ACTIVATIONS.items():
        def in_place(x, apply=apply):
            apply(torch.from_dlpack(x))
            return x

        tvm.register_global_func(activation_function(activation), in_place, override=True)


def activation_function(activation: str) -> str:
    """The packed function applying ``activation`` in place (after the TIR int8 GEMM)."""
    return f"leangraph.activation.{activation}"


_register()


def _torch_kernel(op_type: str, name: str, attrs: dict) -> str:
    """Register ``name`` as a packed function running the torch backend's kernel of
    ``leangraph::op_type`` with these attributes. Registered on first use: Relax here cannot pass
    scalars to packed functions."""
    from leangraph.backends.torch.ops import OPS

    if tvm.get_global_func(name, allow_missing=True) is not None:
        return name
    kernel = OPS[("leangraph", op_type)]

    def run(*inputs):
        (result,) = kernel([torch.from_dlpack(x) for x in inputs], attrs)
        return to_tvm(result)

    tvm.register_global_func(name, run, override=True)
    return name


def _float_attribute(value: float) -> float:
    """An ONNX float attribute as a saved model holds it (float32): a function named after the
    in-memory float64 would not be found by a library loaded back from an artifact or the cache."""
    return float(np.float32(value))


def multi_head_attention_function(heads: int, scale: float, causal: int, masked: bool, zero_nan_rows: int = 1) -> str:
    """The packed function running leangraph::MultiHeadAttention with these attributes (the torch
    backend's kernel on the split heads)."""
    scale = _float_attribute(scale)
    name = f"leangraph.multi_head_attention.h{heads}.s{scale!r}.c{causal}.m{int(masked)}.z{zero_nan_rows}"
    return _torch_kernel("MultiHeadAttention", name, {"num_heads": heads, "scale": scale, "causal": causal,
                                                      "zero_nan_rows": zero_nan_rows})


def layer_norm_function(axis: int, epsilon: float) -> str:
    """The packed function running leangraph::LayerNorm with these attributes (torch's layer_norm)."""
    epsilon = _float_attribute(epsilon)
    name = f"leangraph.layer_norm.a{axis}.e{epsilon!r}"
    return _torch_kernel("LayerNorm", name, {"axis": axis, "epsilon": epsilon})


def packed_attention_function(heads: int, scale: float, causal: int) -> str:
    """The packed function running leangraph::PackedMultiHeadAttention with these attributes (the
    torch backend's kernel: sequences laid out padded, one batched attention with the key-padding
    mask, the valid rows gathered back)."""
    scale = _float_attribute(scale)
    name = f"leangraph.packed_multi_head_attention.h{heads}.s{scale!r}.c{causal}"
    return _torch_kernel("PackedMultiHeadAttention", name, {"num_heads": heads, "scale": scale, "causal": causal})


def _fbgemm_prepack(weight: np.ndarray, weight_scale: np.ndarray, bias: np.ndarray | None = None):
    """fbgemm's packed form of an int8 [K, N] weight quantized per output channel (+ fp32 bias)."""
    with warnings.catch_warnings():  # torch deprecates quantized tensors, but they are fbgemm's only way in
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch._make_per_channel_quantized_tensor(
            torch.from_numpy(np.ascontiguousarray(weight.T)), torch.from_numpy(weight_scale.astype(np.float64)),
            torch.zeros(weight.shape[1], dtype=torch.int64), 0)
    return torch.ops.quantized.linear_prepack(quantized, None if bias is None else torch.from_numpy(bias.copy()))


def fbgemm_linear(weight: np.ndarray, weight_scale: np.ndarray, bias: np.ndarray | None, activation_bits: int):
    """linear(x [rows, K]) -> [rows, N] on fbgemm (torch's x86 int8 GEMM: u8 activations quantized
    per call, s8 weights per channel, prepacked once here), with ``reduce_range`` for 7-bit
    activations. 8-bit activations are exact with AVX-512 VNNI, or with weights within 7 bits (see
    leangraph::DynamicQuantLinear). The TVM backend's int8 layers and the kernel table's timing both
    call it."""
    if activation_bits not in (7, 8):
        raise ValueError(f"activation_bits must be 7 or 8, not {activation_bits}")
    packed = _fbgemm_prepack(weight, weight_scale, bias)
    reduce_range = activation_bits == 7
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, reduce_range)


def quant_linear_function(weight: np.ndarray, weight_scale: np.ndarray, bias: np.ndarray | None, activation: str,
                          activation_bits: int) -> str:
    """The name of a packed function running leangraph::DynamicQuantLinear with these constant
    weights on fbgemm (fbgemm_linear)."""
    digest = hashlib.sha256()
    for array in (weight, weight_scale, bias if bias is not None else np.zeros(0)):
        digest.update(np.ascontiguousarray(array).tobytes())
    name = f"leangraph.quant_linear.{digest.hexdigest()[:24]}.{activation}.a{activation_bits}"
    if tvm.get_global_func(name, allow_missing=True) is not None:
        return name
    apply = ACTIVATIONS[activation]
    linear = fbgemm_linear(weight, weight_scale, bias, activation_bits)

    def run(a):
        x = torch.from_dlpack(a)
        result = linear(x.reshape(-1, x.shape[-1]))
        apply(result)
        return to_tvm(result, *x.shape[:-1], result.shape[-1])

    tvm.register_global_func(name, run, override=True)
    return name


def bf16_linear_function(weight: np.ndarray, activation: str, with_bias: bool) -> str:
    """The name of a packed function running leangraph::Bf16Linear with this constant bfloat16
    weight, called as (a[, bias]): torch's bfloat16 GEMM (oneDNN: fast with AVX-512 BF16 or AMX),
    its bfloat16 output widened to float32, bias and activation applied there."""
    digest = hashlib.sha256(np.ascontiguousarray(weight).view(np.uint16).tobytes()).hexdigest()[:24]
    name = f"leangraph.bf16_linear.{digest}.{activation}.b{int(with_bias)}"
    if tvm.get_global_func(name, allow_missing=True) is not None:
        return name
    apply = ACTIVATIONS[activation]
    # A copy: a weight loaded from an artifact is a read-only view of its file, which torch warns about.
    weight_bf16 = torch.from_numpy(np.array(weight, order="C").view(np.int16)).view(torch.bfloat16)

    def run(a, bias=None):
        x = torch.from_dlpack(a)
        result = torch.mm(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), weight_bf16).float()
        if with_bias:
            result.add_(torch.from_dlpack(bias))
        apply(result)
        return to_tvm(result, *x.shape[:-1], weight_bf16.shape[1])

    tvm.register_global_func(name, run, override=True)
    return name
