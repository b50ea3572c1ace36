"""In-place decode: the KV-cache step graph (introduce_kv_cache.py) rewritten for a decode step
that writes each new key and value into a preallocated cache buffer instead of copying the
cache into a new ``present`` tensor.

The step graph grows the cache with ``Concat(past, new)``: every decode step copies every
sequence's keys and values (for 16 sequences of 500 positions, GPT-2-small shape: ~600 MB per
step, about as much as the weights read). Here each attention over ``Concat(past, new)`` becomes
ONNX Runtime's ``com.microsoft.GroupQueryAttention`` with ``past_key``/``past_value`` inputs
[batch, kv_heads, capacity, size] that the runtime binds to the same memory as the
``present_key``/``present_value`` outputs (its ``past_present_share_buffer`` mode): the kernel
appends the new position of each sequence at that sequence's own length (``seqlens_k``: per row,
cached positions + new - 1) and attends positions [0, length] of its row. Rows are right-padded
in the buffer: each sequence starts at position 0, whatever the others' lengths.

The rest of the graph keeps its whole-sequence view (``attention_mask`` and position ids over the
batch's longest past + new, left-padded as for the step graph): only the attention's own mask is
replaced, by the lengths, which is why the rewrite applies to graphs whose masks introduce_kv_cache
found to be causal + padding from ``attention_mask``. The past length it numbers positions from
becomes ``attention_mask``'s width minus the new tokens'. Grouped KV heads are GQA's own case;
multi-head attention is GQA with ``kv_heads = heads``; attention reading the cache through
repeat_kv (the step graph before fold_repeat_kv) reads the buffers' KV heads directly. Exact up to round-off; ONNX Runtime only
(the op is a contrib op), decode steps only (one new token per sequence).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from leangraph.ir import fill_missing_dtypes
from leangraph.ir.registry import DOMAIN
from leangraph.passes.cleanup.dce import dce
from leangraph.passes.kv_reuse._constants import int64_const
from leangraph.passes.kv_reuse.grouped_query_attention import repeat_kv_source
from leangraph.passes.kv_reuse.introduce_kv_cache import LAYOUT_KEY, KVCacheLayout

CONTRIB = "com.microsoft"
SEQLENS, TOTAL_LENGTH = "kv_seqlens_k", "kv_total_sequence_length"
CAPACITY = "capacity"


def cache_in_place(model: ir.Model, layout: KVCacheLayout) -> KVCacheLayout | str:
    """Rewrite the step graph ``model`` (in place; leave it as it was when not); return the layout
    of its buffers (``seq_axis`` 2: [batch, kv_heads, capacity, size] for every layer), or why not."""
    graph = model.graph
    inputs = {v.name: v for v in graph.inputs}
    outputs = {v.name: v for v in graph.outputs}
    if layout.prefix:
        return "skipped: the graph attends a shared prefix (its own part stays a Concat)"
    plans = []
    for index, ((past_k, past_v), (present_k, present_v)) in enumerate(zip(layout.past, layout.present)):
        grows = [outputs[present_k].producer(), outputs[present_v].producer()]
        if any(n is None or n.op_type != "Concat" or n.inputs[0] is not inputs[name] for n, name in
               zip(grows, (past_k, past_v))):
            return f"skipped: '{present_k}' is not the Concat of '{past_k}' and the new keys"
        node, reads_key = _attention_of(outputs[present_k])
        other, reads_value = _attention_of(outputs[present_v])
        if node is None or other is not node or node.inputs[1] is not reads_key or node.inputs[2] is not reads_value:
            return f"skipped: '{present_k}' and '{present_v}' are not read by one attention node alone"
        if node.attributes.get_int("causal", 0):
            return f"skipped: '{node.name}' is causal by attribute"
        plan = _plan(node, grows[0].inputs[1], grows[1].inputs[1])
        if isinstance(plan, str):
            return f"skipped: '{node.name}': {plan}"
        plans.append((index, node, grows, plan))
    past_readers = {c for name in (n for pair in layout.past for n in pair) for c in inputs[name].consumers()}
    concats = {n for _, _, grows, _ in plans for n in grows}
    length_nodes = {n for n in past_readers - concats if n.op_type == "Shape" and any(
        v.name == layout.past_length for v in n.outputs)}
    others = past_readers - concats - length_nodes
    if others:
        other = next(iter(others))
        return f"skipped: '{other.name}' ({other.op_type}) reads a past input; a buffer's size is not the past length"

    batch = inputs[layout.tokens].shape[0]
    seqlens = ir.Value(name=SEQLENS, type=ir.TensorType(ir.DataType.INT32), shape=ir.Shape([batch]))
    total = ir.Value(name=TOTAL_LENGTH, type=ir.TensorType(ir.DataType.INT32), shape=ir.Shape([]))
    graph.inputs.extend([seqlens, total])
    first = next(iter(graph))
    # the past length the rest of the graph numbers positions from: the mask's width minus the new tokens
    width = ir.Node("", "Shape", [inputs[layout.mask]], attributes=[ir.AttrInt64("start", 1), ir.AttrInt64("end", 2)],
                    name="in_place_mask_width")
    new = ir.Node("", "Shape", [inputs[layout.tokens]], attributes=[ir.AttrInt64("start", 1), ir.AttrInt64("end", 2)],
                  name="in_place_new_tokens")
    past_length = ir.Node("", "Sub", [width.outputs[0], new.outputs[0]], name="in_place_past_length",
                          outputs=[ir.Value(name="in_place_past_length")])
    for created in (width, new, past_length):
        graph.insert_before(first, created)
    for node in length_nodes:
        node.outputs[0].replace_all_uses_with(past_length.outputs[0])

    buffers = []
    for index, node, grows, (heads, kv_heads, size, q, k, v, replaced, to_bsnh) in plans:
        added: list[ir.Node] = []
        query_type = q.type

        def op(op_type: str, operands, name: str, **attrs) -> ir.Value:
            attributes = [ir.AttrInt64s(k, a) if isinstance(a, list) else ir.AttrInt64(k, a) for k, a in attrs.items()]
            created = ir.Node("", op_type, operands, attributes=attributes, name=f"{node.name}_{name}")
            added.append(created)
            return created.outputs[0]

        if to_bsnh:  # [batch, heads, n, size] -> [batch, n, heads * size]
            q, k, v = (op("Reshape", [op("Transpose", [x], f"{tag}_bsnh_t", perm=[0, 2, 1, 3]),
                                      int64_const(graph, f"in_place_bsnh_{h * size}", [0, 0, h * size])], f"{tag}_bsnh")
                       for x, tag, h in ((q, "q", heads), (k, "k", kv_heads), (v, "v", kv_heads)))
        pair = [ir.Value(name=name, type=inputs[name].type, shape=ir.Shape([batch, kv_heads, ir.SymbolicDim(CAPACITY), size]))
                for name in layout.past[index]]
        attention = ir.Node(CONTRIB, "GroupQueryAttention", [q, k, v, pair[0], pair[1], seqlens, total],
                            attributes=[ir.AttrInt64("num_heads", heads), ir.AttrInt64("kv_num_heads", kv_heads),
                                        ir.AttrFloat32("scale", node.attributes.get_float("scale", 0.0))],
                            num_outputs=3, name=f"{node.name}_in_place")
        added.append(attention)
        out, present_key, present_value = attention.outputs
        out.type, out.shape = query_type, ir.Shape([batch, None, heads * size])
        present_key.name, present_value.name = layout.present[index]
        for value in (present_key, present_value):
            value.type, value.shape = pair[0].type, pair[0].shape
        result = out
        if to_bsnh:  # back to [batch, heads, n, size]
            result = op("Transpose", [op("Reshape", [out, int64_const(graph, f"in_place_heads_{heads}_{size}",
                                                                 [0, 0, heads, size])], "out_heads")],
                        "out_bhsd", perm=[0, 2, 1, 3])
        result.shape, result.type = replaced.shape, replaced.type
        for created in added:
            graph.insert_before(node, created)
        buffers.append((pair, grows, (present_key, present_value)))
        replaced.replace_all_uses_with(result)
    # the buffers replace the past inputs, GroupQueryAttention's presents the Concat outputs
    for pair, grows, presents in buffers:
        for buffer, grow, present in zip(pair, grows, presents):
            old_input = grow.inputs[0]
            old_output = grow.outputs[0]
            position = graph.outputs.index(old_output)
            grow.outputs[0].name = f"{present.name}_grown"
            graph.outputs[position] = present
            graph.inputs[graph.inputs.index(old_input)] = buffer
    graph.sort()
    dce(model)  # the Concats, the old attention, the mask it read, repeat_kv
    model.opset_imports[CONTRIB] = 1
    fill_missing_dtypes(model)
    in_place = dataclasses.replace(layout, seq_axis=[2] * len(layout.past), past_length="in_place_past_length",
                                   seqlens_input=SEQLENS, total_length_input=TOTAL_LENGTH)
    model.metadata_props[LAYOUT_KEY] = in_place.to_json()
    return in_place


def _plan(node: ir.Node, new_key: ir.Value, new_value: ir.Value):
    """(heads, kv_heads, size, query, new key, new value, value the result replaces, whether the
    operands are [batch, heads, n, size] to pack) for one attention node, or why not."""
    query = node.inputs[0]
    for value in (query, new_key, new_value):
        if value.shape is None or value.dtype != ir.DataType.FLOAT:
            return f"'{value.name}' is not a float32 tensor of known rank"
    if node.op_type == "MultiHeadAttention":
        heads = node.attributes.get_int("num_heads", 0)
        width = query.shape[-1]
        if len(query.shape) != 3 or not isinstance(width, int) or not heads or width % heads:
            return "its query is not [batch, n, heads * size] with a static width"
        if new_key.shape[-1] != width or new_value.shape[-1] != width:
            return "its keys and values are not as wide as its query"
        return heads, heads, width // heads, query, new_key, new_value, node.outputs[0], False
    dims = [query.shape, new_key.shape, new_value.shape]
    if any(len(d) != 4 or not isinstance(d[1], int) or not isinstance(d[3], int) for d in dims):
        return "its query, keys and values are not [batch, heads, n, size] with static heads and size"
    heads, kv_heads, size = query.shape[1], new_key.shape[1], query.shape[3]
    if heads % kv_heads or new_value.shape[1] != kv_heads or new_key.shape[3] != size or new_value.shape[3] != size:
        return f"{heads} query heads of size {size} do not group over the keys {new_key.shape} and values {new_value.shape}"
    return heads, kv_heads, size, query, new_key, new_value, node.outputs[0], True


def _attention_of(present: ir.Value) -> tuple[ir.Node | None, ir.Value | None]:
    """The attention node reading ``present`` (as it is, or through repeat_kv: grouped KV heads)
    alone, and the value it reads; (None, None) otherwise."""
    value = present
    for _ in range(4):  # the attention, or Unsqueeze -> Expand -> Reshape -> the attention
        readers = value.consumers()
        if len(readers) != 1:
            return None, None
        if readers[0].domain == DOMAIN and readers[0].op_type in ("Attention", "MultiHeadAttention"):
            found = repeat_kv_source(value) if value is not present else (present, 1)
            return (readers[0], value) if found is not None and found[0] is present else (None, None)
        value = readers[0].outputs[0]
    return None, None
