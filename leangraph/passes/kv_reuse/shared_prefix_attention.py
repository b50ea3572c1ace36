"""Shared-prefix attention: the KV-cache step graph (introduce_kv_cache.py) rewritten so that a
prefix the whole batch shares is held once and attended once (Hydragen, FlashInfer's cascade).

Per attention node, inputs ``prefix_key_<i>`` / ``prefix_value_<i>`` (the keys and values of the
common prefix, [1, heads, prefix, size] whatever the past's layout: split into heads once by the
runtime, ``KVCacheLayout.prefix_heads``) join the graph, and the attention becomes leangraph::SharedPrefixAttention
over the prefix followed by the node's own keys (each sequence's positions after the prefix and
its new ones); its mask keeps the own keys' columns. The past inputs then hold each sequence's
positions after the prefix only; the past length the graph numbers positions from is the prefix's
plus those. ``attention_mask`` still covers the whole sequence (prefix, own past, new). Exact up to
round-off (the softmax is split in two parts and recombined by their statistics).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from leangraph.ir import fill_missing_dtypes
from leangraph.ir.registry import DOMAIN
from leangraph.passes.kv_reuse._constants import int64_const
from leangraph.passes.kv_reuse.introduce_kv_cache import LAYOUT_KEY, PAST, KVCacheLayout

_MAX = np.iinfo(np.int64).max


def share_prefix(model: ir.Model, layout: KVCacheLayout) -> KVCacheLayout | str:
    """Rewrite the step graph ``model`` (in place); return its new layout, or why not."""
    graph = model.graph
    present = {v.name: v for v in graph.outputs}
    values = {v.name: v for v in graph.inputs}
    nodes = []
    for (key_out, value_out), axis in zip(layout.present, layout.seq_axis):
        readers = [n for n in present[key_out].consumers() if n.domain == DOMAIN
                   and n.op_type in ("Attention", "MultiHeadAttention")]
        if len(readers) != 1 or readers[0].inputs[2] is not present[value_out]:
            return f"skipped: '{key_out}' is not read by one attention node with its value"
        node = readers[0]
        if node.op_type == "Attention" and node.attributes.get_int("causal", 0):
            return f"skipped: '{node.name}' is causal by attribute"
        nodes.append((node, axis))

    prefix, prefix_heads = [], []
    first = next(iter(graph))
    for index, (node, axis) in enumerate(nodes):
        pair = []
        heads = node.attributes.get_int("num_heads", 0) if node.op_type == "MultiHeadAttention" else 0
        prefix_heads.append(heads)
        for which, past_name in (("key", layout.past[index][0]), ("value", layout.past[index][1])):
            past = values[past_name]
            dims = list(past.shape)
            dims[0], dims[axis] = 1, ir.SymbolicDim("prefix")
            if heads:  # [1, prefix, H * size] -> [1, H, prefix, size]
                width = dims[2]
                if not isinstance(width, int) or width % heads:
                    return f"skipped: '{past_name}' has no static width divisible by its {heads} heads"
                dims = [1, heads, ir.SymbolicDim("prefix"), width // heads]
            value = ir.Value(name=f"prefix_{which}_{index}", type=past.type, shape=ir.Shape(dims))
            graph.inputs.append(value)
            pair.append(value)
        prefix.append(pair)

    # the graph numbers positions (and sizes its masks) from the prefix's length plus the own past
    (prefix_key0, _), axis0 = prefix[0], 2
    prefix_length = ir.Node("", "Shape", [prefix_key0], attributes=[ir.AttrInt64("start", axis0),
                                                                      ir.AttrInt64("end", axis0 + 1)],
                            name="shared_prefix_length")
    graph.insert_before(first, prefix_length)
    prefix_length.outputs[0].shape, prefix_length.outputs[0].type = ir.Shape([1]), ir.TensorType(ir.DataType.INT64)
    _count_the_prefix_in_past_shapes(graph, layout, prefix_length.outputs[0])

    end = int64_const(graph, "shared_prefix_end", [_MAX])
    for index, (node, axis) in enumerate(nodes):
        query, key, value = node.inputs[:3]
        mask = node.inputs[3] if len(node.inputs) > 3 else None
        inputs = [query, key, value, *prefix[index]]
        if mask is not None:  # the own keys' columns: after the prefix
            last = int64_const(graph, f"{node.name}_own_axis", [-1])
            own = ir.Node("", "Slice", [mask, prefix_length.outputs[0], end, last], name=f"{node.name}_own_mask")
            graph.insert_before(node, own)
            own.outputs[0].type = mask.type
            if mask.shape is not None:
                own.outputs[0].shape = ir.Shape([*mask.shape[:-1], ir.SymbolicDim(PAST)])
            inputs.append(own.outputs[0])
        heads = node.attributes.get_int("num_heads", 0) if node.op_type == "MultiHeadAttention" else 0
        shared = ir.Node(DOMAIN, "SharedPrefixAttention", inputs,
                         attributes=[ir.AttrInt64("num_heads", heads),
                                     ir.AttrFloat32("scale", node.attributes.get_float("scale", 0.0)),
                                     ir.AttrInt64("zero_nan_rows", node.attributes.get_int("zero_nan_rows", 1))],
                         name=node.name, metadata_props=dict(node.metadata_props))
        ir.convenience.replace_nodes_and_values(graph, node, [node], [shared], node.outputs, shared.outputs)
    graph.sort()
    fill_missing_dtypes(model)
    new = KVCacheLayout(**{**layout.__dict__, "prefix": [(k.name, v.name) for k, v in prefix],
                           "prefix_heads": prefix_heads})
    model.metadata_props[LAYOUT_KEY] = new.to_json()
    return new


def _count_the_prefix_in_past_shapes(graph: ir.Graph, layout: KVCacheLayout, prefix_length: ir.Value) -> None:
    """Every Shape read of a past input (introduce_kv_cache's past length; a decoder's own cache
    graph: HF's ``past_key_values.get_seq_length()``) gets the prefix's length added on the
    position axis: the past inputs now hold the positions after the prefix only."""
    axis_of = {name: axis for pair, axis in zip(layout.past, layout.seq_axis) for name in pair}
    for node in list(graph):
        source = node.inputs[0] if node.inputs else None
        if (node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or source is None
                or source.name not in axis_of or source.shape is None):
            continue
        rank, axis = len(source.shape), axis_of[source.name]
        start = node.attributes.get_int("start", 0)
        end = node.attributes.get_int("end", rank)
        start, end = (min(max(b + rank if b < 0 else b, 0), rank) for b in (start, end))
        if not start <= axis < end:
            continue
        one_hot = int64_const(graph, f"{node.name}_prefix_axis", np.eye(rank, dtype=np.int64)[axis][start:end])
        uses = list(node.outputs[0].uses())
        shift = ir.Node("", "Mul", [one_hot, prefix_length], name=f"{node.name}_prefix_shift")
        total = ir.Node("", "Add", [node.outputs[0], shift.outputs[0]], name=f"{node.name}_with_prefix")
        graph.insert_after(node, [shift, total])
        for value in (shift.outputs[0], total.outputs[0]):
            value.shape, value.type = node.outputs[0].shape, node.outputs[0].type
        for consumer, slot in uses:
            consumer.replace_input_with(slot, total.outputs[0])
