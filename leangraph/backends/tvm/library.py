"""Library kernels the TVM backend calls through packed functions (destination-passing style).

Relax without schedules runs GEMMs as plain loops; on this CPU the library GEMM (torch's, the same
speed ONNX Runtime's MLAS reaches) is what linear layers need. The functions receive TVM tensors and
write into the output tensor through zero-copy DLPack views.
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


def _register() -> None:
    for activation, apply in ACTIVATIONS.items():

        def linear_bias(a, w, bias, out, apply=apply):
            result = torch.from_dlpack(out)
            weight = torch.from_dlpack(w)
            # One addmm over the rows as a matrix: the bias is added inside the GEMM's output pass.
            torch.addmm(torch.from_dlpack(bias), torch.from_dlpack(a).reshape(-1, weight.shape[0]), weight,
                        out=result.view(-1, weight.shape[1]))
            apply(result)

        def linear(a, w, out, apply=apply):
            result = torch.from_dlpack(out)
            torch.matmul(torch.from_dlpack(a), torch.from_dlpack(w), out=result)
            apply(result)

        tvm.register_global_func(function_name(activation, True), linear_bias, override=True)
        tvm.register_global_func(function_name(activation, False), linear, override=True)

    def batched_matmul(a, b, out):
        torch.matmul(torch.from_dlpack(a), torch.from_dlpack(b), out=torch.from_dlpack(out))

    tvm.register_global_func("leangraph.matmul", batched_matmul, override=True)



_register()


def multi_head_attention_function(heads: int, scale: float, causal: int, masked: bool) -> str:
    """The name of a packed function running leangraph::MultiHeadAttention with these attributes
    (registered on first use: Relax here cannot pass scalars to packed functions)."""
    name = f"leangraph.multi_head_attention.h{heads}.s{scale!r}.c{causal}.m{int(masked)}"
    if tvm.get_global_func(name, allow_missing=True) is not None:
        return name

    def run(q, k, v, *rest):
        *mask, out = rest
        query, key, value = (torch.from_dlpack(x) for x in (q, k, v))
        batch, length, _ = query.shape

        def split(t):
            return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

        attended = torch.nn.functional.scaled_dot_product_attention(
            split(query), split(key), split(value), attn_mask=torch.from_dlpack(mask[0]) if mask else None,
            is_causal=bool(causal), scale=scale or None)
        result = torch.from_dlpack(out)
        result.copy_(attended.transpose(1, 2).reshape(batch, length, -1))
        torch.nan_to_num_(result, nan=0.0)  # rows with no visible key give 0, as leangraph::Attention defines

    tvm.register_global_func(name, run, override=True)
    return name


def packed_attention_function(heads: int, scale: float, causal: int) -> str:
    """The name of a packed function running leangraph::PackedMultiHeadAttention with these
    attributes, through the torch backend's kernel for it (sequences laid out padded, one batched
    scaled_dot_product_attention with the key-padding mask, the valid rows gathered back)."""
    from leangraph.backends.torch.ops import OPS

    name = f"leangraph.packed_multi_head_attention.h{heads}.s{scale!r}.c{causal}"
    if tvm.get_global_func(name, allow_missing=True) is not None:
        return name
    kernel = OPS[("leangraph", "PackedMultiHeadAttention")]
    attrs = {"num_heads": heads, "scale": scale, "causal": causal}

    def run(q, k, v, mask, out):
        (result,) = kernel([torch.from_dlpack(x) for x in (q, k, v, mask)], attrs)
        torch.from_dlpack(out).copy_(result)

    tvm.register_global_func(name, run, override=True)
    return name


def fbgemm_prepack(weight: np.ndarray, weight_scale: np.ndarray, bias: np.ndarray | None = None):
    """fbgemm's packed form of an int8 [K, N] weight quantized per output channel (+ fp32 bias)."""
    with warnings.catch_warnings():  # torch deprecates quantized tensors, but they are fbgemm's only way in
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch._make_per_channel_quantized_tensor(
            torch.from_numpy(np.ascontiguousarray(weight.T)), torch.from_numpy(weight_scale.astype(np.float64)),
            torch.zeros(weight.shape[1], dtype=torch.int64), 0)
    return torch.ops.quantized.linear_prepack(quantized, None if bias is None else torch.from_numpy(bias.copy()))


def quant_linear_function(weight: np.ndarray, weight_scale: np.ndarray, bias: np.ndarray | None, activation: str,
                          activation_bits: int) -> str:
    """The name of a packed function running leangraph::DynamicQuantLinear with these constant
    weights through fbgemm (torch's x86 int8 GEMM: u8 activations quantized per call, s8 weights
    per channel, prepacked once here). fbgemm's ``reduce_range`` is the op's 7-bit activations."""
    if activation_bits not in (7, 8):
        raise ValueError(f"activation_bits must be 7 or 8, not {activation_bits}")
    digest = hashlib.sha256()
    for array in (weight, weight_scale, bias if bias is not None else np.zeros(0)):
        digest.update(np.ascontiguousarray(array).tobytes())
    name = f"leangraph.quant_linear.{digest.hexdigest()[:24]}.{activation}.a{activation_bits}"
    if tvm.get_global_func(name, allow_missing=True) is not None:
        return name
    packed = fbgemm_prepack(weight, weight_scale, bias)
    apply = ACTIVATIONS[activation]
    reduce_range = activation_bits == 7

    def run(a, out):
        x = torch.from_dlpack(a)
        result = torch.from_dlpack(out)
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, x.shape[-1]), packed, reduce_range)
        result.view(-1, y.shape[-1]).copy_(y)
        apply(result)

    tvm.register_global_func(name, run, override=True)
    return name
