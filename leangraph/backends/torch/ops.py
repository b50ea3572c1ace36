"""One function per op the torch backend runs: ``fn(inputs, attrs) -> list of tensors``.

``inputs`` are torch tensors (None for an omitted optional input), ``attrs`` the node's attributes
as plain Python values (leangraph ops: with their defaults filled in). Only ops whose ONNX
semantics map one to one onto torch are here; the rest fall back to ONNX Runtime.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Op = Callable[[list, dict], list]
OPS: dict[tuple[str, str], Op] = {}

_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 6: torch.int32, 7: torch.int64, 9: torch.bool,
           10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def op(name: str, domain: str = ""):
    def register(fn: Op) -> Op:
        OPS[(domain, name)] = fn
        return fn

    return register


def _elementwise(name: str, fn) -> None:
    OPS[("", name)] = lambda inputs, attrs: [fn(*inputs)]


for _name, _fn in {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow, "Neg": torch.neg, "Sqrt": torch.sqrt,
    "Exp": torch.exp, "Log": torch.log, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Relu": torch.relu,
    "Erf": torch.erf, "Abs": torch.abs, "Reciprocal": torch.reciprocal, "Equal": torch.eq, "Less": torch.lt,
    "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge, "Not": torch.logical_not,
    "And": torch.logical_and, "Or": torch.logical_or, "Where": torch.where, "Identity": lambda x: x,
}.items():
    _elementwise(_name, _fn)


@op("Div")
def _div(inputs, attrs):
    a, b = inputs
    if a.dtype.is_floating_point:
        return [a / b]
    return [torch.div(a, b, rounding_mode="trunc")]  # ONNX integer Div truncates


@op("Cast")
def _cast(inputs, attrs):
    return [inputs[0].to(_DTYPES[attrs["to"]])]


@op("MatMul")
def _matmul(inputs, attrs):
    return [torch.matmul(*inputs)]


@op("Transpose")
def _transpose(inputs, attrs):
    x = inputs[0]
    perm = attrs.get("perm") or list(reversed(range(x.dim())))
    return [x.permute(*perm)]


@op("Softmax")
def _softmax(inputs, attrs):
    return [torch.softmax(inputs[0], dim=attrs.get("axis", -1))]


@op("Reshape")
def _reshape(inputs, attrs):
    x, shape = inputs
    target = shape.tolist()
    if not attrs.get("allowzero", 0):
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return [x.reshape(target)]


@op("Concat")
def _concat(inputs, attrs):
    return [torch.cat([x for x in inputs if x is not None], dim=attrs["axis"])]


@op("Split")
def _split(inputs, attrs):
    x, sizes = (inputs + [None])[:2]
    axis = attrs.get("axis", 0)
    if sizes is None:  # num_outputs equal parts, the last one smaller
        return list(torch.split(x, -(-x.shape[axis] // attrs["num_outputs"]), dim=axis))
    return list(torch.split(x, sizes.tolist(), dim=axis))


@op("Unsqueeze")
def _unsqueeze(inputs, attrs):
    x, axes = inputs
    rank = x.dim() + axes.numel()
    for axis in sorted(a % rank for a in axes.tolist()):
        x = x.unsqueeze(axis)
    return [x]


@op("Gather")
def _gather(inputs, attrs):
    data, indices = inputs
    axis = attrs.get("axis", 0) % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    flat = torch.index_select(data, axis, indices.reshape(-1))
    return [flat.reshape(*data.shape[:axis], *indices.shape, *data.shape[axis + 1:])]


# --- leangraph ops -------------------------------------------------------------------------------

_ACTIVATIONS = {
    "none": lambda y: y, "relu": torch.relu, "gelu": F.gelu, "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "silu": F.silu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
}


@op("MatMulBiasAct", "leangraph")
def _matmul_bias_act(inputs, attrs):
    a, b, bias = (inputs + [None])[:3]
    y = torch.matmul(a, b) if bias is None else torch.matmul(a, b) + bias
    return [_ACTIVATIONS[attrs["activation"]](y)]


@op("LayerNorm", "leangraph")
def _layer_norm(inputs, attrs):
    x, scale, bias = (inputs + [None])[:3]
    axis = attrs["axis"] % x.dim()
    return [F.layer_norm(x, x.shape[axis:], scale.expand(x.shape[axis:]) if scale is not None else None,
                         bias.expand(x.shape[axis:]) if bias is not None else None, attrs["epsilon"])]


@op("RMSNorm", "leangraph")
def _rms_norm(inputs, attrs):
    x, scale = inputs
    dims = tuple(range(attrs["axis"] % x.dim(), x.dim()))
    return [x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + attrs["epsilon"]) * scale]


@op("Gelu", "leangraph")
def _gelu(inputs, attrs):
    return [F.gelu(inputs[0], approximate="tanh" if attrs["approximate"] == "tanh" else "none")]


WRITTEN_OUT_SCORES_UP_TO = 512
"""Key lengths up to which attention writes its scores out (matmul, masked softmax, matmul): for the
short sequences of sentence batches faster than scaled_dot_product_attention's CPU kernel (MiniLM, a
32-sentence STS-B batch, 2 threads: 1.8 vs 2.7 ms); longer ones use SDPA, which does not hold them."""


def _attention(q, k, v, mask, scale, causal, empty_rows=True):
    """``empty_rows`` = False: the caller knows every row it keeps sees a key, or the op keeps NaN
    rows (zero_nan_rows = 0): no zeroing pass."""
    scale = scale or 1.0 / math.sqrt(q.shape[-1])
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    if causal:  # torch takes a mask or is_causal, not both: fold the triangle in
        visible = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        mask = visible if mask is None else (mask & visible if mask.dtype == torch.bool
                                             else mask.masked_fill(~visible, float("-inf")))
    # Without the zeroing, NaN rows must stay NaN: only the written-out softmax is sure to keep them
    if k.shape[-2] <= WRITTEN_OUT_SCORES_UP_TO or not empty_rows:
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores.add_(mask)
        out = torch.matmul(torch.softmax(scores, -1), v)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    # Rows with no visible key give 0, as leangraph::Attention defines.
    return torch.nan_to_num_(out, nan=0.0) if empty_rows else out


@op("Attention", "leangraph")
def _attention_op(inputs, attrs):
    q, k, v, mask = (inputs + [None])[:4]
    return [_attention(q, k, v, mask, attrs["scale"], attrs["causal"], bool(attrs["zero_nan_rows"]))]


def _heads(x, heads):
    return x.reshape(*x.shape[:-1], heads, -1).transpose(-3, -2)


@op("MultiHeadAttention", "leangraph")
def _multi_head_attention(inputs, attrs):
    q, k, v, mask = (inputs + [None])[:4]
    heads = attrs["num_heads"]
    out = _attention(_heads(q, heads), _heads(k, heads), _heads(v, heads), mask, attrs["scale"], attrs["causal"],
                     bool(attrs["zero_nan_rows"]))
    return [out.transpose(-3, -2).reshape(*q.shape[:-1], -1)]


def _rows(mask):
    """The flat positions (b * seq + s) of the valid tokens, in order."""
    return (mask.reshape(-1) != 0).nonzero().squeeze(1)


def _unpacked(packed, mask, rows):
    out = packed.new_zeros(mask.numel(), *packed.shape[1:])
    return out.index_copy_(0, rows, packed).reshape(*mask.shape, *packed.shape[1:])


@op("PackTokens", "leangraph")
def _pack(inputs, attrs):
    x, mask = inputs
    return [x.expand(*mask.shape, *x.shape[2:]).reshape(-1, *x.shape[2:]).index_select(0, _rows(mask))]


@op("UnpackTokens", "leangraph")
def _unpack(inputs, attrs):
    packed, mask = inputs
    return [_unpacked(packed, mask, _rows(mask))]


@op("PackedMultiHeadAttention", "leangraph")
def _packed_multi_head_attention(inputs, attrs):
    """The heads-first padded layout gathered straight from the packed rows viewed as [tokens * heads,
    head_size] (padded positions read token 0's rows: masked out as keys, dropped as queries), an
    additive key-padding bias, the output gathered back per (token, head). MiniLM, a 32-sentence
    STS-B batch, 2 threads: 1.3 ms vs 2.0 ms for zero-filled unpacking and head transposes."""
    q, k, v, mask = inputs
    if q.shape[0] == 0:
        return [v.new_zeros(0, v.shape[1])]
    heads, (batch, seq) = attrs["num_heads"], mask.shape
    valid = mask != 0
    source = (valid.reshape(-1).cumsum(0) - 1).clamp_(min=0).reshape(batch, 1, seq)
    rows = (source * heads + torch.arange(heads).reshape(1, heads, 1)).reshape(-1)

    def heads_first(x):
        return x.reshape(-1, x.shape[1] // heads).index_select(0, rows).reshape(batch, heads, seq, -1)

    if attrs.get("size_bias", 0):  # log(size) of each key (log 0 = -inf hides padding)
        bias = mask.to(q.dtype).log().reshape(batch, 1, 1, seq)
    else:
        bias = q.new_zeros(batch, 1, 1, seq).masked_fill_(~valid[:, None, None, :], float("-inf"))
    # A valid query always sees itself; padded rows may come out NaN and are dropped.
    out = _attention(heads_first(q), heads_first(k), heads_first(v), bias, attrs["scale"], attrs["causal"],
                     empty_rows=False)
    sequence, position = valid.nonzero().unbind(1)
    out_rows = (sequence * heads * seq + position)[:, None] + torch.arange(heads)[None] * seq
    return [out.reshape(-1, out.shape[-1]).index_select(0, out_rows.reshape(-1)).reshape(q.shape[0], -1)]
