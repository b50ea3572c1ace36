"""What the learned cost model reads of a rewritten model and the inputs it is timed on.

Features come from the IR alone (no run): the linear layers' FLOPs by precision (rows x K x N, rows
from the layer input's shape with the call's dims bound: a packed graph's token dim is the real
tokens of the attention mask), attention score pairs (padded: batch x seq^2; packed: the sum of
each sequence's length squared), the op mix (fused leangraph ops, element-wise, data movement),
weight bytes, whether padding was removed, and the backend. Every size is summed over the input
sets of one timing pass and taken as log1p: latencies span four orders of magnitude and the ranker
splits on ratios.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from leangraph.ir.registry import DOMAIN

BACKENDS = ("onnxruntime", "tvm", "torch")
LINEAR_PRECISION = {"MatMulBiasAct": "fp32", "DynamicQuantLinear": "int8", "StaticQuantLinear": "int8",
                    "Bf16Linear": "bf16"}
ATTENTION = {"MultiHeadAttention", "PackedMultiHeadAttention"}
PACKED = {"PackedMultiHeadAttention", "PackTokens", "UnpackTokens"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Relu", "Tanh", "Erf", "Sigmoid", "Exp", "Sqrt", "Pow", "Where", "Cast",
               "Neg", "Softmax", "Gelu", "LayerNorm", "RMSNorm", "LayerNormalization", "ReduceMean", "ReduceSum"}
MOVEMENT = {"Reshape", "Transpose", "Gather", "Concat", "Slice", "Split", "Unsqueeze", "Squeeze", "Expand",
            "Shape", "GatherND", "ScatterND", "Tile"}

FEATURE_NAMES = (
    "log_padded_tokens", "log_real_tokens", "padding_fraction", "log_attention_pairs", "attention_layers",
    "log_flops_fp32", "log_flops_int8", "log_flops_bf16", "layers_fp32", "layers_int8", "layers_bf16",
    "log_other_matmul_flops", "nodes", "leangraph_ops", "elementwise_ops", "movement_ops", "log_weight_bytes",
    "packed", "input_sets", *(f"backend_{name}" for name in BACKENDS),
)


def _mask_of(model: ir.Model, inputs: Sequence[np.ndarray]) -> np.ndarray | None:
    for value, array in zip(model.graph.inputs, inputs):
        if "mask" in (value.name or "").lower() and isinstance(array, np.ndarray) and array.ndim == 2:
            return array != 0
    return None


def _bindings(model: ir.Model, inputs: Sequence[np.ndarray]) -> dict[str, int]:
    bound = {}
    for value, array in zip(model.graph.inputs, inputs):
        if value.shape is None or not isinstance(array, np.ndarray):
            continue
        for dim, size in zip(value.shape, array.shape):
            if not isinstance(dim, int) and getattr(dim, "value", None) is not None:
                bound.setdefault(str(dim.value), int(size))
    return bound


def _leading_rows(value: ir.Value | None, bound: dict[str, int], unknown: int) -> int:
    """The product of every dim of ``value`` but the last, unknown dims taken as ``unknown``."""
    if value is None or value.shape is None or len(value.shape) < 1:
        return unknown
    rows = 1
    for dim in list(value.shape)[:-1]:
        if isinstance(dim, int):
            rows *= dim
        else:
            rows *= bound.get(str(getattr(dim, "value", dim)), unknown)
    return rows


def features(model: ir.Model, backend: str, input_sets: Sequence[Sequence[np.ndarray]]) -> dict[str, float]:
    """The feature vector (FEATURE_NAMES) of ``model`` compiled for ``backend``, timed on ``input_sets``."""
    nodes = list(model.graph)
    packed = any(node.domain == DOMAIN and node.op_type in PACKED for node in nodes)
    totals = dict.fromkeys(("padded", "real", "pairs", "fp32", "int8", "bf16", "other"), 0.0)
    for inputs in input_sets:
        mask = _mask_of(model, inputs)
        bound = _bindings(model, inputs)
        first = next((a for a in inputs if isinstance(a, np.ndarray) and a.ndim >= 1), None)
        padded = int(mask.size) if mask is not None else int(first.shape[0]) if first is not None else 1
        real = int(mask.sum()) if mask is not None else padded
        lengths = mask.sum(axis=1) if mask is not None else None
        totals["padded"] += padded
        totals["real"] += real
        seq = mask.shape[1] if mask is not None else 0
        per_layer_pairs = (float((lengths.astype(np.float64) ** 2).sum()) if packed else float(mask.shape[0] * seq**2)) \
            if lengths is not None else 0.0
        for node in nodes:
            if node.domain == DOMAIN and node.op_type in LINEAR_PRECISION and len(node.inputs) > 1:
                weight = node.inputs[1]
                if weight is None or weight.shape is None or len(weight.shape) != 2:
                    continue
                k, n = (d if isinstance(d, int) else 0 for d in weight.shape)
                rows = _leading_rows(node.inputs[0], bound, real if packed else padded)
                totals[LINEAR_PRECISION[node.op_type]] += 2.0 * rows * k * n
            elif node.domain == DOMAIN and node.op_type in ATTENTION:
                hidden = node.inputs[0].shape[-1] if node.inputs[0].shape is not None else 0
                totals["pairs"] += per_layer_pairs * (hidden if isinstance(hidden, int) else 1)
            elif node.op_type in ("MatMul", "Gemm") and len(node.inputs) > 1 and node.inputs[1] is not None \
                    and node.inputs[1].const_value is not None and len(node.inputs[1].shape or ()) == 2:
                k, n = node.inputs[1].shape
                totals["other"] += 2.0 * _leading_rows(node.inputs[0], bound, padded) * k * n
    weight_bytes = sum(value.const_value.nbytes for value in model.graph.initializers.values()
                       if value.const_value is not None)
    counts = {name: sum(1 for node in nodes if node.domain == DOMAIN and LINEAR_PRECISION.get(node.op_type) == name)
              for name in ("fp32", "int8", "bf16")}
    found = {
        "log_padded_tokens": math.log1p(totals["padded"]),
        "log_real_tokens": math.log1p(totals["real"]),
        "padding_fraction": 1.0 - totals["real"] / max(totals["padded"], 1.0),
        "log_attention_pairs": math.log1p(totals["pairs"]),
        "attention_layers": float(sum(1 for node in nodes if node.domain == DOMAIN and node.op_type in ATTENTION)),
        "log_flops_fp32": math.log1p(totals["fp32"]),
        "log_flops_int8": math.log1p(totals["int8"]),
        "log_flops_bf16": math.log1p(totals["bf16"]),
        **{f"layers_{name}": float(count) for name, count in counts.items()},
        "log_other_matmul_flops": math.log1p(totals["other"]),
        "nodes": float(len(nodes)),
        "leangraph_ops": float(sum(1 for node in nodes if node.domain == DOMAIN)),
        "elementwise_ops": float(sum(1 for node in nodes if node.op_type in ELEMENTWISE)),
        "movement_ops": float(sum(1 for node in nodes if node.op_type in MOVEMENT)),
        "log_weight_bytes": math.log1p(weight_bytes),
        "packed": float(packed),
        "input_sets": float(len(input_sets)),
        **{f"backend_{name}": float(backend == name) for name in BACKENDS},
    }
    return {name: found[name] for name in FEATURE_NAMES}
