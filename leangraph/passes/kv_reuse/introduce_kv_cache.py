"""KV-cache introduction: a stateless causal decoder (``input_ids, attention_mask -> logits`` over
the whole sequence) becomes one step graph that serves both prefill and decode.

The step graph takes the new tokens ``input_ids`` [batch, new], the ``attention_mask`` of the
whole sequence [batch, past + new] (other [batch, seq] inputs, such as position_ids, also over the
whole sequence) and, per attention node, ``past_key_<i>`` / ``past_value_<i>`` (the keys and
values of the ``past`` earlier positions, in the layout the attention reads: [batch, past, width]
for leangraph::MultiHeadAttention, [batch, heads, past, size] for leangraph::Attention). It
returns the logits of the last position only ([batch, 1, vocab]) and ``present_key_<i>`` /
``present_value_<i>`` (past and new, to feed the next step). Prefill is the step with past = 0.

How, without reading how the model computes positions or masks (every exporter spells that
differently): the original graph still runs its position and mask arithmetic over the whole
sequence (``input_ids`` there is the new tokens after ``past`` zeros, only read for its shape by
that arithmetic), and the row-local part (embeddings, linear layers, norms, activations, head
split and merge, rotary embeddings: every node whose outputs at a position depend on its inputs
at that position only) runs on the new positions: the values entering it are sliced to positions
``past`` on, attention masks to the new query rows; attention reads the past keys and values
concatenated with the new ones. After the last attention only the last position is computed (the
LM head on one row, not on the whole prompt).

Where it applies: every attention node (leangraph::MultiHeadAttention or Attention, fused by
fuse_attention) is masked by a causal + padding mask computed from one [batch, seq] input (found by
probing, as padding removal finds it). When it does not apply, the result says why. Exact up to
round-off; the driver verifies the step graph against the stateless one on probe prompts (prefill,
single-token decode and a multi-token append).
"""

from __future__ import annotations

import collections
import dataclasses
import json

import numpy as np
import onnx_ir as ir

from leangraph.ir import fill_missing_dtypes
from leangraph.ir.registry import DOMAIN
from leangraph.passes.cleanup.dce import dce
from leangraph.passes.fusion._checks import rank as rank_of
from leangraph.passes.kv_reuse._constants import int64_const
from leangraph.passes.kv_reuse.grouped_query_attention import repeat_kv_source
from leangraph.passes.redundancy.padding_removal import TOKENWISE_ELEMENTWISE, padding_mask_of

LAYOUT_KEY = "leangraph.kv_cache"
"""Model metadata: JSON of the step graph's cache layout (``KVCacheLayout``)."""

NEW, PAST, TOTAL = "new_tokens", "past", "total"

_ELEMENTWISE = TOKENWISE_ELEMENTWISE | {"Equal"}
_LAST_AXIS_OPS = {"LayerNorm", "RMSNorm", "Gelu", "MatMulBiasAct"}
"""leangraph ops computing each position from that position along their last axis."""
_MAX = np.iinfo(np.int64).max


@dataclasses.dataclass
class KVCacheLayout:
    """What the runtime needs to drive the step graph."""

    tokens: str
    """The new-tokens input."""
    mask: str
    """The whole-sequence padding mask input."""
    past: list[tuple[str, str]]
    """Per attention node: (past key input, past value input)."""
    present: list[tuple[str, str]]
    """Per attention node: (present key output, present value output)."""
    seq_axis: list[int]
    """Per attention node: the position axis of its cache tensors."""
    logits: str
    other_inputs: list[str] = dataclasses.field(default_factory=list)
    """Other [batch, seq] inputs (position_ids): given over the whole sequence."""
    past_length: str = ""
    """The value holding the number of past positions ([1] int64)."""
    prefix: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """Per attention node: (prefix key input, prefix value input), where shared_prefix_attention
    rewrote the graph: then the past inputs hold each sequence's own positions after the prefix."""
    prefix_heads: list[int] = dataclasses.field(default_factory=list)
    """Per attention node: 0 when its prefix inputs have the past's layout [1, heads, len, size];
    H when the past is [1, len, H * size] and the prefix is given split into its H heads."""

    positions_new_only: bool = False
    """Whether the other inputs cover the new positions only (a decoder exported with its own
    cache, HF's convention) instead of the whole sequence."""
    flags: list[str] = dataclasses.field(default_factory=list)
    """Boolean inputs fed True (optimum's merged decoder's ``use_cache_branch``)."""
    seqlens_input: str = ""
    total_length_input: str = ""
    """Set where the past inputs are preallocated buffers [batch, kv_heads, capacity, size] that
    the present outputs share (in_place_cache.py): the inputs of each row's cached positions
    ([batch] int32: after the step, minus 1) and of the longest row's (int32 scalar, after it)."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> KVCacheLayout:
        data = json.loads(text)
        data["past"] = [tuple(p) for p in data["past"]]
        data["present"] = [tuple(p) for p in data["present"]]
        data["prefix"] = [tuple(p) for p in data.get("prefix", [])]
        return cls(**data)


def introduce_kv_cache(model: ir.Model) -> KVCacheLayout | str:
    """Rewrite ``model`` (in place) into its step graph; return its layout, or why not (then the
    model is untouched)."""
    graph = model.graph
    attention = [n for n in graph if n.domain == DOMAIN and n.op_type in ("MultiHeadAttention", "Attention")]
    if not attention:
        return "skipped: no leangraph::MultiHeadAttention or Attention in the graph (run fuse_attention first)"
    if len(graph.outputs) != 1:
        return f"skipped: the decoder has {len(graph.outputs)} outputs; one (the logits) is expected"
    mask = None
    for node in attention:
        if len(node.inputs) < 4 or node.inputs[3] is None:
            return f"skipped: '{node.name}' has no mask (a causal mask built from the attention_mask is expected)"
        if node.attributes.get_int("causal", 0):
            return f"skipped: '{node.name}' is causal by attribute (top-left aligned); a mask is expected"
        found = padding_mask_of(model, node)
        if isinstance(found, str):
            return f"skipped: '{node.name}': {found}"
        node_mask, causal = found
        if not causal:
            return f"skipped: '{node.name}' is not causal: not a decoder's attention"
        if mask is not None and node_mask is not mask:
            return f"skipped: '{node.name}' is masked by '{node_mask.name}', another input than '{mask.name}'"
        mask = node_mask
    if not mask.is_graph_input():
        return f"skipped: the padding mask '{mask.name}' is computed in the graph; an attention_mask input is expected"
    batch, seq = mask.shape[0], mask.shape[1]
    integer = (ir.DataType.INT64, ir.DataType.INT32)
    token_inputs = [v for v in graph.inputs if v is not mask and rank_of(v) == 2 and v.dtype in integer
                    and v.shape[0] == batch and v.shape[1] == seq]
    if not token_inputs:
        return "skipped: no [batch, seq] integer input besides the mask (input_ids is expected)"
    tokens = next((v for v in token_inputs if v.name == "input_ids"), token_inputs[0])
    others = [v for v in token_inputs if v is not tokens]

    # a value may also hold its positions flattened with the batch ([batch*seq, width]: OPT's MLP)
    flat_names = {f"{batch}*{seq}", f"{seq}*{batch}"}

    def is_flat(dim) -> bool:
        return isinstance(dim, ir.SymbolicDim) and dim.value in flat_names

    def seq_axes(value: ir.Value | None) -> list[int]:
        if value is None or value.shape is None:
            return []
        return [i for i, d in enumerate(value.shape) if d == seq or is_flat(d)]

    def token_axis(value: ir.Value | None) -> int | None:
        axes = seq_axes(value)
        return axes[0] if len(axes) == 1 else None

    def row_local(node: ir.Node) -> bool:
        """Whether each position of the node's outputs depends on the same position of its inputs only."""
        if node in attention_set:
            return True
        outputs = [v for v in node.outputs if v is not None]
        if not outputs or any(token_axis(v) is None for v in outputs):
            return False
        out_axis, out_rank = token_axis(outputs[0]), rank_of(outputs[0])
        onnx = node.domain in ("", "ai.onnx")
        inputs = [v for v in node.inputs if v is not None]
        if onnx and node.op_type in _ELEMENTWISE:
            # right-aligned broadcasting: a token input's position axis lines up with the output's;
            # the others have size 1 (or no dim) there
            for v in inputs:
                axis, r = token_axis(v), rank_of(v)
                if r is None:
                    return False
                aligned = out_axis - (out_rank - r)
                if axis is not None and axis != aligned:
                    return False
                if axis is None and 0 <= aligned < r and v.shape[aligned] != 1:
                    return False
            return True
        if onnx and node.op_type == "MatMul":
            axis = token_axis(inputs[0])
            return axis is not None and axis < rank_of(inputs[0]) - 1 and not seq_axes(inputs[1])
        if onnx and node.op_type == "Gather":
            data, indices = inputs
            axis = node.attributes.get_int("axis", 0) % max(rank_of(data) or 1, 1)
            if not seq_axes(data):  # an embedding table read at each position's token
                return axis == 0 and token_axis(indices) is not None
            # picking along another axis (one of a stacked q/k/v) by indices that are no positions
            data_axis = token_axis(data)
            return data_axis is not None and axis != data_axis and not seq_axes(indices)
        if onnx and node.op_type == "GatherND":
            data, indices = inputs
            depth = indices.shape[-1] if indices.shape is not None and len(indices.shape) else None
            data_axis = token_axis(data)
            return (node.attributes.get_int("batch_dims", 0) == 0 and isinstance(depth, int)
                    and data_axis is not None and depth <= data_axis and not seq_axes(indices))
        if onnx and node.op_type == "Transpose":
            perm = node.attributes.get_ints("perm", None)
            return perm is not None and token_axis(inputs[0]) == perm[out_axis]
        if onnx and node.op_type == "Reshape":
            source, out, axis = inputs[0], outputs[0], token_axis(inputs[0])
            if axis is None:
                return False
            flat_in, flat_out = is_flat(source.shape[axis]), is_flat(out.shape[out_axis])
            if not flat_in and not flat_out:
                return _regroups_around(source, out, axis, out_axis)
            # [batch, seq, ...] <-> [batch*seq, ...]: batch alone before the positions, static after
            unflat, flat, flat_axis = (out, source, axis) if flat_in else (source, out, out_axis)
            unflat_axis = out_axis if flat_in else axis
            if flat_in == flat_out or flat_axis != 0 or list(unflat.shape[:unflat_axis]) != [batch]:
                return False
            after = list(unflat.shape[unflat_axis + 1:]) + list(flat.shape[1:])
            return all(isinstance(d, int) for d in after) and np.prod(unflat.shape[unflat_axis + 1:]) == np.prod(
                flat.shape[1:])
        if onnx and node.op_type in ("Split", "Concat", "Softmax"):
            rank = rank_of(inputs[0])
            axis = node.attributes.get_int("axis", 0 if node.op_type != "Softmax" else -1) % rank
            return all(token_axis(v) == out_axis for v in inputs if seq_axes(v)) and axis != out_axis and all(
                token_axis(v) is not None for v in (inputs if node.op_type == "Concat" else inputs[:1]))
        if onnx and node.op_type == "Slice":
            axes = inputs[3].const_value.numpy().tolist() if len(inputs) > 3 and inputs[3].const_value is not None \
                else None
            axis = token_axis(inputs[0])
            return axes is not None and axis is not None and all(a % rank_of(inputs[0]) != axis for a in axes)
        if onnx and node.op_type == "Expand":  # repeat_kv: only static dims of size 1 grow
            source = inputs[0]
            axis, r = token_axis(source), rank_of(source)
            if axis is None or r is None or axis != out_axis - (out_rank - r):
                return False
            padded = [1] * (out_rank - r) + list(source.shape)
            return all(d == o or (d == 1 and isinstance(o, int)) for d, o in zip(padded, outputs[0].shape))
        if onnx and node.op_type in ("Unsqueeze", "Squeeze"):
            return token_axis(inputs[0]) is not None
        if node.domain == DOMAIN and node.op_type in _LAST_AXIS_OPS:
            first = inputs[0]
            axis = token_axis(first)
            return (axis is not None and axis < rank_of(first) - 1 and node.attributes.get_int("axis", -1) in (-1, rank_of(first) - 1)
                    and all(not seq_axes(v) for v in inputs[1:]))
        return False

    attention_set = set(attention)
    # the row-local region: from the attention nodes and the token input's readers, grown both ways
    region: set[ir.Node] = set(attention)
    work = collections.deque(region)
    for consumer in tokens.consumers():
        if row_local(consumer):
            region.add(consumer)
            work.append(consumer)
    while work:
        node = work.popleft()
        mask_input = node.inputs[3] if node in attention_set else None
        for value in node.inputs:
            producer = value.producer() if value is not None and value is not mask_input else None
            if producer is not None and producer not in region and row_local(producer) and all(
                    c in region or row_local(c) for out in producer.outputs for c in out.consumers()):
                region.add(producer)
                work.append(producer)
        for value in node.outputs:
            for consumer in value.consumers():
                if consumer not in region and row_local(consumer):
                    region.add(consumer)
                    work.append(consumer)
    def describe(node: ir.Node) -> str:
        def shapes(values):
            return ", ".join(str(v.shape) if v is not None and v.shape is not None else "?" for v in values)
        return (f"'{node.name}' ({node.op_type}: [{shapes(node.inputs)}] -> [{shapes(node.outputs)}]) is not seen to "
                f"compute each position from that position alone (position dim '{seq}')")

    def first_blocker(value: ir.Value | None) -> ir.Node | None:
        """Up from ``value``: the first node outside the region that is not row-local, on the way to it."""
        seen, stack = set(), [value.producer()] if value is not None else []
        while stack:
            node = stack.pop()
            if node is None or node in region or node in seen:
                continue
            seen.add(node)
            if not row_local(node) and any(token_axis(v) is not None for v in node.outputs):
                return node
            stack.extend(v.producer() for v in node.inputs if v is not None)
        return None

    logits = graph.outputs[0]
    if logits.producer() not in region or token_axis(logits) != 1:
        blocker = first_blocker(logits)
        return (f"skipped: the output '{logits.name}' is not computed per position from the decoder's layers"
                + (f": {describe(blocker)}" if blocker is not None else ""))
    # a row-local node whose result is also read by a node outside (which needs every position, as
    # the rotary tables' position arithmetic does) stays outside too: its result enters sliced
    left_for: dict[ir.Node, ir.Node] = {}  # a node left out -> the outside reader that made it leave
    shrinking = True
    while shrinking:
        shrinking = False
        for node in list(region):
            outside = [c for v in node.outputs for c in v.consumers()
                       if c not in region and c.op_type not in ("Shape", "Size")]
            if not outside:
                continue
            if node in attention_set:
                reader = outside[0]
                while reader in left_for:
                    reader = left_for[reader]
                return (f"skipped: the output of '{node.name}' is also read by '{outside[0].name}' "
                        f"({outside[0].op_type}), which needs every position: {describe(reader)}")
            left_for[node] = outside[0]
            region.discard(node)
            shrinking = True

    # nodes after the last attention: they only need the last position
    feeds_attention: set[ir.Node] = set()
    stack = [v.producer() for node in attention for v in node.inputs if v is not None]
    while stack:
        node = stack.pop()
        if node is None or node in feeds_attention:
            continue
        feeds_attention.add(node)
        stack.extend(v.producer() for v in node.inputs if v is not None)
    last_only = {n for n in region if n not in feeds_attention and n not in attention_set}

    def flat_input(node: ir.Node, outside) -> bool:
        return any(v is not None and token_axis(v) is not None and is_flat(v.shape[token_axis(v)])
                   and v.producer() not in outside for v in node.inputs)

    for node in region:
        if node not in attention_set and flat_input(node, region):
            return (f"skipped: '{node.name}' ({node.op_type}) reads positions flattened with the batch from outside "
                    f"the decoder's layers; they cannot be cut to the new positions")
    # the last position alone cannot be cut from a flattened value: nodes reading one from a node
    # computing every position compute every position too
    trimming = True
    while trimming:
        trimming = False
        for node in list(last_only):
            if flat_input(node, last_only):
                last_only.discard(node)
                trimming = True

    tokens_name = tokens.name
    past_length = _rewrite(model, tokens, mask, others, attention, region, last_only, token_axis, is_flat)
    layout = KVCacheLayout(tokens=tokens_name, mask=mask.name,
                           past=[(f"past_key_{i}", f"past_value_{i}") for i in range(len(attention))],
                           present=[(f"present_key_{i}", f"present_value_{i}") for i in range(len(attention))],
                           seq_axis=[1 if n.op_type == "MultiHeadAttention" else 2 for n in attention],
                           logits=logits.name, other_inputs=[v.name for v in others], past_length=past_length)
    model.metadata_props[LAYOUT_KEY] = layout.to_json()
    return layout


def _regroups_around(source: ir.Value, out: ir.Value, axis: int | None, out_axis: int) -> bool:
    """Whether a Reshape keeps the position axis and regroups only the dims before it (static, or
    a symbolic dim kept at its index: copied by 0) and after it (static): each position's values
    stay that position's."""
    if axis is None or source.shape is None or out.shape is None:
        return False
    before, out_before = list(source.shape[:axis]), list(out.shape[:out_axis])
    kept = [d for i, d in enumerate(out_before) if not isinstance(d, int)]
    if any(not isinstance(d, int) and (i >= len(before) or before[i] != d) for i, d in enumerate(out_before)):
        return False
    if [d for d in before if not isinstance(d, int)] != kept:
        return False
    if np.prod([d for d in before if isinstance(d, int)]) != np.prod([d for d in out_before if isinstance(d, int)]):
        return False
    after, out_after = list(source.shape[axis + 1:]), list(out.shape[out_axis + 1:])
    return all(isinstance(d, int) for d in after + out_after) and np.prod(after) == np.prod(out_after)


_ROW_WISE = {"Where", "And", "Or", "Not", "Xor", "Cast", "Add", "Sub", "Mul", "Div", "Equal", "Less", "LessOrEqual",
             "Greater", "GreaterOrEqual", "Neg", "Max", "Min", "IsNaN", "Expand"}
"""Ops the mask's row slice is moved above: they broadcast, so the rows of their result are
computed from the rows of the inputs that have rows (Expand: with its target's row count set to 1)."""


def _rows_computed(graph: ir.Graph, value: ir.Value, axis: int, cut, new_dim, before: ir.Node) -> ir.Value:
    """``cut(value, axis)`` (the new query rows of the attention mask), computed from the rows of
    the inputs instead: HF builds the mask as [batch, 1, seq, seq]; one decode step needs one row
    of it. Moved up through broadcasting ops (copies of them: the originals stay for other
    readers, dce drops them otherwise) while the rows axis lines up; sliced where it stops."""
    producer = value.producer()
    out_rank = len(value.shape) if value.shape is not None else None
    if (producer is None or producer.domain not in ("", "ai.onnx") or producer.op_type not in _ROW_WISE
            or len(producer.outputs) != 1 or out_rank is None):
        return cut(value, axis)
    inputs = []
    for slot, source in enumerate(producer.inputs):
        if producer.op_type == "Expand" and slot == 1:
            inputs.append(_with_one_at(graph, source, axis, before))
            continue
        if source is None or source.shape is None:
            return cut(value, axis)
        at = axis - (out_rank - len(source.shape))
        if at < 0 or source.shape[at] == 1:
            if producer.op_type == "Expand":  # the rows come from the target: cannot be had above it
                return cut(value, axis)
            inputs.append(source)  # broadcast along the rows
        elif source.shape[at] == value.shape[axis]:
            inputs.append(_rows_computed(graph, source, at, cut, new_dim, before))
        else:
            return cut(value, axis)
    copy = ir.Node(producer.domain, producer.op_type, inputs, attributes=list(producer.attributes.values()),
                   name=f"{producer.name}_new_rows")
    graph.insert_before(before, copy)
    out = copy.outputs[0]
    out.type = value.type
    dims = list(value.shape)
    dims[axis] = new_dim
    out.shape = ir.Shape(dims)
    return out


def _with_one_at(graph: ir.Graph, target: ir.Value, axis: int, before: ir.Node) -> ir.Value:
    """An Expand target with 1 at ``axis`` (the input's own size is kept there)."""
    axis_value = int64_const(graph, f"kv_cache_axis_{axis}", np.array([axis], np.int64))
    one = int64_const(graph, "kv_cache_one", np.array([1], np.int64))
    node = ir.Node("", "ScatterElements", [target, axis_value, one], attributes=[ir.AttrInt64("axis", 0)],
                   name=f"{target.name}_one_at_{axis}")
    graph.insert_before(before, node)
    node.outputs[0].shape, node.outputs[0].type = target.shape, target.type
    return node.outputs[0]


def _keep_whole_shapes(graph: ir.Graph, region: set[ir.Node], axis_of: dict, mask: ir.Value, batch_len: ir.Value,
                       is_flat) -> None:
    """Shape and Size readers outside the region of a value the region now computes for the new
    (or last) positions only: they read the whole sequence's shape, as before the rewrite (the
    TorchScript exporter numbers GPT-2's positions by Range over ``inputs_embeds.shape[1]``)."""
    total = None
    for node in list(graph):
        if node not in region:
            continue
        for value in node.outputs:
            axis = axis_of.get(value)
            readers = [c for c in value.consumers() if c not in region and c.op_type in ("Shape", "Size")
                       and c.domain in ("", "ai.onnx")]
            if axis is None or not readers:
                continue
            if total is None:
                total = ir.Node("", "Shape", [mask], attributes=[ir.AttrInt64("start", 1), ir.AttrInt64("end", 2)],
                                name="kv_cache_total_length")
                graph.insert_before(next(iter(graph)), total)
            length = total.outputs[0]
            if is_flat(value.shape[axis]):
                flat = ir.Node("", "Mul", [batch_len, length], name=f"{value.name}_whole_flat_length")
                graph.insert_before(readers[0], flat)
                length = flat.outputs[0]
            for reader in readers:
                full = ir.Node("", "Shape", [value], name=f"{reader.name}_new_shape")
                axis_value = int64_const(graph, f"kv_cache_axis_{axis}", np.array([axis], np.int64))
                whole = ir.Node("", "ScatterElements", [full.outputs[0], axis_value, length],
                                attributes=[ir.AttrInt64("axis", 0)], name=f"{reader.name}_whole_shape")
                if reader.op_type == "Size":
                    result = ir.Node("", "ReduceProd", [whole.outputs[0]], attributes=[ir.AttrInt64("keepdims", 0)],
                                     name=f"{reader.name}_whole")
                else:
                    rank = len(value.shape)
                    start = reader.attributes.get_int("start", 0)
                    stop = reader.attributes.get_int("end", rank)
                    bounds = [int64_const(graph, f"kv_cache_index_{b}", np.array([b], np.int64)) for b in (start, stop)]
                    result = ir.Node("", "Slice", [whole.outputs[0], *bounds], name=f"{reader.name}_whole")
                for added in (full, whole, result):
                    graph.insert_before(reader, added)
                result.outputs[0].shape, result.outputs[0].type = reader.outputs[0].shape, reader.outputs[0].type
                reader.outputs[0].replace_all_uses_with(result.outputs[0])
                graph.remove(reader, safe=True)


def _rewrite(model, tokens, mask, others, attention, region, last_only, token_axis, is_flat) -> str:
    graph = model.graph
    batch = mask.shape[0]
    new_dim, past_dim = ir.SymbolicDim(NEW), ir.SymbolicDim(PAST)
    # shapes and axes before anything changes
    axis_of = {v: token_axis(v) for node in region for v in [*node.inputs, *node.outputs] if v is not None}
    first = next(iter(graph))

    def add(node: ir.Node, before: ir.Node) -> ir.Value:
        graph.insert_before(before, node)
        return node.outputs[0]

    # per attention node: past inputs, present outputs
    def cache_point(node: ir.Node, slot: int) -> tuple[ir.Value, tuple[ir.Node, ...]]:
        """What to cache for the attention's key or value: the keys before repeat_kv (grouped KV
        heads: the cache holds each KV head once) with the repeat's nodes, or the input itself."""
        found = repeat_kv_source(node.inputs[slot])
        if found is not None:
            reshape = node.inputs[slot].producer()
            expand = reshape.inputs[0].producer()
            unsqueeze = expand.inputs[0].producer()
            chain = (unsqueeze, expand, reshape)
            if all(n in region and len(n.outputs[0].consumers()) == 1 for n in chain):
                return found[0], chain
        return node.inputs[slot], ()

    points = [{slot: cache_point(node, slot) for slot in (1, 2)} for node in attention]
    past_inputs = []
    for index, node in enumerate(attention):
        axis = 1 if node.op_type == "MultiHeadAttention" else 2
        pair = []
        for which, source in (("key", points[index][1][0]), ("value", points[index][2][0])):
            shape = list(source.shape)
            shape[axis] = past_dim
            past = ir.Value(name=f"past_{which}_{index}", type=source.type, shape=ir.Shape(shape))
            graph.inputs.append(past)
            pair.append(past)
        past_inputs.append((pair, axis))
    # the past length, from the first past key
    (first_past, _), first_axis = past_inputs[0]
    shape_of = add(ir.Node("", "Shape", [first_past], attributes=[ir.AttrInt64("start", first_axis),
                                                                    ir.AttrInt64("end", first_axis + 1)],
                           name="kv_cache_past_length"), first)
    past_len = shape_of  # [1] int64

    # the new tokens input; the rest of the graph reads the whole sequence: zeros, then the new tokens
    new_tokens = ir.Value(name=tokens.name, type=tokens.type, shape=ir.Shape([batch, new_dim]))
    tokens.name = f"{tokens.name}_whole"
    batch_len = add(ir.Node("", "Shape", [new_tokens], attributes=[ir.AttrInt64("start", 0), ir.AttrInt64("end", 1)],
                            name="kv_cache_batch"), first)
    zeros_shape = add(ir.Node("", "Concat", [batch_len, past_len], attributes=[ir.AttrInt64("axis", 0)],
                              name="kv_cache_zeros_shape"), first)
    zeros = add(ir.Node("", "ConstantOfShape", [zeros_shape],
                        attributes=[ir.AttrTensor("value", ir.tensor(np.zeros(1, tokens.dtype.numpy())))],
                        name="kv_cache_leading_zeros"), first)
    whole = add(ir.Node("", "Concat", [zeros, new_tokens], attributes=[ir.AttrInt64("axis", 1)],
                        name="kv_cache_whole_tokens"), first)
    whole.shape, whole.type = ir.Shape([batch, mask.shape[1]]), tokens.type
    position = graph.inputs.index(tokens)
    tokens.replace_all_uses_with(whole)
    axis_of[whole] = 1
    graph.inputs[position] = new_tokens

    end = int64_const(graph, "kv_cache_end", np.array([_MAX], np.int64))
    minus_one = int64_const(graph, "kv_cache_minus_one", np.array([-1], np.int64))
    sliced: dict[tuple[int, int, str], ir.Value] = {}

    def rows(value: ir.Value, axis: int, start: ir.Value, tag: str, before: ir.Node) -> ir.Value:
        key = (id(value), axis, tag)
        if key not in sliced:
            axes = int64_const(graph, f"{value.name}_{tag}_axis", np.array([axis], np.int64))
            out = add(ir.Node("", "Slice", [value, start, end, axes], name=f"{value.name}_{tag}"), before)
            out.type = value.type
            if value.shape is not None:
                dims = list(value.shape)
                dims[axis] = new_dim if tag == "new" else 1
                out.shape = ir.Shape(dims)
            sliced[key] = out
        return sliced[key]

    order = list(graph)
    for node in order:
        if node not in region:
            continue
        mask_input = node.inputs[3] if node in attention else None
        for index, value in enumerate(node.inputs):
            if value is None:
                continue
            if value is mask_input:
                rank = len(value.shape)
                if value.shape[rank - 2] == mask.shape[1]:  # one row per query: keep the new ones
                    key = (id(value), rank - 2, "mask")
                    if key not in sliced:  # computed for the new rows only, not [seq, seq] then cut
                        sliced[key] = _rows_computed(graph, value, rank - 2, lambda v, a: rows(v, a, past_len, "new", node),
                                                     new_dim, node)
                    node.replace_input_with(index, sliced[key])
                continue
            axis = axis_of.get(value)
            if axis is None:
                continue
            producer = value.producer()
            if producer not in region:  # entering: the new positions only
                value_new = rows(value, axis, past_len, "new", node)
                if node in last_only:
                    value_new = rows(value_new, axis, minus_one, "last", node)
                node.replace_input_with(index, value_new)
            elif node in last_only and producer not in last_only:
                node.replace_input_with(index, rows(value, axis, minus_one, "last", node))

    for node in region:
        # reshape and expand targets may hold the whole length (read from the inputs' shape): the
        # dims up to the position axis are copied instead, the trailing ones are static
        if node.domain in ("", "ai.onnx") and node.op_type == "Reshape":
            source, out = node.inputs[0], node.outputs[0]
            axis = axis_of[out]
            if is_flat(source.shape[axis_of[source]]):  # [batch*new, ...] -> [batch, new, ...]: the batch read off
                rest = int64_const(graph, f"{out.name}_kv_cache_target_rest", np.array([-1] + list(out.shape[axis + 1:]),
                                                                                   np.int64))
                target = add(ir.Node("", "Concat", [batch_len, rest], attributes=[ir.AttrInt64("axis", 0)],
                                     name=f"{out.name}_kv_cache_target"), node)
            else:
                target = int64_const(graph, f"{out.name}_kv_cache_target", np.array(
                    [d if isinstance(d, int) else 0 for d in out.shape[:axis]] + [-1] + list(out.shape[axis + 1:]),
                    np.int64))
            node.replace_input_with(1, target)
            node.attributes["allowzero"] = ir.AttrInt64("allowzero", 0)
        if node.domain in ("", "ai.onnx") and node.op_type == "Expand":
            source, out = node.inputs[0], node.outputs[0]
            padded = [1] * (len(out.shape) - len(source.shape)) + list(source.shape)
            target = np.array([o if d == 1 and isinstance(o, int) else 1 for d, o in zip(padded, out.shape)], np.int64)
            node.replace_input_with(1, int64_const(graph, f"{out.name}_kv_cache_target", target))
    for node in region:
        for value in node.outputs:
            axis = axis_of.get(value)
            if axis is not None and value.shape is not None:
                dims = list(value.shape)
                if is_flat(dims[axis]):
                    dims[axis] = batch if node in last_only else ir.SymbolicDim(f"{batch}*{NEW}")
                else:
                    dims[axis] = 1 if node in last_only else new_dim
                value.shape = ir.Shape(dims)

    _keep_whole_shapes(graph, region, axis_of, mask, batch_len, is_flat)

    for index, node in enumerate(attention):
        (past_key, past_value), axis = past_inputs[index]
        for slot, past, which in ((1, past_key, "key"), (2, past_value, "value")):
            current, repeat = points[index][slot]
            reader = repeat[0] if repeat else node
            present = ir.Node("", "Concat", [past, current], attributes=[ir.AttrInt64("axis", axis)],
                              outputs=[ir.Value(name=f"present_{which}_{index}")], name=f"kv_cache_present_{which}_{index}")
            graph.insert_before(reader, present)
            out = present.outputs[0]
            out.type = current.type
            dims = list(current.shape)
            dims[axis] = ir.SymbolicDim(TOTAL)
            out.shape = ir.Shape(dims)
            reader.replace_input_with(0 if repeat else slot, out)
            for step, position in zip(repeat, (axis + 1, axis + 1, axis)):  # the repeat now runs over all positions
                dims = list(step.outputs[0].shape)
                dims[position] = ir.SymbolicDim(TOTAL)
                step.outputs[0].shape = ir.Shape(dims)
            graph.outputs.append(out)
    graph.sort()
    dce(model)  # the whole-length computations nothing reads any more
    fill_missing_dtypes(model)
    return past_len.name
