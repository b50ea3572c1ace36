"""IR node -> Relax expressions, one small function per op (the table TVMBackend.supports reads).

Each converter gets the BlockBuilder, the node, its input expressions (None for absent optional
inputs) and returns the output expressions. Symbolic dims are carried by Relax's shape inference,
so reshapes are written with the input's own PrimExpr dims.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from tvm import relax

from leangraph.ir import DOMAIN, attributes_of

Converter = Callable[["Context", ir.Node, list], list]


class Context:
    """What converters need besides their inputs: the BlockBuilder, and the Relax dims of an IR value
    (symbols shared by name across the function)."""

    def __init__(self, bb: relax.BlockBuilder, shape_of: Callable[[ir.Value], list]) -> None:
        self.bb, self.shape_of = bb, shape_of
        self._functions: dict[str, relax.GlobalVar] = {}

    def prim_func(self, name: str, build: Callable[[], object]) -> relax.GlobalVar:
        """The module's PrimFunc ``name`` (built and added on first use; layers of one shape share it)."""
        if name not in self._functions:
            self._functions[name] = self.bb.add_func(build().with_attr("global_symbol", name), name)
        return self._functions[name]


CONVERTERS: dict[tuple[str, str], Converter] = {}


def converts(op_type: str, domain: str = ""):
    def register(fn: Converter) -> Converter:
        CONVERTERS[(domain, op_type)] = fn
        return fn

    return register


LibraryKernel = Callable[[ir.Node], "str | None"]
LIBRARY_KERNELS: dict[tuple[str, str], LibraryKernel] = {}
"""Ops whose converter calls a packed function registered from the node (its attributes, its
constant weights): the function registers it and gives its name (None: this node is converted to
Relax ops instead). A library loaded from an artifact calls these before it runs."""


def library_kernel(op_type: str, domain: str = DOMAIN):
    def register(fn: LibraryKernel) -> LibraryKernel:
        LIBRARY_KERNELS[(domain, op_type)] = fn
        return fn

    return register


def library_call(name: str, args: list, out: relax.TensorType) -> relax.Call:
    """A call of the library kernel ``name`` (library.py), which returns its result: the libraries
    allocate their outputs anyway, and destination-passing cost one more copy per call (MiniLM int8
    on TVM, STS-B dev: 1.07x, 9 rounds)."""
    return relax.call_pure_packed(name, *args, ty_args=out)


def register_library_kernels(model: ir.Model) -> None:
    """Register every packed function the converted ``model`` calls."""
    # The fixed set (the fp32 linear layers, the in-place activations after the TIR int8 GEMM) is
    # registered when library.py is imported; a library loaded in a fresh process whose pieces hold
    # only linear layers would otherwise call functions nobody registered.
    from leangraph.backends.tvm import library  # noqa: F401

    for node in model.graph:
        kernel = LIBRARY_KERNELS.get((node.domain, node.op_type))
        if kernel is not None:
            kernel(node)


def dtype_of(value: ir.Value) -> str:
    """The Relax dtype string of an IR value."""
    return str(np.dtype(value.dtype.numpy()))


def _dims(bb: relax.BlockBuilder, expr) -> list:
    return list(bb.normalize(expr).ty.shape.values)


def _scalar(value: float, dtype: str = "float32"):
    return relax.const(np.asarray(value, dtype=dtype))


def _relu(x, dtype: str = "float32"):
    """max(x, 0) that keeps NaN, as ONNX's reference, ONNX Runtime and torch do: Relax's relu lowers
    to LLVM's maxnum, which returns 0 for NaN (a masked softmax row of NaNs came out as zeros)."""
    zero = _scalar(0.0, dtype)
    return relax.op.where(relax.op.less(x, zero), zero, x)


def _activation(name: str, x):
    if name == "none":
        return x
    if name == "relu":
        return _relu(x)
    if name == "gelu":
        return relax.op.nn.gelu(x)
    if name == "gelu_tanh":
        return relax.op.nn.gelu_tanh(x)
    if name == "silu":
        return relax.op.nn.silu(x)
    if name == "sigmoid":
        return relax.op.sigmoid(x)
    if name == "tanh":
        return relax.op.tanh(x)
    raise ValueError(f"activation {name!r}")


@converts("MatMulBiasAct", DOMAIN)
def _matmul_bias_act(ctx, node, inputs):
    """A library GEMM (with bias and activation applied in place) when b is a constant matrix and
    the bias a row vector; Relax ops otherwise."""
    from leangraph.backends.tvm import library

    a, b, bias = (inputs + [None])[:3]
    activation = str(attributes_of(node)["activation"])
    weight = node.inputs[1].const_value
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    if weight is not None and len(weight.shape) == 2 and (bias_value is None or len(bias_value.shape or ()) == 1):
        out_dims = [*_dims(ctx.bb, a)[:-1], int(weight.shape[1])]
        args = [a, b] + ([bias] if bias is not None else [])
        return [library_call(library.function_name(activation, bias is not None), args,
                             relax.TensorType(out_dims, "float32"))]
    y = relax.op.matmul(a, b)
    if bias is not None:
        y = relax.op.add(y, bias)
    return [_activation(activation, y)]


@library_kernel("LayerNorm")
def _layer_norm_kernel(node: ir.Node) -> str:
    """torch's layer_norm: a quarter of the time of the legalized TIR reduction (measured on MiniLM's
    [tokens, 384]: 0.10 vs 0.38 ms), which our schedule leaves serial and unvectorized."""
    from leangraph.backends.tvm import library

    attrs = attributes_of(node)
    return library.layer_norm_function(int(attrs["axis"]), float(attrs["epsilon"]))


@converts("LayerNorm", DOMAIN)
def _layer_norm(ctx, node, inputs):
    args = [x for x in inputs if x is not None]
    return [library_call(_layer_norm_kernel(node), args, relax.TensorType(_dims(ctx.bb, inputs[0]), "float32"))]


@converts("LayerNormalization")
def _onnx_layer_norm(ctx, node, inputs):
    """ONNX LayerNormalization, Y only (TVMBackend.supports refuses nodes that read Mean/InvStdDev)."""
    x, scale, bias = (inputs + [None])[:3]
    attrs = attributes_of(node)
    rank = len(_dims(ctx.bb, x))
    if bias is None:
        bias = relax.op.zeros_like(scale)
    return [relax.op.nn.layer_norm(x, scale, bias, axes=list(range(attrs.get("axis", -1) % rank, rank)),
                                   epsilon=float(attrs.get("epsilon", 1e-5)))]


@converts("RMSNorm", DOMAIN)
def _rms_norm(ctx, node, inputs):
    x, scale = inputs
    attrs = attributes_of(node)
    rank = len(_dims(ctx.bb, x))
    return [relax.op.nn.rms_norm(x, scale, axes=list(range(attrs["axis"] % rank, rank)), epsilon=float(attrs["epsilon"]))]


@converts("Gelu", DOMAIN)
def _gelu(ctx, node, inputs):
    return [_activation("gelu" if str(attributes_of(node)["approximate"]) == "none" else "gelu_tanh", inputs[0])]


def _attention(ctx, q, k, v, mask, scale: float, causal: int, zero_nan_rows: int = 1):
    """softmax(q k^T * scale + mask) v on [..., heads, len, size] tensors; NaN rows (no visible key)
    give 0 unless ``zero_nan_rows`` = 0."""
    rank = len(_dims(ctx.bb, k))
    perm = [*range(rank - 2), rank - 1, rank - 2]
    head_size = _dims(ctx.bb, q)[-1]
    if not scale:
        scale = 1.0 / math.sqrt(int(head_size))
    scores = ctx.bb.emit(relax.op.multiply(relax.op.matmul(q, relax.op.permute_dims(k, perm)), _scalar(scale)))
    neg_inf = _scalar(-np.inf)
    if causal:
        visible = relax.op.astype(relax.op.tril(relax.op.ones_like(scores), 0), "bool")
        scores = relax.op.where(visible, scores, neg_inf)
    if mask is not None:
        mask = _cast_to_broadcast(ctx, mask, _dims(ctx.bb, scores))
        if ctx.bb.normalize(mask).ty.dtype == "bool":
            scores = relax.op.where(mask, scores, neg_inf)
        else:
            scores = relax.op.add(scores, mask)
    weights = relax.op.nn.softmax(scores, axis=-1)
    if zero_nan_rows:
        weights = relax.op.where(relax.op.isnan(weights), relax.op.zeros_like(weights), weights)
    return relax.op.matmul(weights, v)


def _cast_to_broadcast(ctx: Context, operand, target_dims: list):
    """``operand`` with every dim that is not 1 cast to the matching target dim (checked at run
    time): Relax cannot prove that a dim the exporter named '((batch*seq)//batch)' equals 'seq'."""
    dims = _dims(ctx.bb, operand)
    target = target_dims[-len(dims):]
    fixed = [d if (isinstance(d, int) or hasattr(d, "value")) and int(getattr(d, "value", d)) == 1 else t
             for d, t in zip(dims, target)]
    if all(f.same_as(d) if hasattr(f, "same_as") else f == d for f, d in zip(fixed, dims)):
        return operand
    return ctx.bb.match_cast(operand, relax.TensorType(fixed, ctx.bb.normalize(operand).ty.dtype))


@converts("Attention", DOMAIN)
def _attention_op(ctx, node, inputs):
    q, k, v, mask = (inputs + [None])[:4]
    attrs = attributes_of(node)
    return [_attention(ctx, q, k, v, mask, float(attrs["scale"]), int(attrs["causal"]), int(attrs["zero_nan_rows"]))]


@library_kernel("MultiHeadAttention")
def _multi_head_attention_kernel(node: ir.Node) -> str | None:
    """The torch backend's attention kernel, for no mask or an additive float32 one."""
    from leangraph.backends.tvm import library

    mask = node.inputs[3] if len(node.inputs) > 3 else None
    if mask is not None and mask.dtype != ir.DataType.FLOAT:
        return None
    attrs = attributes_of(node)
    return library.multi_head_attention_function(int(attrs["num_heads"]), float(attrs["scale"]), int(attrs["causal"]),
                                                 mask is not None, int(attrs["zero_nan_rows"]))


@converts("MultiHeadAttention", DOMAIN)
def _multi_head_attention(ctx, node, inputs):
    """A packed function (see _multi_head_attention_kernel), else Relax ops."""
    q, k, v, mask = (inputs + [None])[:4]
    name = _multi_head_attention_kernel(node)
    if name is None:
        return _multi_head_attention_relax(ctx, node, inputs)
    batch, length, _ = _dims(ctx.bb, q)
    if mask is not None:
        mask = _cast_to_broadcast(ctx, mask, [batch, int(attributes_of(node)["num_heads"]), length, _dims(ctx.bb, k)[1]])
    out = relax.TensorType([batch, length, _dims(ctx.bb, v)[-1]], "float32")
    return [library_call(name, [q, k, v] + ([mask] if mask is not None else []), out)]


@library_kernel("Bf16Linear")
def _bf16_linear_kernel(node: ir.Node) -> str:
    """torch's bfloat16 GEMM holding the constant weight (library.bf16_linear_function)."""
    from leangraph.backends.tvm import library

    with_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    return library.bf16_linear_function(node.inputs[1].const_value.numpy(), str(attributes_of(node)["activation"]),
                                        with_bias)


@converts("Bf16Linear", DOMAIN)
def _bf16_linear(ctx, node, inputs):
    out_dims = [*_dims(ctx.bb, inputs[0])[:-1], int(node.inputs[1].const_value.shape[1])]
    operands = [inputs[0]] + [x for x in inputs[2:3] if x is not None]
    out = relax.TensorType(out_dims, "float32")
    return [library_call(_bf16_linear_kernel(node), operands, out)]


def _quant_linear_constants(node: ir.Node) -> list[np.ndarray | None]:
    """(int8 weight, weight scale, bias or None) of a DynamicQuantLinear."""
    constants = [v.const_value.numpy() if v is not None and v.const_value is not None else None
                 for v in (list(node.inputs) + [None])[1:4]]
    if constants[0] is None or constants[1] is None or (len(node.inputs) > 3 and constants[2] is None):
        raise NotImplementedError("DynamicQuantLinear with non-constant weights")
    return constants


def _uses_tir_int8_gemm(node: ir.Node) -> bool:
    """7-bit activations with weights within 7 bits, at a shape it tiles: our TIR kernel
    (int8_gemm.py). fbgemm's layers have 8-bit weights (each column's peak is +-127), and 8-bit
    activations with VNNI; ONNX Runtime's have 8-bit activations (run on fbgemm here). So the bits
    the quantization pass chose tell the kernels apart."""
    from leangraph.backends.tvm import int8_gemm

    weight = node.inputs[1].const_value
    if int(attributes_of(node)["activation_bits"]) != int8_gemm.ACTIVATION_BITS or weight is None:
        return False
    return int8_gemm.applies(*weight.shape, weight.numpy())


@library_kernel("DynamicQuantLinear")
def _dynamic_quant_linear_kernel(node: ir.Node) -> str | None:
    """The library int8 GEMM holding the constant weights: fbgemm, for 7- or 8-bit activations
    (library.quant_linear_function); None for the layers our TIR kernel computes (its activation is
    applied by a packed function)."""
    from leangraph.backends.tvm import library

    if _uses_tir_int8_gemm(node):
        return None
    attrs = attributes_of(node)
    return library.quant_linear_function(*_quant_linear_constants(node), str(attrs["activation"]),
                                         int(attrs["activation_bits"]))


@converts("DynamicQuantLinear", DOMAIN)
def _dynamic_quant_linear(ctx, node, inputs):
    if _uses_tir_int8_gemm(node):
        return [_tir_int8_linear(ctx, node, inputs[0])]
    name = _dynamic_quant_linear_kernel(node)
    out_dims = [*_dims(ctx.bb, inputs[0])[:-1], int(node.inputs[1].const_value.shape[1])]
    return [library_call(name, [inputs[0]], relax.TensorType(out_dims, "float32"))]


def _tir_int8_linear(ctx, node, a):
    """Quantize the rows, run the micro-kernel (int8_gemm.py) on them, apply the activation in place."""
    from leangraph.backends.tvm import int8_gemm, library

    weight, weight_scale, bias = _quant_linear_constants(node)
    k, n = weight.shape
    dims = _dims(ctx.bb, a)
    rows = math.prod(dims[:-1]) if dims[:-1] else 1
    matrix = ctx.bb.emit(relax.op.reshape(a, [rows, k])) if len(dims) != 2 else a
    padded = int8_gemm.padded_rows(rows)
    quantize = ctx.prim_func(f"leangraph_quantize_k{k}", lambda: int8_gemm.quantize_rows(k))
    quantized = ctx.bb.emit(relax.call_tir(quantize, [matrix], [relax.TensorType([padded, k], "uint8"),
                                                              relax.TensorType([2], "float32")]))
    gemm = ctx.prim_func(f"leangraph_int8_gemm_k{k}_n{n}", lambda: int8_gemm.gemm(k, n))
    constants = [relax.const(c) for c in int8_gemm.gemm_constants(weight, weight_scale, bias)]
    y = ctx.bb.emit(relax.call_tir(gemm, [relax.TupleGetItem(quantized, 0), relax.TupleGetItem(quantized, 1),
                                          *constants],
                                   relax.TensorType([rows, n], "float32")))
    activation = str(attributes_of(node)["activation"])
    if activation != "none":
        y = ctx.bb.emit(relax.op.call_inplace_packed(library.activation_function(activation), y, inplace_indices=0,
                                                     ty_args=[relax.TensorType([rows, n], "float32")]))
    return relax.op.reshape(y, [*dims[:-1], n]) if len(dims) != 2 else y


def _uses_tir_attention(node: ir.Node) -> bool:
    """Whether a PackedMultiHeadAttention node runs on our varlen TIR kernel (packed_attention.py):
    static widths whose head sizes are whole vectors; else the torch backend's kernel."""
    from leangraph.backends.tvm import packed_attention

    widths = [x.shape[-1] if x is not None and x.shape is not None else None for x in node.inputs[:3]]
    heads = int(attributes_of(node)["num_heads"])
    return all(isinstance(w, int) for w in widths) and packed_attention.applies(*widths, heads)


@library_kernel("PackedMultiHeadAttention")
def _packed_multi_head_attention_kernel(node: ir.Node) -> str | None:
    from leangraph.backends.tvm import library

    if _uses_tir_attention(node):
        return None
    attrs = attributes_of(node)
    return library.packed_attention_function(int(attrs["num_heads"]), float(attrs["scale"]), int(attrs["causal"]))


@converts("PackedMultiHeadAttention", DOMAIN)
def _packed_multi_head_attention(ctx, node, inputs):
    """Per-sequence attention over packed tokens: our TIR kernel where it applies (sequence bounds
    from the mask, then one task per sequence and head), else a packed function (library.py)."""
    from leangraph.backends.tvm import packed_attention

    q, k, v, mask = inputs
    out = relax.TensorType([_dims(ctx.bb, q)[0], _dims(ctx.bb, v)[-1]], "float32")
    if not _uses_tir_attention(node):
        return [library_call(_packed_multi_head_attention_kernel(node), [q, k, v, mask], out)]
    attrs = attributes_of(node)
    heads, scale, causal = int(attrs["num_heads"]), float(attrs["scale"]), bool(attrs["causal"])
    head_size, value_size = (int(x.shape[-1]) // heads for x in (node.inputs[0], node.inputs[2]))
    mask_dtype = dtype_of(node.inputs[3])
    bounds_of = ctx.prim_func(f"leangraph_sequence_bounds_{mask_dtype}",
                              lambda: packed_attention.sequence_bounds(mask_dtype))
    bounds = ctx.bb.emit(relax.call_tir(bounds_of, [mask], relax.TensorType([_dims(ctx.bb, mask)[0] + 1], "int64")))
    scale_bits = np.float64(scale).view(np.uint64)  # the symbol must tell scales apart exactly
    name = f"leangraph_packed_attention_h{heads}_d{head_size}_v{value_size}_s{scale_bits:x}_c{int(causal)}"
    kernel = ctx.prim_func(name, lambda: packed_attention.attention(heads, head_size, value_size, scale, causal))
    return [relax.call_tir(kernel, [q, k, v, bounds], out)]


def _multi_head_attention_relax(ctx, node, inputs):
    q, k, v, mask = (inputs + [None])[:4]
    attrs = attributes_of(node)
    heads = int(attrs["num_heads"])

    def split(x):
        batch, length, width = _dims(ctx.bb, x)
        x = relax.op.reshape(x, (batch, length, heads, int(width) // heads))
        return relax.op.permute_dims(x, [0, 2, 1, 3])

    out = _attention(ctx, split(q), split(k), split(v), mask, float(attrs["scale"]), int(attrs["causal"]),
                     int(attrs["zero_nan_rows"]))
    batch, length, _ = _dims(ctx.bb, q)
    width = _dims(ctx.bb, v)[-1]
    return [relax.op.reshape(relax.op.permute_dims(out, [0, 2, 1, 3]), (batch, length, width))]


_BINARY = {"Add": relax.op.add, "Sub": relax.op.subtract, "Mul": relax.op.multiply, "Div": relax.op.divide}
_UNARY = {"Tanh": relax.op.tanh, "Sigmoid": relax.op.sigmoid, "Erf": relax.op.erf,
          "Neg": relax.op.negative, "Sqrt": relax.op.sqrt, "Exp": relax.op.exp}

def _broadcast_operands(ctx: Context, node: ir.Node, inputs: list) -> list:
    """Operands whose dims Relax cannot prove broadcastable (a dim named 'Min(512, seq)' against
    'seq') are cast to the output's dim: broadcasting says they are equal unless one is 1, and the
    cast is checked at run time."""
    out = node.outputs[0]
    if out.shape is None:
        return inputs
    target = ctx.shape_of(out)
    result = []
    for value, expr in zip(node.inputs, inputs):
        if value is None or value.shape is None or value.const_value is not None:
            result.append(expr)
            continue
        dims = ctx.shape_of(value)
        aligned = target[len(target) - len(dims):]
        fixed = [d if isinstance(d, int) or d is t or (isinstance(t, int) and t == 1) else t for d, t in zip(dims, aligned)]
        if any(f is not d for f, d in zip(fixed, dims)):
            expr = ctx.bb.match_cast(expr, relax.TensorType(fixed, dtype_of(value)))
        result.append(expr)
    return result


for _name, _fn in _BINARY.items():
    converts(_name)(lambda ctx, node, inputs, fn=_fn: [fn(*_broadcast_operands(ctx, node, inputs))])
for _name, _fn in _UNARY.items():
    converts(_name)(lambda ctx, node, inputs, fn=_fn: [fn(inputs[0])])


@converts("Relu")
def _relu_node(ctx, node, inputs):
    return [_relu(inputs[0], dtype_of(node.inputs[0]))]


ELEMENTWISE = frozenset(_BINARY) | frozenset(_UNARY) | {"Relu"}
"""ONNX ops whose converters read no input's constant value: they may take a graph input that has a
default (an initializer that is also an input), whose value the caller may override."""


@converts("MatMul")
def _matmul(ctx, node, inputs):
    a, b = inputs
    product = relax.op.matmul(a, b)
    a_dims, b_dims = _dims(ctx.bb, a), _dims(ctx.bb, b)
    if ctx.bb.normalize(product).ty.shape is None and len(a_dims) >= 2 and len(b_dims) >= 2:
        # Relax cannot prove that dims the exporter wrote differently agree (e.g. 'seq' and
        # '((batch*seq)//batch)'): take b's batch and reduction dims from a, checked at run time.
        b = _cast_to_broadcast(ctx, b, [*a_dims[:-2], a_dims[-1], b_dims[-1]])
        product = relax.op.matmul(a, b)
    return [product]


@converts("Softmax")
def _softmax(ctx, node, inputs):
    return [relax.op.nn.softmax(inputs[0], axis=node.attributes.get_int("axis", -1))]


def split_sizes(node: ir.Node) -> list[int] | None:
    """The part sizes of a Split node when they are known at compile time."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        sizes = node.inputs[1].const_value
        return None if sizes is None else [int(s) for s in sizes.numpy().reshape(-1)]
    x, parts = node.inputs[0], node.attributes.get_int("num_outputs", len(node.outputs))
    if x.shape is None:
        return None
    dim = x.shape[node.attributes.get_int("axis", 0) % len(x.shape)]
    if not isinstance(dim, int):
        return None
    chunk = -(-dim // parts)  # ONNX: equal parts, the last one smaller
    return [min(chunk, dim - i * chunk) for i in range(parts)]


@converts("Split")
def _split(ctx, node, inputs):
    """Split with constant sizes, or into num_outputs parts of a static dim (TVMBackend.supports
    takes no other form)."""
    x = inputs[0]
    axis = node.attributes.get_int("axis", 0) % len(_dims(ctx.bb, x))
    sizes = split_sizes(node)
    parts = ctx.bb.emit(relax.op.split(x, np.cumsum(sizes)[:-1].tolist(), axis=axis))
    return [relax.TupleGetItem(parts, index) for index in range(len(sizes))]


@converts("Transpose")
def _transpose(ctx, node, inputs):
    perm = node.attributes.get_ints("perm", None)
    return [relax.op.permute_dims(inputs[0], list(perm) if perm is not None else None)]
