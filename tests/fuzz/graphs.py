"""A generator of random valid graphs built from the ops the passes rewrite.

Each graph has a symbolic batch dim, float32 values, and a mix of: elementwise ops and
activations, constants that are exactly 0 or 1 (identities), broadcasting constants, Transpose
pairs, Reshape chains, Cast round trips (exact through float64, lossy through float16), Expand,
Unsqueeze/Squeeze, MatMul + bias + activation, LayerNormalization, GELU in its erf form, RMS-norm
arithmetic, duplicated subexpressions, Identity. The shape of every value is tracked, so every
graph is valid by construction.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


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

    def const(self, array: np.ndarray) -> str:
        name = self.name("c")
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], shape: tuple, *, operand: bool = True, **attrs) -> str:
        """Add a node; ``operand=False`` keeps its (non-float32) output from later picks."""
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name("n"), **attrs))
        if operand:
            self.values.append((out, shape))
        return out

    def pick(self) -> tuple[str, tuple]:
        return self.values[int(self.rng.integers(len(self.values)))]


def _unary(b: GraphBuilder):
    x, shape = b.pick()
    op = b.rng.choice(["Relu", "Tanh", "Sigmoid", "Neg", "Identity", "Softmax", "Gelu", "Abs"])
    attrs = {"axis": -1} if op == "Softmax" else {}
    return b.node(str(op), [x], shape, **attrs)


def _identity_const(b: GraphBuilder):
    x, shape = b.pick()
    op, value = [("Add", 0.0), ("Mul", 1.0), ("Sub", 0.0), ("Div", 1.0), ("Mul", 2.0), ("Add", 0.5)][int(b.rng.integers(6))]
    scalar_shape = () if b.rng.random() < 0.7 else (1,)
    c = b.const(np.full(scalar_shape, value, np.float32))
    inputs = [c, x] if op in ("Add", "Mul") and b.rng.random() < 0.5 else [x, c]
    return b.node(op, inputs, shape)


def _broadcast_const(b: GraphBuilder):
    x, shape = b.pick()
    c = b.const(b.rng.standard_normal(shape[-1]).astype(np.float32))
    return b.node(str(b.rng.choice(["Add", "Mul", "Sub"])), [x, c], shape)


def _binary(b: GraphBuilder):
    x, shape = b.pick()
    same = [v for v, s in b.values if s == shape]
    y = same[int(b.rng.integers(len(same)))]
    return b.node(str(b.rng.choice(["Add", "Mul", "Sub", "Max"])), [x, y], shape)


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


def _linear(b: GraphBuilder):
    x, shape = b.pick()
    n = int(b.rng.choice([3, 4, 6]))
    w = b.const((b.rng.standard_normal((shape[-1], n)) / math.sqrt(shape[-1])).astype(np.float32))
    out_shape = (*shape[:-1], n)
    y = b.node("MatMul", [x, w], out_shape)
    if b.rng.random() < 0.8:
        y = b.node("Add", [y, b.const(b.rng.standard_normal(n).astype(np.float32))], out_shape)
    if b.rng.random() < 0.5:
        y = b.node(str(b.rng.choice(["Relu", "Tanh", "Sigmoid", "Gelu"])), [y], out_shape)
    return y


def _layer_norm(b: GraphBuilder):
    x, shape = b.pick()
    scale = b.const(b.rng.standard_normal(shape[-1]).astype(np.float32))
    bias = b.const(b.rng.standard_normal(shape[-1]).astype(np.float32))
    return b.node("LayerNormalization", [x, scale, bias], shape, axis=-1, epsilon=1e-5)


def _erf_gelu(b: GraphBuilder):
    x, shape = b.pick()
    half = b.node("Mul", [x, b.const(np.float32(0.5))], shape)
    erf = b.node("Erf", [b.node("Div", [x, b.const(np.float32(math.sqrt(2)))], shape)], shape)
    return b.node("Mul", [half, b.node("Add", [erf, b.const(np.float32(1.0))], shape)], shape)


def _rms_norm(b: GraphBuilder):
    x, shape = b.pick()
    sq = b.node("Pow", [x, b.const(np.float32(2.0))], shape)
    mean = b.node("ReduceMean", [sq, b.const(np.array([-1], np.int64))], (*shape[:-1], 1), keepdims=1)
    rms = b.node("Sqrt", [b.node("Add", [mean, b.const(np.float32(1e-6))], (*shape[:-1], 1))], (*shape[:-1], 1))
    normalized = b.node("Mul", [x, b.node("Reciprocal", [rms], (*shape[:-1], 1))], shape)
    return b.node("Mul", [b.const(b.rng.standard_normal(shape[-1]).astype(np.float32)), normalized], shape)


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


STEPS = [_unary, _identity_const, _broadcast_const, _binary, _transpose, _reshape_chain, _cast_round_trip,
         _expand_same, _unsqueeze_squeeze, _linear, _layer_norm, _erf_gelu, _rms_norm, _duplicate]


def random_model(seed: int) -> tuple[onnx.ModelProto, list[list[np.ndarray]]]:
    """A random valid model and two input sets with different batch sizes."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(rng)
    rank = int(rng.integers(2, 4))
    shape = ("batch", *[int(d) for d in rng.integers(2, 6, rank - 1)])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    b.values.append(("x", shape))
    if rng.random() < 0.5:
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, list(shape)))
        b.values.append(("x2", shape))
    for _ in range(int(rng.integers(3, 14))):
        STEPS[int(rng.integers(len(STEPS)))](b)
    produced = [v for v in b.values if v[0] not in {i.name for i in inputs}] or [b.values[-1]]
    outputs = [produced[-1]] + ([produced[int(rng.integers(len(produced)))]] if rng.random() < 0.4 else [])
    unique = list(dict(outputs).items())
    graph = helper.make_graph(
        b.nodes, f"fuzz{seed}", inputs,
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in unique],
        initializer=b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    input_sets = []
    for batch in (2, 3):
        input_sets.append([rng.standard_normal((batch, *shape[1:])).astype(np.float32) for _ in inputs])
    return model, input_sets
