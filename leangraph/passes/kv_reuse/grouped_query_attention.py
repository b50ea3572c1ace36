"""Grouped-query attention without repeated keys: ``Attention(q, repeat_kv(k), repeat_kv(v), mask)``
becomes ``Attention(q as [batch, kv_heads, groups * n, size], k, v, mask per row)`` in a
KV-cache step graph.

HF's ``repeat_kv`` (and ONNX Attention-23's grouped heads, as fuse_attention spells them) copies
each of the ``kv_heads`` key and value heads ``groups`` times (Unsqueeze at 2, Expand,
Reshape to [batch, kv_heads * groups, len, size]) so that attention sees one key head per query
head. With a cache that copy is made of the whole cache at every step. Here the ``groups`` query
heads sharing a key head become rows of one matrix product against it instead (query head
``h * groups + g``'s row ``i`` is row ``g * n + i`` of kv head ``h``: a plain reshape of the
query, whose heads are already in that order), and the mask's rows are repeated per group. Exact:
every query row still meets the same keys with the same mask.

Used on step graphs (after introduce_kv_cache, which caches the keys before the repeat, or on a
decoder that has its own cache), where positions no longer have to be traced: the rows then mix
positions and groups. Refused (left as it is) where attention is causal by attribute (top-left
causal alignment does not survive the row regrouping) or the shapes do not show the groups.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from leangraph.ir import fill_missing_dtypes
from leangraph.ir.registry import DOMAIN
from leangraph.passes.cleanup.dce import dce
from leangraph.passes.kv_reuse._constants import int64_const


def _ints(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None:
        return None
    return [int(x) for x in value.const_value.numpy().reshape(-1)]


def repeat_kv_source(value: ir.Value | None) -> tuple[ir.Value, int] | None:
    """``(x, groups)`` when ``value`` is ``repeat_kv(x, groups)``: Reshape(Expand(Unsqueeze(x, [2])))
    from [batch, kv_heads, len, size] to [batch, kv_heads * groups, len, size]; else None."""
    reshape = value.producer() if value is not None else None
    if reshape is None or reshape.op_type != "Reshape" or reshape.domain not in ("", "ai.onnx"):
        return None
    expand = reshape.inputs[0].producer()
    if expand is None or expand.op_type != "Expand" or expand.domain not in ("", "ai.onnx"):
        return None
    unsqueeze = expand.inputs[0].producer()
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or _ints(unsqueeze.inputs[1]) != [2]:
        return None
    source, out = unsqueeze.inputs[0], reshape.outputs[0]
    if source.shape is None or out.shape is None or len(source.shape) != 4 or len(out.shape) != 4:
        return None
    kv_heads, heads = source.shape[1], out.shape[1]
    if not isinstance(kv_heads, int) or not isinstance(heads, int) or heads % kv_heads or heads == kv_heads:
        return None
    if source.shape[3] != out.shape[3] or not isinstance(source.shape[3], int):
        return None
    return source, heads // kv_heads


def fold_repeat_kv(model: ir.Model) -> tuple[int, list[str]]:
    """Rewrite every leangraph::Attention reading repeated keys and values (in place); returns how
    many were rewritten and why each other one found was left as it is."""
    graph = model.graph
    left, folded = [], 0
    for node in [n for n in graph if n.domain == DOMAIN and n.op_type == "Attention"]:
        query, key, value = node.inputs[:3]
        mask = node.inputs[3] if len(node.inputs) > 3 else None
        keys, values = repeat_kv_source(key), repeat_kv_source(value)
        if keys is None and values is None:
            continue
        if keys is None or values is None or keys[1] != values[1]:
            left.append(f"'{node.name}': its key and value are not repeated alike")
            continue
        if node.attributes.get_int("causal", 0):
            left.append(f"'{node.name}': causal by attribute")
            continue
        (kv, groups), (vv, _) = keys, values
        kv_heads, size = kv.shape[1], query.shape[3] if query.shape is not None else None
        heads = kv_heads * groups
        if query.shape is None or len(query.shape) != 4 or query.shape[1] != heads:
            left.append(f"'{node.name}': the query {query.shape} does not have {heads} heads")
            continue
        mask_rows = None
        if mask is not None:
            if mask.shape is None or len(mask.shape) != 4 or mask.shape[1] not in (1, heads):
                left.append(f"'{node.name}': its mask {mask.shape} is not [batch, 1 or {heads}, n, keys]")
                continue
        new = []

        def add(op: str, inputs, name: str, **ints) -> ir.Value:
            attributes = [ir.AttrInt64(k, v) for k, v in ints.items()]
            created = ir.Node("", op, inputs, attributes=attributes, name=f"{node.name}_{name}")
            new.append(created)
            return created.outputs[0]

        rows_shape = int64_const(graph, f"kv_grouped_rows_{kv_heads}", [0, kv_heads, -1, size])
        rows = add("Reshape", [query, rows_shape], "grouped_rows")
        rows.type = query.type
        rows.shape = ir.Shape([query.shape[0], kv_heads, None, size])
        if mask is not None:
            if mask.shape[1] == heads:  # a mask per head: its rows regroup as the query's
                keys_dim = add("Shape", [mask], "mask_keys", start=3)
                target = add("Concat", [int64_const(graph, f"kv_grouped_mask_head_{kv_heads}", [0, kv_heads, -1]), keys_dim],
                             "mask_rows_shape", axis=0)
                mask_rows = add("Reshape", [mask, target], "grouped_mask")
            else:  # one mask for all heads: its rows repeated once per group
                lifted = add("Unsqueeze", [mask, int64_const(graph, "kv_grouped_axis_2", [2])], "mask_lifted")
                copies = add("Expand", [lifted, int64_const(graph, f"kv_grouped_copies_{groups}", [1, 1, groups, 1, 1])],
                             "mask_copies")
                keys_dim = add("Shape", [mask], "mask_keys", start=3)
                target = add("Concat", [int64_const(graph, "kv_grouped_mask_one", [0, 1, -1]), keys_dim],
                             "mask_rows_shape", axis=0)
                mask_rows = add("Reshape", [copies, target], "grouped_mask")
            mask_rows.type = mask.type
            mask_rows.shape = ir.Shape([mask.shape[0], kv_heads if mask.shape[1] == heads else 1, None, mask.shape[3]])
        grouped = ir.Node(DOMAIN, "Attention", [rows, kv, vv, mask_rows] if mask is not None else [rows, kv, vv],
                          attributes=list(node.attributes.values()), name=node.name,
                          metadata_props=dict(node.metadata_props))
        new.append(grouped)
        grouped.outputs[0].type = node.outputs[0].type
        grouped.outputs[0].shape = ir.Shape([query.shape[0], kv_heads, None, size])
        out_shape = int64_const(graph, f"kv_grouped_heads_{heads}", [0, heads, -1, size])
        out = add("Reshape", [grouped.outputs[0], out_shape], "heads")
        out.type, out.shape = node.outputs[0].type, node.outputs[0].shape
        ir.convenience.replace_nodes_and_values(graph, node, [node], new, [node.outputs[0]], [out])
        folded += 1
    if folded:
        graph.sort()
        dce(model)  # the repeats nothing reads any more
        fill_missing_dtypes(model)
    return folded, left
