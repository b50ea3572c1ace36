"""Where token-reducing ops go in an encoder and what must change downstream of them: shared by
token merging (merge_tokens.py) and pruning (prune_tokens.py).

A site is a layer's residual stream after attention (the value its MLP and the MLP's residual
read). A reduction there replaces the stream by fewer tokens and their sizes (how many original
tokens each stands for; they start as the padding mask, or ones without a mask). Downstream, every
node reading reduced tokens is checked before anything is rewritten: attention masks become
``log(size)`` on each key (proportional attention; size 0 hides padding), a value weighted by the
padding mask (mean pooling's ``x * mask``) is weighted by the sizes, CLS pooling reads the protected
first token; anything else that reads tokens by position, a per-token output, or a token-axis
value that bypasses the reductions makes :func:`reduce_tokens` refuse with the reason.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir

from leangraph.ir.registry import DOMAIN
from leangraph.ir.shapes import infer_leangraph_shapes
from leangraph.passes.redundancy.padding_removal import TOKENWISE_ELEMENTWISE, padding_mask_of

_LINEAR = {"MatMulBiasAct", "DynamicQuantLinear", "StaticQuantLinear", "Bf16Linear"}
_TOKENWISE_LEANGRAPH = _LINEAR | {"LayerNorm", "RMSNorm", "Gelu"}
_STREAM_OPS = _TOKENWISE_LEANGRAPH | {"Add", "MatMul"}
"""Ops between an attention output and its layer's residual stream (out projection, residual add, norm)."""
_MASK_CHAIN = {"Cast", "Unsqueeze", "Identity", "Expand", "PackTokens"}
"""Ops a mask-derived weight (mean pooling's mask[..., None]) goes through; rebuilt over the sizes."""
_MASK_INPUT = {"PackTokens": 1, "UnpackTokens": 1, "PackedMultiHeadAttention": 3}


@dataclasses.dataclass
class Site:
    """Where one layer's reduction goes: after ``attention``, on ``stream``."""

    attention: ir.Node
    stream: ir.Value
    packed: bool

    @property
    def layer(self) -> str:
        path = self.attention.metadata_props.get("leangraph.module_path", "")
        return path or self.attention.name


@dataclasses.dataclass
class _Plan:
    sites: list[Site]
    mask: ir.Value | None
    """The [batch, seq] padding mask graph value (None: unmasked attention, every token real)."""
    packed: bool


def plan_sites(model: ir.Model) -> _Plan | str:
    """The sites of ``model`` in layer order with its padding mask and layout, or why it has none."""
    graph = model.graph
    attention = [n for n in graph if n.domain == DOMAIN and n.op_type in ("MultiHeadAttention", "PackedMultiHeadAttention")]
    if not attention:
        return "skipped: no leangraph::MultiHeadAttention or PackedMultiHeadAttention (attention not fused)"
    if any(n.domain == DOMAIN and n.op_type in ("MergeTokens", "PruneTokens") for n in graph):
        return "skipped: the graph already reduces its tokens"
    kinds = {n.op_type for n in attention}
    if len(kinds) > 1:
        return "skipped: some attention is packed by padding removal and some is not"
    packed = kinds == {"PackedMultiHeadAttention"}
    for node in attention:
        if node.attributes.get_int("causal", 0):
            return f"skipped: '{node.name}' is causal attention (a decoder: a merged or fused token would mix later tokens into earlier ones)"
        q, k, v = node.inputs[:3]
        if not (q.producer() is not None and q.producer() is k.producer() is v.producer()) and not (
                q.shape is not None and k.shape is not None and tuple(q.shape[:-1]) == tuple(k.shape[:-1])):
            return f"skipped: '{node.name}' is not self-attention"
    masks = {id(n.inputs[3]) if len(n.inputs) > 3 and n.inputs[3] is not None else None for n in attention}
    if len(masks) > 1:
        return "skipped: the attention layers are masked differently"
    mask = None
    first = attention[0]
    if packed:
        mask = first.inputs[3]
    elif len(first.inputs) > 3 and first.inputs[3] is not None and not _hides_nothing(model, first.inputs[3]):
        found = padding_mask_of(model, first)
        if isinstance(found, str):
            return f"skipped: the mask of '{first.name}': {found}"
        mask, causal = found
        if causal:
            return f"skipped: '{first.name}' is causal attention"
    sites, reasons = [], []
    for index, node in enumerate(attention):
        stream = _residual_stream(node, attention[index + 1] if index + 1 < len(attention) else None)
        if isinstance(stream, str):
            reasons.append(f"'{node.name}': {stream}")
        else:
            sites.append(Site(node, stream, packed))
    if not sites:
        return "skipped: no layer has a residual stream after attention to merge (" + "; ".join(reasons) + ")"
    return _Plan(sites, mask, packed)


def _hides_nothing(model: ir.Model, mask: ir.Value) -> bool:
    """Whether an attention mask shows every key (ViT's SDPA export builds an all-visible one from
    the input's shape): computed from its graph inputs, filled at size 2 for each unknown dim."""
    from leangraph.backends.reference import ReferenceExecutable
    from leangraph.passes.redundancy.padding_removal import _ancestor_inputs

    inputs = _ancestor_inputs(mask)
    if any(v.shape is None or v.dtype is None for v in inputs):
        return False
    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal([d if isinstance(d, int) else 2 for d in v.shape]).astype(v.dtype.numpy())
             for v in inputs]
    try:
        graph = ir.convenience.extract(model.graph, inputs, [mask])  # a copy: the model is not touched
        (computed,) = ReferenceExecutable(ir.Model(graph, ir_version=model.ir_version))(feeds)
    except Exception:  # noqa: BLE001 - a mask that cannot be computed so is not known to hide nothing
        return False
    return bool(np.all(computed)) if computed.dtype == np.bool_ else bool(np.all(computed == 0))


def _residual_stream(attention: ir.Node, next_attention: ir.Node | None) -> ir.Value | str:
    """The value after ``attention`` that its MLP and the MLP's residual both read: from the output,
    through the out projection, residual Add and norm, up to the first value read twice."""
    value, through_add = attention.outputs[0], False
    for _ in range(8):
        readers = [node for node, _ in value.uses() if node.op_type not in ("Shape", "Size")]
        if len(readers) > 1 or (len(readers) == 1 and readers[0] is next_attention):
            return value if through_add else "its output is read twice before a residual add"
        if not readers:
            return "its output is not read on to an MLP"
        node = readers[0]
        if node.op_type not in _STREAM_OPS or len(node.outputs) != 1:
            return f"its output goes through '{node.name}' ({node.op_type}) before the residual stream"
        through_add |= node.op_type == "Add"
        value = node.outputs[0]
    return "no residual stream within 8 nodes of it"


Build = Callable[[ir.tape.Tape, "Site", Callable[[ir.Value], ir.Value], ir.Value], tuple[ir.Value, ir.Value]]
"""How one site reduces its tokens: (tape, site, unpacked, sizes) -> (tokens, sizes), on the padded
view ([batch, seq, width]; ``unpacked(value)`` gives any of the site's token values so)."""


def reduce_tokens(model: ir.Model, builds: Mapping[int, Build], what: str) -> tuple[bool, str]:
    """Reduce the tokens at the sites ``builds`` names (site index -> Build); (changed, note).
    ``what`` names the reduction in the note."""
    plan = plan_sites(model)
    if isinstance(plan, str):
        return False, plan
    chosen = [(plan.sites[i], build) for i, build in sorted(builds.items()) if i < len(plan.sites)]
    if not chosen:
        return False, f"no layer has a {what} setting"
    fixes = _downstream_fixes(model, plan, [site for site, _ in chosen])
    if isinstance(fixes, str):
        return False, fixes
    _rewrite(model, plan, chosen, fixes)
    return True, f"{len(chosen)}/{len(plan.sites)} layers" + ("; packed layout" if plan.packed else "")


def checked_sites(model: ir.Model) -> list[Site] | str:
    """The sites a reduction could use, each known to leave the outputs meaningful (or why none)."""
    plan = plan_sites(model)
    if isinstance(plan, str):
        return plan
    fixes = _downstream_fixes(model, plan, plan.sites)
    return fixes if isinstance(fixes, str) else plan.sites


# --- what must change downstream of the reductions ---------------------------------------------------

@dataclasses.dataclass
class _Fixes:
    mask_inputs: list[tuple[ir.Node, int, int]] = dataclasses.field(default_factory=list)
    """(node, input index, space): a mask input of a packed op or an attention node, to the sizes."""
    weights: list[tuple[ir.Node, int, int]] = dataclasses.field(default_factory=list)
    """(Mul node, input index, space): a weight derived from the padding mask, rebuilt over the sizes."""
    relabel: list[tuple[ir.Value, int, int]] = dataclasses.field(default_factory=list)
    """(value, token axis, space): merged values, whose token dim gets the space's own name."""


def _downstream_fixes(model: ir.Model, plan: _Plan, sites: list[Site]) -> _Fixes | str:
    """Every node reading merged tokens, checked: each other token-axis input it reads must be the
    padding mask (or a weight made from it), which the rewrite swaps for the sizes; a reduction over
    the merged tokens must read mask-weighted values. Token spaces: 0 before any merge, k after the
    k-th; ``axis`` follows where merged values keep their token axis (None: pooled away)."""
    space: dict[ir.Value, int] = {site.stream: k + 1 for k, site in enumerate(sites)}
    axis: dict[ir.Value, int | None] = {site.stream: 0 if plan.packed else 1 for site in sites}
    token_axis = _token_axis_test(plan)
    fixes = _Fixes()
    for node in model.graph:
        inputs = [v for v in node.inputs if v is not None]
        top = max((space.get(v, 0) for v in inputs), default=0)
        if top == 0:
            continue
        where = f"'{node.name}' ({node.op_type})"
        for index, value in enumerate(node.inputs):
            if value is None or space.get(value, 0) == top or not token_axis(value):
                continue
            if node.domain == DOMAIN and _MASK_INPUT.get(node.op_type) == index and _is_mask(value, plan.mask):
                fixes.mask_inputs.append((node, index, top))
            elif node.domain == DOMAIN and node.op_type == "MultiHeadAttention" and index == 3:
                fixes.mask_inputs.append((node, index, top))
            elif node.op_type == "Mul" and _is_mask(value, plan.mask):
                fixes.weights.append((node, index, top))
            else:
                return (f"skipped: {where} reads merged tokens together with '{value.name}', which has a "
                        "token axis and does not come through the merges")
        merged_axes = {axis[v] for v in inputs if space.get(v, 0) == top and axis.get(v) is not None}
        out_axis = _output_axis(node, merged_axes, fixes)
        if isinstance(out_axis, str):
            return f"skipped: {where} {out_axis}"
        for out in node.outputs:
            if out not in space:  # a merge site's stream keeps its own (later) space
                space[out], axis[out] = top, out_axis
                if out_axis is not None:
                    fixes.relabel.append((out, out_axis, top))
    for value in model.graph.outputs:
        if space.get(value, 0) and axis.get(value) is not None:
            return (f"skipped: output '{value.name}' has a token axis (per-token outputs do not survive a merge); "
                    "pool inside the model (mean or CLS) to merge tokens")
    return fixes


_REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceProd"}


def _output_axis(node: ir.Node, merged_axes: set[int], fixes: _Fixes) -> int | None | str:
    """Where the token axis of a node's outputs is, given its merged inputs' (an empty set: they
    hold no token axis); a string says why the node cannot read merged tokens."""
    if not merged_axes:
        return None
    if len(merged_axes) > 1:
        return "reads merged tokens along different axes"
    (token,) = merged_axes
    op = node.op_type
    if op in ("Shape", "Size"):
        return None
    if op == "PackTokens":
        return 0
    if op == "UnpackTokens":
        return 1
    if op in TOKENWISE_ELEMENTWISE or op in _TOKENWISE_LEANGRAPH or op in (
            "MatMul", "Split", "MultiHeadAttention", "PackedMultiHeadAttention", "MergeTokens"):
        return token
    if op == "Reshape" and _last_dims_only(node, token):
        return token
    if op in _REDUCTIONS:
        axes = _reduced_axes(node)
        if axes is None:
            return "reduces merged tokens over axes it does not state"
        rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
        axes = {a % rank for a in axes} if rank else set(axes)
        if token not in axes:
            return token
        if op == "ReduceSum" and _weighted_source(node.inputs[0], fixes):
            return None
        return ("reduces over merged tokens without the padding mask's weights (only a mask-weighted "
                "ReduceSum, mean pooling, is rewritten to the size-weighted one)")
    if op in ("Gather", "Slice") and _reads_first_token(node, token):
        return None
    return "reads merged tokens in a way merging does not know (only token-wise ops, pooling and CLS are)"


def _reduced_axes(node: ir.Node) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        return None if node.inputs[1].const_value is None else [int(a) for a in node.inputs[1].const_value.numpy()]
    attr = node.attributes.get("axes")
    return None if attr is None else list(attr.value)


def _token_axis_test(plan: _Plan):
    """Whether a value carries the token axis (the mask's seq dim, padding removal's packed dim, or
    a static token count), by its shape."""
    seq = plan.mask.shape[1] if plan.mask is not None and plan.mask.shape is not None else None
    if seq is None:
        first = plan.sites[0].attention.inputs[0]
        seq = first.shape[0 if plan.packed else 1] if first.shape is not None else None
    word = re.compile(rf"\b{re.escape(seq.value)}\b") if isinstance(seq, ir.SymbolicDim) and seq.value else None

    def is_seq(dim) -> bool:
        if isinstance(dim, ir.SymbolicDim):
            return dim.value == "tokens" or (word is not None and dim.value is not None and bool(word.search(dim.value)))
        return isinstance(seq, int) and dim == seq

    def token_axis(value: ir.Value) -> bool:
        if value.shape is None:
            return value.const_value is None
        return any(is_seq(d) for d in value.shape)

    return token_axis


def _is_mask(value: ir.Value, mask: ir.Value | None) -> bool:
    """The padding mask itself, or a weight made from it by _MASK_CHAIN ops alone."""
    if mask is None:
        return False
    for _ in range(8):
        if value is mask:
            return True
        node = value.producer()
        if node is None or node.op_type not in _MASK_CHAIN:
            return False
        if node.op_type == "PackTokens" and node.inputs[1] is not mask:
            return False
        value = node.inputs[0]
    return False


def _weighted_source(value: ir.Value, fixes: _Fixes) -> bool:
    """Whether ``value`` is a Mul by a mask weight being swapped for the sizes (through UnpackTokens)."""
    for _ in range(4):
        node = value.producer()
        if node is None:
            return False
        if node.op_type == "Mul":
            return any(w is node for w, _, _ in fixes.weights)
        if node.op_type != "UnpackTokens":
            return False
        value = node.inputs[0]
    return False


def _reads_first_token(node: ir.Node, token: int) -> bool:
    """Gather of index 0, or Slice 0:1, along the token axis (CLS pooling: the protected token)."""
    if node.op_type == "Gather" and len(node.inputs) == 2 and node.inputs[1].const_value is not None:
        return node.attributes.get_int("axis", 0) == token and np.all(node.inputs[1].const_value.numpy() == 0)
    if node.op_type == "Slice" and all(v is not None and v.const_value is not None for v in node.inputs[1:4]):
        starts, ends, axes = (v.const_value.numpy() for v in node.inputs[1:4])
        return list(axes) == [token] and list(starts) == [0] and list(ends) == [1]
    return False


def _last_dims_only(node: ir.Node, token: int) -> bool:
    """A Reshape keeping the dims up to the token axis: a constant target starting with zeros."""
    target = node.inputs[1].const_value if len(node.inputs) > 1 else None
    return target is not None and all(d == 0 for d in target.numpy()[:token + 1])


# --- the rewrite ---------------------------------------------------------------------------------

def _rewrite(model: ir.Model, plan: _Plan, chosen, fixes: _Fixes) -> None:
    graph = model.graph
    dtype = plan.sites[0].stream.dtype
    tape = ir.tape.Tape()
    first_stream = chosen[0][0].stream
    if plan.mask is not None:
        sizes = tape.op("Cast", [plan.mask], {"to": int(dtype)}, name="token_sizes_0")
    else:  # unmasked: every token is one real token
        grid = tape.op("Shape", [plan.sites[0].attention.inputs[0]], {"start": 0, "end": 2})
        sizes = tape.op("ConstantOfShape", [grid], {"value": ir.tensor(np.ones(1, dtype.numpy()))},
                        name="token_sizes_0")
    sizes.name, sizes.dtype = "token_sizes_0", dtype
    graph.insert_after(first_stream.producer(), list(tape.nodes))
    mask_of_space = [plan.mask if plan.mask is not None else sizes]
    sizes_of_space = [sizes]
    for k, (site, build) in enumerate(chosen, start=1):
        stream = site.stream
        readers = list(stream.uses())  # before the reduction's own nodes read it
        tape = ir.tape.Tape()
        views: dict[ir.Value, ir.Value] = {}

        def unpacked(value: ir.Value, mask=mask_of_space[-1], tape=tape, views=views) -> ir.Value:
            if not plan.packed:
                return value
            if value not in views:
                views[value] = tape.op("UnpackTokens", [value, mask], domain=DOMAIN)
                views[value].dtype = value.dtype
            return views[value]

        reduced, reduced_sizes = build(tape, site, unpacked, sizes_of_space[-1])
        out = tape.op("PackTokens", [reduced, reduced_sizes], domain=DOMAIN) if plan.packed else reduced
        for value, suffix in ((reduced, "reduced"), (reduced_sizes, "sizes"), (out, "stream")):
            value.name = f"{stream.name}_{suffix}_{k}"
        reduced_sizes.dtype, reduced.dtype, out.dtype = dtype, dtype, dtype
        graph.insert_after(stream.producer(), list(tape.nodes))
        for node, index in readers:
            node.replace_input_with(index, out)
        mask_of_space.append(reduced_sizes)
        sizes_of_space.append(reduced_sizes)
    log_bias: dict[int, ir.Value] = {}
    for node, index, k in fixes.mask_inputs:
        if node.op_type == "MultiHeadAttention":
            if k not in log_bias:
                tape = ir.tape.Tape()
                log_bias[k] = tape.op("Unsqueeze", [tape.op("Log", [sizes_of_space[k]]),
                                                    tape.initializer(ir.tensor(np.array([1, 2], np.int64),
                                                                               name=f"token_sizes_bias_axes_{k}"))])
                log_bias[k].name, log_bias[k].dtype = f"token_log_sizes_{k}", dtype
                for init in tape.initializers:
                    graph.register_initializer(init)
                graph.insert_after(sizes_of_space[k].producer(), list(tape.nodes))
            node.replace_input_with(index, log_bias[k])
        else:
            node.replace_input_with(index, sizes_of_space[k])
            if node.op_type == "PackedMultiHeadAttention":
                node.attributes["size_bias"] = ir.AttrInt64("size_bias", 1)
    for node, index, k in fixes.weights:
        node.replace_input_with(index, _rebuilt_weight(graph, node.inputs[index], plan.mask, sizes_of_space[k], node))
    # Merged values' token dims are not the original's: a new name per space, so that no backend
    # takes two differently sized dims for one.
    for value, token, k in fixes.relabel:
        if value.shape is not None and token < len(value.shape):
            dims = list(value.shape)
            dims[token] = ir.SymbolicDim(f"reduced_tokens_{k}")
            value.shape = ir.Shape(dims)
    graph.sort()
    infer_leangraph_shapes(model)


def _rebuilt_weight(graph: ir.Graph, value: ir.Value, mask: ir.Value, sizes: ir.Value, before: ir.Node) -> ir.Value:
    """The _MASK_CHAIN from ``mask`` to ``value`` again, from ``sizes`` (cast to the mask's dtype)."""
    chain = []
    while value is not mask:
        node = value.producer()
        chain.append(node)
        value = node.inputs[0]
    tape = ir.tape.Tape()
    current = tape.op("Cast", [sizes], {"to": int(mask.dtype)}) if mask.dtype != sizes.dtype else sizes
    for node in reversed(chain):
        inputs = [current, *node.inputs[1:]]
        if node.op_type == "PackTokens":
            inputs[1] = sizes
        attrs = {name: attr.value for name, attr in node.attributes.items()}
        current = tape.op(node.op_type, inputs, attrs or None, domain=node.domain)
        current.dtype = node.outputs[0].dtype
    graph.insert_before(before, list(tape.nodes))
    return current
