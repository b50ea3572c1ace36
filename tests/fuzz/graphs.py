"""A generator of random valid graphs built from the ops the passes rewrite, and of inputs that
tell an exact rewrite from a nearly exact one.

Each graph has a symbolic batch dim, float32 values, and a mix of: elementwise ops and
activations, constants that are exactly 0, -0.0 or 1 (identities) next to ones that are nearly so
(1e-12, 1 + 1e-6, ones that broadcast to more dims), broadcasting constants, Transpose pairs,
Reshape chains, Cast round trips (exact through float64, lossy through float16), Expand,
Unsqueeze/Squeeze, MatMul + bias (of shape [N], [1, N], [1] or []) + activation, Gemm on flattened
rows, sibling linear layers, LayerNormalization, layer norms and RMS norms written out (BERT's
1e-12 epsilon, scales of shape [D], [1], [] or none, and near misses: mean - x, Pow 2.001, through
Casts), GELU in its erf and tanh forms with GELU's constants or constants 1e-3 off, attention
(softmax over the last axis or not, masked, NaN-guarded), Pad with axes between Transposes,
duplicated subexpressions, Identity. Some float initializers are also graph inputs (overridable
defaults); the second input set passes other values for them. The shape of every value is tracked,
so every graph is valid by construction.

Inputs are not only random normals: rows that are constant (zero variance: a layer norm without
its epsilon gives NaN there), large magnitudes, exact zeros (+0.0 and -0.0).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SQRT2 = math.sqrt(2)
ROOT = math.sqrt(2 / math.pi)


class GraphBuilder:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.values: list[tuple[str, tuple]] = []  # (name, shape); shape[0] is the batch (symbolic)
        self.counter = 0

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def const(self, array) -> str:
        name = self.name("c")
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], shape: tuple | None, *, operand: bool = True, **attrs) -> str:
        """Add a node; ``operand=False`` (or no shape) keeps its output from later picks (not float32,
        or an intermediate whose shape is not tracked)."""
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name("n"), **attrs))
        if operand and shape is not None:
            self.values.append((out, shape))
        return out

    def pick(self, rank: int | None = None) -> tuple[str, tuple]:
        pool = [v for v in self.values if rank is None or len(v[1]) == rank] or self.values
        return pool[int(self.rng.integers(len(pool)))]

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def normal(self, shape) -> np.ndarray:
        return self.rng.standard_normal(shape).astype(np.float32)


def _unary(b: GraphBuilder):
    x, shape = b.pick()
    op = b.choice(["Relu", "Tanh", "Sigmoid", "Neg", "Identity", "Softmax", "Gelu", "Abs"])
    attrs = {"axis": -1} if op == "Softmax" else {}
    return b.node(op, [x], shape, **attrs)


IDENTITIES = [("Add", 0.0), ("Add", -0.0), ("Mul", 1.0), ("Sub", 0.0), ("Sub", -0.0), ("Div", 1.0)]
NEAR_IDENTITIES = [("Add", 1e-12), ("Add", -1e-12), ("Add", 1e-8), ("Sub", 1e-12), ("Mul", 1 + 1e-6), ("Mul", 1 - 1e-6),
                   ("Div", 1 + 1e-6), ("Mul", 2.0), ("Add", 0.5)]


def _identity_const(b: GraphBuilder):
    """x op c with c an exact identity or a near one, of a shape that keeps x's (scalar, [1], a row,
    [1, ..., 1] of x's rank) or one that broadcasts x to one more dim (then squeezed away)."""
    x, shape = b.pick()
    op, value = b.choice(IDENTITIES if b.rng.random() < 0.5 else NEAR_IDENTITIES)
    shapes = [(), (1,), (shape[-1],), (1,) * len(shape), (1,) * (len(shape) + 1)]
    c_shape = shapes[int(b.rng.integers(len(shapes)))]
    c = b.const(np.full(c_shape, value, np.float32))
    inputs = [c, x] if op in ("Add", "Mul") and b.rng.random() < 0.5 else [x, c]
    if len(c_shape) <= len(shape):
        return b.node(op, inputs, shape)
    wide = b.node(op, inputs, (1, *shape), operand=False)
    return b.node("Squeeze", [wide, b.const(np.array([0], np.int64))], shape)


def _broadcast_const(b: GraphBuilder):
    x, shape = b.pick()
    c = b.const(b.normal(b.choice([(shape[-1],), (1,), ()])))
    return b.node(b.choice(["Add", "Mul", "Sub"]), [x, c], shape)


def _binary(b: GraphBuilder):
    x, shape = b.pick()
    same = [v for v, s in b.values if s == shape]
    y = same[int(b.rng.integers(len(same)))]
    return b.node(b.choice(["Add", "Mul", "Sub", "Max"]), [x, y], shape)


def _transpose(b: GraphBuilder):
    x, shape = b.pick()
    rank = len(shape)
    tail = list(b.rng.permutation(range(1, rank)) + 0)
    perm = [0, *[int(p) for p in tail]]
    t = b.node("Transpose", [x], tuple(shape[p] for p in perm), perm=perm)
    if b.rng.random() < 0.6:  # often undo it: a Transpose pair
        inverse = [perm.index(i) for i in range(rank)]
        return b.node("Transpose", [t], shape, perm=inverse)
    return t


def _reshape_chain(b: GraphBuilder):
    x, shape = b.pick()
    flat = b.node("Reshape", [x, b.const(np.array([0, -1], np.int64))], (shape[0], int(np.prod(shape[1:]))))
    return b.node("Reshape", [flat, b.const(np.array([0, *shape[1:]], np.int64))], shape)


def _cast_round_trip(b: GraphBuilder):
    x, shape = b.pick()
    via = TensorProto.DOUBLE if b.rng.random() < 0.5 else TensorProto.FLOAT16
    mid = b.node("Cast", [x], shape, operand=False, to=via)
    return b.node("Cast", [mid], shape, to=TensorProto.FLOAT)


def _expand_same(b: GraphBuilder):
    x, shape = b.pick()
    return b.node("Expand", [x, b.const(np.array([1] * len(shape), np.int64))], shape)


def _unsqueeze_squeeze(b: GraphBuilder):
    x, shape = b.pick()
    axis = b.const(np.array([len(shape)], np.int64))
    u = b.node("Unsqueeze", [x, axis], (*shape, 1))
    return b.node("Squeeze", [u, axis], shape)


def _bias(b: GraphBuilder, n: int) -> str:
    """A bias for a linear layer of width n: a row, or one that broadcasts ([1, n], [1], [])."""
    return b.const(b.normal(b.choice([(n,), (n,), (1, n), (1,), ()])))


def _linear(b: GraphBuilder):
    x, shape = b.pick()
    n = int(b.rng.choice([3, 4, 6]))
    w = b.const((b.normal((shape[-1], n)) / math.sqrt(shape[-1])).astype(np.float32))
    out_shape = (*shape[:-1], n)
    y = b.node("MatMul", [x, w], out_shape)
    if b.rng.random() < 0.8:
        y = b.node("Add", [y, _bias(b, n)] if b.rng.random() < 0.7 else [_bias(b, n), y], out_shape)
    if b.rng.random() < 0.5:
        y = b.node(b.choice(["Relu", "Tanh", "Sigmoid", "Gelu"]), [y], out_shape)
    return y


def _siblings(b: GraphBuilder):
    """Two or three linear layers reading one value (Q, K, V), biases of assorted shapes: MatMul + Add,
    or Gemm on the rows flattened once."""
    x, shape = b.pick()
    with_bias = b.rng.random() < 0.8
    gemm = b.rng.random() < 0.4
    if gemm:
        flat = b.node("Reshape", [x, b.const(np.array([-1, shape[-1]], np.int64))], None)
        target = b.node("Shape", [x], None, end=-1)
    out = None
    for _ in range(int(b.rng.integers(2, 4))):
        n = int(b.rng.choice([2, 3, 4]))
        w = b.const((b.normal((shape[-1], n)) / math.sqrt(shape[-1])).astype(np.float32))
        if gemm:
            rows = b.node("Gemm", [flat, w] + ([_bias(b, n)] if with_bias else []), None)
            restore = b.node("Concat", [target, b.const(np.array([n], np.int64))], None, axis=0)
            out = b.node("Reshape", [rows, restore], (*shape[:-1], n))
            continue
        out = b.node("MatMul", [x, w], (*shape[:-1], n))
        if with_bias:
            out = b.node("Add", [out, _bias(b, n)], (*shape[:-1], n))
    return out


def _gemm(b: GraphBuilder):
    """Gemm on x's rows flattened to [-1, K], restored after: how exporters write addmm on 3-D x."""
    x, shape = b.pick()
    k, n = shape[-1], int(b.rng.choice([2, 3, 5]))
    trans_b = int(b.rng.random() < 0.5)
    w = b.const((b.normal((n, k) if trans_b else (k, n)) / math.sqrt(k)).astype(np.float32))
    flat = b.node("Reshape", [x, b.const(np.array([-1, k], np.int64))], None)
    inputs = [flat, w] + ([_bias(b, n)] if b.rng.random() < 0.8 else [])
    attrs = {"transB": trans_b}
    if b.rng.random() < 0.2:
        attrs["alpha"] = 0.5
    gemm = b.node("Gemm", inputs, None, **attrs)
    leading = b.node("Shape", [x], None, end=-1)
    target = b.node("Concat", [leading, b.const(np.array([n], np.int64))], None, axis=0)
    return b.node("Reshape", [gemm, target], (*shape[:-1], n))


def _layer_norm(b: GraphBuilder):
    x, shape = b.pick()
    scale = b.const(b.normal(shape[-1]))
    bias = b.const(b.normal(shape[-1]))
    return b.node("LayerNormalization", [x, scale, bias], shape, axis=-1, epsilon=b.choice([1e-5, 1e-12]))


def _decomposed_layer_norm(b: GraphBuilder):
    """(x - mean) / sqrt(var + eps) * scale + bias, as BERT-era exporters wrote it; sometimes a near
    miss that is no layer norm (mean - x, Pow 2.001), sometimes computed from a Cast."""
    x, shape = b.pick()
    stats = (*shape[:-1], 1)
    axes = b.const(np.array([-1], np.int64))
    source = x
    if b.rng.random() < 0.15:  # through float64 and back
        source = b.node("Cast", [b.node("Cast", [x], shape, operand=False, to=TensorProto.DOUBLE)], shape,
                        to=TensorProto.FLOAT)
    mean = b.node("ReduceMean", [source, axes], stats, keepdims=1)
    centered = b.node("Sub", [mean, source] if b.rng.random() < 0.15 else [source, mean], shape)
    if b.rng.random() < 0.3:
        square = b.node("Mul", [centered, centered], shape)
    else:
        square = b.node("Pow", [centered, b.const(np.float32(2.001 if b.rng.random() < 0.1 else 2.0))], shape)
    var = b.node("ReduceMean", [square, axes], stats, keepdims=1)
    eps = b.const(np.full(b.choice([(), (1,)]), b.choice([1e-12, 1e-5, 1e-6]), np.float32))
    y = b.node("Div", [centered, b.node("Sqrt", [b.node("Add", [var, eps], stats)], stats)], shape)
    if b.rng.random() < 0.8:
        y = b.node("Mul", [y, b.const(b.normal(b.choice([(shape[-1],), (shape[-1],), (1,), ()])))], shape)
    if b.rng.random() < 0.8:
        y = b.node("Add", [y, b.const(b.normal(b.choice([(shape[-1],), (shape[-1],), (1,), ()])))], shape)
    return y


def _near(b: GraphBuilder, exact: float, off: float = 1e-3) -> float:
    """``exact``, its float32 value computed another way, or a value ``off`` (relative) from it."""
    return b.choice([exact, exact, float(np.float32(exact)) * (1 + 2**-23), exact * (1 + off)])


def _erf_gelu(b: GraphBuilder):
    x, shape = b.pick()
    half = b.node("Mul", [x, b.const(np.float32(b.choice([0.5, 0.5, 0.5 * (1 + 1e-6)])))], shape)
    erf = b.node("Erf", [b.node("Div", [x, b.const(np.float32(_near(b, SQRT2, 9e-4)))], shape)], shape)
    return b.node("Mul", [half, b.node("Add", [erf, b.const(np.float32(1.0))], shape)], shape)


def _tanh_gelu(b: GraphBuilder):
    x, shape = b.pick()
    cube = b.node("Pow", [x, b.const(np.float32(3.0))], shape)
    inner = b.node("Add", [x, b.node("Mul", [cube, b.const(np.float32(b.choice([0.044715, 0.044715, 0.0447])))],
                                     shape)], shape)
    t = b.node("Tanh", [b.node("Mul", [inner, b.const(np.float32(_near(b, ROOT, 5e-4)))], shape)], shape)
    half = b.node("Mul", [x, b.const(np.float32(0.5))], shape)
    return b.node("Mul", [half, b.node("Add", [t, b.const(np.float32(1.0))], shape)], shape)


def _rms_norm(b: GraphBuilder):
    x, shape = b.pick()
    stats = (*shape[:-1], 1)
    sq = b.node("Pow", [x, b.const(np.float32(2.0))], shape)
    mean = b.node("ReduceMean", [sq, b.const(np.array([-1], np.int64))], stats, keepdims=1)
    eps = b.const(np.float32(b.choice([1e-6, 1e-12, 1e-5])))
    rms = b.node("Sqrt", [b.node("Add", [mean, eps], stats)], stats)
    normalized = b.node("Mul", [x, b.node("Reciprocal", [rms], stats)], shape)
    scale = b.choice([(shape[-1],), (shape[-1],), (1,), ()])
    if b.rng.random() < 0.2:
        return normalized
    return b.node("Mul", [b.const(b.normal(scale)), normalized], shape)


def _attention(b: GraphBuilder):
    """softmax(q @ k^T * s (+ mask)) @ v over x's last two dims, q = k = v = x; the softmax over the
    last axis or another one, with or without the exporter's NaN guard."""
    x, shape = b.pick(rank=3)
    if len(shape) != 3:
        return _unary(b)
    _, seq, width = shape
    kt = b.node("Transpose", [x], (shape[0], width, seq), operand=False, perm=[0, 2, 1])
    scores = b.node("Mul", [b.node("MatMul", [x, kt], None), b.const(np.float32(_near(b, 1 / math.sqrt(width))))],
                    (shape[0], seq, seq), operand=False)
    masked, rank_raising = b.rng.random() < 0.5, False
    if masked:
        # a mask of shape [2, 1, S, S] raises the scores to rank 4: the key's last axis (2) is then
        # not the scores' last
        rank_raising = b.rng.random() < 0.3
        mask_shape = (2, 1, seq, seq) if rank_raising else (1, seq, seq)
        mask = np.where(b.rng.random(mask_shape) < 0.3, -1e9, 0.0).astype(np.float32)
        scores = b.node("Add", [scores, b.const(mask)], None)
    probs = b.node("Softmax", [scores], None, axis=b.choice([-1, -1, -1, 1, 2]))
    if masked or b.rng.random() < 0.5:
        probs = b.node("Where", [b.node("IsNaN", [probs], None), b.const(np.float32(0.0)), probs], None)
    if not rank_raising:
        return b.node("MatMul", [probs, x], shape)
    wide = b.node("MatMul", [probs, x], None)
    return b.node("ReduceSum", [wide, b.const(np.array([0], np.int64))], shape, keepdims=0)


def _pad_with_axes(b: GraphBuilder):
    """Transpose, Pad with an axes input (negative or not), Transpose back."""
    x, shape = b.pick()
    rank = len(shape)
    if rank < 3:
        return _unary(b)
    t = b.node("Transpose", [x], (shape[0], shape[2], shape[1], *shape[3:]), perm=[0, 2, 1, *range(3, rank)])
    axis = int(b.rng.integers(1, rank))
    before, after = (int(p) for p in b.rng.integers(0, 3, 2))
    padded = list((shape[0], shape[2], shape[1], *shape[3:]))
    padded[axis] += before + after
    axes = b.const(np.array([axis - rank if b.rng.random() < 0.5 else axis], np.int64))
    pad = b.node("Pad", [t, b.const(np.array([before, after], np.int64)), "", axes], tuple(padded), mode="constant")
    back = [padded[0], padded[2], padded[1], *padded[3:]]
    return b.node("Transpose", [pad], tuple(back), perm=[0, 2, 1, *range(3, rank)])


def _duplicate(b: GraphBuilder):
    if not any(n.output[0] in dict(b.values) for n in b.nodes):
        return _unary(b)
    shapes = dict(b.values)
    candidates = [n for n in b.nodes if n.output[0] in shapes]
    original = candidates[int(b.rng.integers(len(candidates)))]
    shape = shapes[original.output[0]]
    copy = helper.make_node(original.op_type, list(original.input), [b.name("dup")], name=b.name("n"))
    copy.attribute.extend(original.attribute)
    b.nodes.append(copy)
    b.values.append((copy.output[0], shape))
    return copy.output[0]


STEPS = [_unary, _identity_const, _identity_const, _broadcast_const, _binary, _transpose, _reshape_chain,
         _cast_round_trip, _expand_same, _unsqueeze_squeeze, _linear, _siblings, _gemm, _layer_norm,
         _decomposed_layer_norm, _decomposed_layer_norm, _erf_gelu, _tanh_gelu, _rms_norm, _attention,
         _pad_with_axes, _duplicate]


ROW_VALUES = [0.0, 1.0, -2.0, 3.0, 0.5]
"""Values of constant rows: sums of up to 5 copies are exact, so a row's mean is its value exactly
and its variance exactly 0 in every implementation."""


def input_values(rng: np.random.Generator, shape: tuple, kind: str) -> np.ndarray:
    """An input of ``shape``: random normals, or normals with constant rows along the last axis,
    scaled by up to 1e3, or with exact zeros (+0.0 and -0.0)."""
    x = rng.standard_normal(shape).astype(np.float32)
    if kind == "rows":
        rows = rng.random(shape[:-1]) < 0.5
        x[rows] = np.asarray(ROW_VALUES, np.float32)[rng.integers(len(ROW_VALUES), size=int(rows.sum()))][:, None]
    elif kind == "large":
        x *= np.float32(10 ** rng.uniform(1, 3))
    elif kind == "zeros":
        zeros = rng.random(shape) < 0.4
        x[zeros] = np.where(rng.random(int(zeros.sum())) < 0.5, np.float32(0.0), np.float32(-0.0))
    return x


INPUT_KINDS = ("normal", "rows", "large", "zeros")


def _make_overridable(b: GraphBuilder, graph_inputs: list, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """List up to two float32 initializers as graph inputs too (IR version >= 4: defaults the caller
    may override); (name, default) of each."""
    floats = [t for t in b.initializers if t.data_type == TensorProto.FLOAT]
    chosen = [floats[i] for i in rng.permutation(len(floats))[: int(rng.integers(1, 3))]] if floats else []
    overridable = []
    for tensor in chosen:
        graph_inputs.append(helper.make_tensor_value_info(tensor.name, TensorProto.FLOAT, list(tensor.dims)))
        overridable.append((tensor.name, numpy_helper.to_array(tensor)))
    return overridable


def random_model(seed: int) -> tuple[onnx.ModelProto, list[list[np.ndarray]]]:
    """A random valid model and two input sets with different batch sizes (for the graph inputs in
    order; an overridable initializer gets its default in the first set, another value in the second)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(rng)
    rank = int(rng.integers(2, 4))
    shape = ("batch", *[int(d) for d in rng.integers(2, 6, rank - 1)])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    b.values.append(("x", shape))
    if rng.random() < 0.5:
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, list(shape)))
        b.values.append(("x2", shape))
    data_inputs = len(inputs)
    for _ in range(int(rng.integers(3, 14))):
        STEPS[int(rng.integers(len(STEPS)))](b)
    produced = [v for v in b.values if v[0] not in {i.name for i in inputs}] or [b.values[-1]]
    # the values nothing reads (up to three, the last first) are outputs, so that few steps are dead
    read = {name for node in b.nodes for name in node.input}
    leaves = [v for v in reversed(produced) if v[0] not in read][:3] or [produced[-1]]
    outputs = leaves + ([produced[int(rng.integers(len(produced)))]] if rng.random() < 0.3 else [])
    unique = list(dict(outputs).items())
    overridable = _make_overridable(b, inputs, rng) if rng.random() < 0.3 else []
    graph = helper.make_graph(
        b.nodes, f"fuzz{seed}", inputs,
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in unique],
        initializer=b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    input_sets = []
    for index, batch in enumerate((2, 3)):
        kind = INPUT_KINDS[int(rng.integers(len(INPUT_KINDS)))] if index or rng.random() < 0.5 else "normal"
        values = [input_values(rng, (batch, *shape[1:]), kind) for _ in range(data_inputs)]
        for _, default in overridable:
            values.append(np.asarray(default if index == 0 else default + rng.standard_normal(default.shape), np.float32))
        input_sets.append(values)
    return model, input_sets
