"""Padding removal: the token-wise part of a transformer runs on the valid tokens only, packed
together, and attention runs per sequence (ByteTransformer, Prepacking; see ../shared/PAPERS.md).

Where it applies: self-attention nodes (leangraph::MultiHeadAttention over [batch, seq, width]
inputs) whose mask is computed from one [batch, seq] graph input, the padding mask, and hides
exactly the padded keys (or the padded keys and the later ones: causal). Which one it is is not
read from the shape of the mask-building subgraph (every exporter writes it differently) but found
by running that subgraph on probe masks and comparing with both definitions.

What it rewrites: from those attention nodes, the region of token-wise nodes around them
(elementwise ops whose other operands broadcast over trailing dims only, linear layers, layer and
RMS norms, GELU, embedding gathers) is grown through values shaped [batch, seq, ...]. Values
entering the region are packed (leangraph::PackTokens: [tokens, ...]), the attention nodes become
leangraph::PackedMultiHeadAttention, and values leaving it are unpacked (leangraph::UnpackTokens,
zeros at padded positions).

Attention over [batch, heads, seq, size] (leangraph::Attention, where rotary embeddings or grouped
KV heads sit between the head split and attention, as in Llama) is not packed: it and the nodes
between it and the token-wise layers (head split and merge, rotary, KV repetition) form an island
that runs padded, on values unpacked for it, and its result is packed again. That is exact only if
the island's outputs at valid positions ignore its inputs at padded positions (the unpacked values
hold zeros there where the original held the model's own values); this is probed: the island is run
twice on probe masks with inputs that differ only at padded positions, and skipped if its valid
outputs differ.

When it is exact: the valid tokens' values are the same up to round-off (attention over the
valid keys of the sequence is what the padding mask computed). The padded positions of a value
leaving the region become zeros; that is exact where the model itself zeroed them (a value
multiplied by the padding mask, as mean pooling does) and where only the value's shape is read. A
graph output holding padded positions (e.g. BERT's last_hidden_state) is garbage there in the
original; with ``padded_outputs="zero"`` such outputs are allowed, their padded positions become 0
and verification compares the valid positions only (the output is marked with
``leangraph.valid_where``). Otherwise the pass does nothing and its report line says why.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from leangraph.ir.registry import DOMAIN
from leangraph.passes.base import Pass, PassResult
from leangraph.passes.fusion._checks import rank as rank_of
from leangraph.passes.verification import VALID_WHERE

TOKENS = "tokens"

TOKENWISE_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Relu", "Erf", "Tanh", "Sigmoid", "Neg",
    "Sqrt", "Exp", "Log", "Abs", "Cast", "Identity", "Softplus", "Reciprocal", "Gelu", "LeakyRelu", "Clip",
}
"""ONNX ops computing each element from the same element of their inputs (broadcasting aside)."""
_LEANGRAPH_TOKENWISE = {"MatMulBiasAct", "LayerNorm", "RMSNorm", "Gelu"}
_AXIS_OPS = {"LayerNorm", "RMSNorm"}
"""leangraph ops whose ``axis`` (like Split's) moves by one when two dims become one."""
_VALUE_BLIND = {"Shape", "Size"}
"""Consumers that read only the shape of a value: an unpacked value has the original shape."""


class PaddingRemoval:
    """The pass object (``padded_outputs`` is "skip" or "zero", see the module docstring)."""

    def __init__(self, padded_outputs: str = "skip") -> None:
        if padded_outputs not in ("skip", "zero"):
            raise ValueError(f"padded_outputs must be 'skip' or 'zero', not {padded_outputs!r}")
        self.padded_outputs = padded_outputs

    def __call__(self, model: ir.Model) -> PassResult:
        plan = _plan(model, self.padded_outputs)
        if isinstance(plan, str):
            return PassResult(False, notes=[plan])
        _rewrite(model, plan)
        return PassResult(True, notes=[plan.summary])


def remove_padding_pass(padded_outputs: str = "skip") -> Pass:
    name = "remove_padding" if padded_outputs == "skip" else f"remove_padding[{padded_outputs}]"
    return Pass(name, PaddingRemoval(padded_outputs), (__doc__ or "").strip())


REMOVE_PADDING = remove_padding_pass()


@dataclasses.dataclass
class _Plan:
    mask: ir.Value
    attention: dict[ir.Node, int]
    """The attention nodes to pack, each with its causal flag."""
    region: set[ir.Node]
    packed_inputs: list[ir.Value]
    exits: list[ir.Value]
    zeroed_outputs: list[ir.Value]
    padded_attention: int = 0
    """Attention nodes over [batch, heads, seq, size] left padded between unpack and pack (rotary
    embeddings or grouped KV heads sit between the head split and attention: no MultiHeadAttention)."""
    assumed: list[str] = dataclasses.field(default_factory=list)
    """Readers of unpacked values that are exact for right- (or left-) padded batches only."""

    @property
    def summary(self) -> str:
        kinds = collections.Counter("causal" if c else "bidirectional" for c in self.attention.values())
        attention = [f"{n} {k} attention" for k, n in kinds.items()]
        if self.padded_attention:
            attention.append(f"{self.padded_attention} attention (heads layout) run padded between unpack and pack")
        return (f"packed by '{self.mask.name}': {len(self.region)} nodes on valid tokens only, "
                f"{', '.join(attention)}, {len(self.packed_inputs)} values packed, "
                f"{len(self.exits)} unpacked" + (f", padded positions of {[v.name for v in self.zeroed_outputs]} "
                                                  "zeroed" if self.zeroed_outputs else "")
                + "".join(f"; {a}" for a in self.assumed))


def _plan(model: ir.Model, padded_outputs: str) -> _Plan | str:
    graph = model.graph
    candidates = [n for n in graph if n.domain == DOMAIN and n.op_type in ("MultiHeadAttention", "Attention")]
    if not candidates:
        return "skipped: no leangraph::MultiHeadAttention or Attention in the graph"
    attention: dict[ir.Node, int] = {}
    head_layout: list[ir.Node] = []  # leangraph::Attention over [batch, heads, seq, size]: run padded
    mask, reasons, verdicts = None, [], {}
    for node in candidates:
        key = (id(node.inputs[3]) if len(node.inputs) > 3 else None,
               *(tuple(v.shape) if v is not None and v.shape is not None else None for v in node.inputs[:3]))
        if key not in verdicts:  # every layer reads the same mask value
            verdicts[key] = padding_mask_of(model, node)
        found = verdicts[key]
        if isinstance(found, str):
            reasons.append(f"'{node.name}': {found}")
            continue
        node_mask, causal = found
        if mask is not None and node_mask is not mask:
            reasons.append(f"'{node.name}': its padding mask is '{node_mask.name}', not '{mask.name}'")
            continue
        mask = node_mask
        if node.op_type == "MultiHeadAttention":
            attention[node] = int(causal or node.attributes.get_int("causal", 0))
        else:
            head_layout.append(node)
    if not attention and not head_layout:
        return "skipped: no attention with a padding mask (" + "; ".join(reasons) + ")"
    if reasons:
        return "skipped: some attention is not masked by the padding mask (" + "; ".join(reasons) + ")"
    batch, seq = mask.shape[0], mask.shape[1]
    seq_word = re.compile(rf"\b{re.escape(seq.value)}\b") if isinstance(seq, ir.SymbolicDim) and seq.value else None

    def same_seq(dim) -> bool:
        # Exporters name some dims by expression ('Min(512, seq)' for a slice of the position
        # table): one that mentions seq and broadcasts against it can only be seq.
        return dim == seq or (seq_word is not None and isinstance(dim, ir.SymbolicDim) and dim.value is not None
                              and seq_word.search(dim.value) is not None)

    def token_layout(value: ir.Value | None, full_batch: bool = False) -> bool:
        if value is None or value.shape is None or len(value.shape) < 2 or value is mask:
            return False
        first, second = value.shape[0], value.shape[1]
        return same_seq(second) and (first == batch or (not full_batch and first == 1 and batch != 1))

    def side(value: ir.Value | None, rank: int) -> bool:
        """An operand that broadcasts over trailing dims only (its rank is below the token dims)."""
        return value is None or (rank_of(value) is not None and rank_of(value) <= rank - 2)

    def tokenwise(node: ir.Node) -> bool:
        if node in attention:
            return True
        outputs = [v for v in node.outputs if v is not None]
        if not outputs or not all(token_layout(v) for v in outputs):
            return False
        rank = rank_of(outputs[0])
        if node.domain in ("", "ai.onnx") and node.op_type == "Split":
            return (token_layout(node.inputs[0]) and rank_of(node.inputs[0]) == rank
                    and node.attributes.get_int("axis", 0) % rank >= 2)
        if len(outputs) != 1:
            return False
        if node.domain in ("", "ai.onnx") and node.op_type == "Reshape":
            # Only the trailing dims change, to static sizes: packed, the target is [-1, trailing].
            source, target = node.inputs[0], outputs[0]
            return (token_layout(source, full_batch=True) and token_layout(target, full_batch=True)
                    and all(isinstance(d, int) for d in target.shape[2:]))
        if node.domain in ("", "ai.onnx") and node.op_type in TOKENWISE_ELEMENTWISE:
            inputs = [v for v in node.inputs if v is not None]
            return (any(token_layout(v) for v in inputs)
                    and all((token_layout(v) and rank_of(v) == rank) or side(v, rank) for v in inputs))
        if node.domain in ("", "ai.onnx") and node.op_type == "MatMul":
            return token_layout(node.inputs[0]) and rank_of(node.inputs[1]) == 2
        if node.domain in ("", "ai.onnx") and node.op_type == "Gather":
            data, indices = node.inputs
            return (node.attributes.get_int("axis", 0) == 0 and token_layout(indices) and not token_layout(data)
                    and data.shape is not None)
        if node.domain == DOMAIN and node.op_type in _LEANGRAPH_TOKENWISE:
            first, rest = node.inputs[0], node.inputs[1:]
            if not token_layout(first) or rank_of(first) != rank:
                return False
            if node.op_type == "MatMulBiasAct":
                return rank_of(rest[0]) == 2 and side(rest[1] if len(rest) > 1 else None, rank)
            if node.op_type in ("LayerNorm", "RMSNorm") and node.attributes.get_int("axis", -1) % rank < 2:
                return False
            return all(side(v, rank) for v in rest)
        return False

    island = _islands(head_layout, tokenwise)
    region: set[ir.Node] = set(attention)
    for node in island:  # the region around a padded island starts at its token-wise neighbours
        # (through per-token values: a [1, seq, ...] position table is read by the island as it is)
        region.update(v.producer() for v in node.inputs if v is not None and v.producer() is not None
                      and token_layout(v, full_batch=True) and tokenwise(v.producer()))
        region.update(c for v in node.outputs if token_layout(v, full_batch=True) for c in v.consumers()
                      if tokenwise(c))
    work = collections.deque(region)
    while work:
        node = work.popleft()
        mha_mask = node.inputs[3] if node in attention else None
        for value in node.inputs:
            producer = value.producer() if value is not None and value is not mha_mask else None
            if producer is None or producer in region or not tokenwise(producer):
                continue
            # Pulled in only when every reader of its outputs is token-wise too (or in a padded
            # island): a value read elsewhere stays padded, and is packed where the region reads it.
            if all(consumer in region or consumer in island or tokenwise(consumer)
                   for out in producer.outputs for consumer in out.consumers()):
                region.add(producer)
                work.append(producer)
        for value in node.outputs:
            for consumer in value.consumers():
                if consumer not in region and tokenwise(consumer):
                    region.add(consumer)
                    work.append(consumer)

    graph_outputs = set(graph.outputs)

    def boundary() -> tuple | str | ir.Node:
        """The region's packed inputs and exits (and what the exits need); a skip reason; or the
        node to leave out of the region because its result holds something else than the model's
        values at padded positions that its readers depend on (masked max pooling's -1e9)."""
        in_order = [node for node in graph if node in region]  # a set's order would vary from run to run
        packed_inputs: list[ir.Value] = []
        for node in in_order:
            mha_mask = node.inputs[3] if node in attention else None
            for value in node.inputs:
                if (value is not None and value is not mha_mask and token_layout(value)
                        and value.producer() not in region and value not in packed_inputs):
                    packed_inputs.append(value)
        exits, zeroed, into_islands, assumed = [], [], [], []
        for node in in_order:
            for value in node.outputs:
                outside = [c for c in value.consumers() if c not in region]
                is_output = value in graph_outputs
                if not outside and not is_output:
                    continue
                if not token_layout(value, full_batch=True):
                    return f"skipped: '{value.name}' leaves the token-wise region with shape {value.shape}"
                exits.append(value)
                if any(c in island for c in outside):
                    into_islands.append(value)  # probed with the island below
                readers = [c for c in outside if c not in island and not _value_blind(c)]
                if not (readers or is_output) or _zero_where_padded(model, value, mask):
                    continue
                if readers:  # pooling reads some positions only (CLS, last token) or masks the rest (max)
                    names = ", ".join(f"'{c.name}' ({c.op_type})" for c in readers)
                    padding = _readers_ignore_padded_positions(model, value, readers, mask)
                    if padding is None:
                        if node not in attention and node.domain in ("", "ai.onnx") and not is_output:
                            return node
                        return (f"skipped: '{value.name}' holds padded positions and is read by {names}; its "
                                "padded positions are not known to be unused (what its readers compute changes "
                                "with them)")
                    if padding != "any":
                        assumed.append(f"{names} read positions of '{value.name}' that only {padding}-padded "
                                       "batches keep valid (exact for those; the original reads padded tokens "
                                       "otherwise)")
                if is_output:
                    if padded_outputs != "zero":
                        return (f"skipped: '{value.name}' holds padded positions and is the graph output; "
                                "use remove_padding_pass(padded_outputs='zero') to zero them")
                    zeroed.append(value)
        return packed_inputs, exits, zeroed, into_islands, assumed

    for _ in range(_MAX_LEFT_OUT + 1):
        found = boundary()
        if not isinstance(found, ir.Node):
            break
        region.discard(found)  # its inputs leave the region instead, read by it
    if isinstance(found, (str, ir.Node)):
        return found if isinstance(found, str) else f"skipped: '{found.name}' and its neighbours read padded positions"
    packed_inputs, exits, zeroed, into_islands, assumed = found
    if island:
        island_outputs = [v for v in packed_inputs if v.producer() in island]
        unsafe = _island_reads_padded_positions(model, into_islands, island_outputs, mask)
        if unsafe:
            return f"skipped: the attention run padded between the packed layers {unsafe}"
    return _Plan(mask, attention, region, packed_inputs, exits, zeroed, len(head_layout), assumed)


def _value_blind(node: ir.Node) -> bool:
    return node.op_type in _VALUE_BLIND and node.domain in ("", "ai.onnx")


def _islands(seeds: list[ir.Node], tokenwise) -> set[ir.Node]:
    """The nodes around head-layout attention that stay padded: from each seed, its producers (the
    head split, rotary embedding, KV head repetition) and consumers (the head merge) up to the
    token-wise nodes. Only values of rank >= 3 are followed (shape vectors and the like are read
    as they are); the mask input is not (it is computed from the padding mask, outside)."""
    island: set[ir.Node] = set(seeds)
    work = collections.deque(seeds)
    while work:
        node = work.popleft()
        for value in node.inputs[:3] if node in seeds else node.inputs:
            producer = value.producer() if value is not None and (rank_of(value) or 0) >= 3 else None
            if producer is not None and producer not in island and not tokenwise(producer):
                island.add(producer)
                work.append(producer)
        for value in node.outputs:
            if (rank_of(value) or 0) < 3:
                continue
            for consumer in value.consumers():
                if consumer not in island and not tokenwise(consumer):
                    island.add(consumer)
                    work.append(consumer)
    return island


def _island_reads_padded_positions(model: ir.Model, entries: list[ir.Value], outputs: list[ir.Value],
                                   mask: ir.Value) -> str | None:
    """None when the island's outputs at valid positions are the same whatever its inputs hold at
    padded positions (probed: two runs that differ only there, on probe masks); else why not.

    Unpacked values hold zeros at padded positions where the original held the model's own
    values; the island runs on them as it did, so this is what makes leaving it padded exact."""
    from leangraph.backends.reference import ReferenceExecutable

    if not outputs:
        return "(it gives nothing back to them)"
    reachable = _ancestor_inputs(*outputs, stop=[mask, *entries])
    sources = [v for v in reachable if v.is_graph_input() or v is mask]
    if any(rank_of(v) != 2 for v in sources if v is not mask) or any(
            v.shape is None or not all(isinstance(d, int) for d in v.shape[2:]) for v in entries):
        return "(its inputs have shapes the probe cannot make up)"
    try:
        graph = ir.convenience.extract(model.graph, [*sources, *entries], outputs)
        run = ReferenceExecutable(ir.Model(graph, ir_version=model.ir_version))
    except Exception as exc:  # a subgraph the probe cannot cut out: not something we can vouch for
        return f"(cannot be probed: {str(exc).strip()[:200]})"
    rng = np.random.default_rng(2)
    for probe in _probe_masks(rng):
        valid = probe != 0
        feeds = [probe.astype(v.dtype.numpy()) if v is mask else np.zeros(probe.shape, v.dtype.numpy()) for v in sources]
        first = [rng.standard_normal((*probe.shape, *v.shape[2:])).astype(v.dtype.numpy()) for v in entries]
        second = [np.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), x, 1e3 * rng.standard_normal(x.shape))
                  .astype(x.dtype) for x in first]
        try:
            one, two = run([*feeds, *first]), run([*feeds, *second])
        except Exception as exc:
            return f"(cannot be probed: {str(exc).strip()[:200]})"
        for value, a, b in zip(outputs, one, two):
            if not np.array_equal(a[valid], b[valid]):
                return f"(its output '{value.name}' at valid positions depends on padded ones)"
    return None


_MAX_LEFT_OUT = 8
"""How many token-wise nodes at the region's edge may be left out (run padded, after unpacking)
because their readers depend on what they hold at padded positions."""

_READER_DEPTH = 4
"""How many nodes past a reader the probe follows a result that still holds padded positions
(a Transpose or Reshape before the pooling Gather)."""


def _readers_ignore_padded_positions(model: ir.Model, value: ir.Value, readers: list[ir.Node],
                                     mask: ir.Value) -> str | None:
    """Whether what ``readers`` compute from ``value`` is the same whatever ``value`` holds at padded
    positions (the unpacked value holds zeros there): "any" for every padding, "right" or "left" when
    so only for right- or left-padded batches (CLS pooling reads position 0, last-token pooling
    ``[:, -1]``), None when not (or when it cannot be probed).

    Probed as the attention islands are: the readers (and up to _READER_DEPTH nodes after them,
    while a result still depends on the padded positions) run twice on probe masks with values
    that differ only at padded positions. Masked max pooling (padded positions set to -1e9) is
    "any"; a sum over all positions is None."""
    from leangraph.backends.reference import ReferenceExecutable

    if value.shape is None or not all(isinstance(d, int) for d in value.shape[2:]):
        return None
    rng = np.random.default_rng(3)
    random_holes = list(_probe_masks(rng))
    holes = [np.array(rows, dtype=bool) for rows in (([1, 1, 1, 1, 1], [1, 0, 0, 1, 1], [0, 1, 1, 0, 1]),
                                                     ([1, 0, 1, 0, 1, 0, 1], [0, 0, 1, 1, 1, 0, 1]))]
    right = [np.arange(seq)[None, :] < np.array(lengths)[:, None] for seq, lengths in _LENGTHS]
    left = [np.arange(seq)[None, :] >= seq - np.array(lengths)[:, None] for seq, lengths in _LENGTHS]
    by_padding = {"any": [*random_holes, *holes, *right, *left], "right": right, "left": left}
    frontier = [out for node in readers for out in node.outputs if out is not None]
    for _ in range(_READER_DEPTH):
        sources = [v for v in _ancestor_inputs(*frontier, stop=[mask, value]) if v is not value]
        if any(v is not mask and (rank_of(v) != 2 or v.dtype is None) for v in sources):
            return None
        try:
            graph = ir.convenience.extract(model.graph, [*sources, value], frontier)
            run = ReferenceExecutable(ir.Model(graph, ir_version=model.ir_version))
        except Exception:  # a subgraph the probe cannot cut out: not something we can vouch for
            return None
        dependent = {}
        for padding, probes in by_padding.items():
            dependent[padding] = set()
            for probe in probes:
                feeds = [probe.astype(v.dtype.numpy()) if v is mask else np.zeros(probe.shape, v.dtype.numpy())
                         for v in sources]
                first = rng.standard_normal((*probe.shape, *value.shape[2:])).astype(value.dtype.numpy())
                valid = probe.reshape(probe.shape + (1,) * (first.ndim - 2)) != 0
                second = np.where(valid, first, 1e3 * rng.standard_normal(first.shape)).astype(first.dtype)
                try:
                    one, two = run([*feeds, first]), run([*feeds, second])
                except Exception:
                    return None
                dependent[padding] |= {i for i, (a, b) in enumerate(zip(one, two)) if not _same(a, b)}
            if not dependent[padding]:
                return padding
        # follow the results that still depend on padded positions one node further
        still = {frontier[i] for i in set.intersection(*dependent.values())}
        if any(v.is_graph_output() or not v.consumers() for v in still):
            return None
        frontier = [v for v in frontier if v not in still] + [
            out for v in still for consumer in v.consumers() for out in consumer.outputs if out is not None]
        frontier = list(dict.fromkeys(frontier))
    return None


_LENGTHS = ((5, (5, 3, 1)), (7, (4, 7)))
"""Sequence lengths of the right- and left-padded probe masks."""


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _rewrite(model: ir.Model, plan: _Plan) -> None:
    graph = model.graph
    order = {node: i for i, node in enumerate(graph)}
    tokens = ir.SymbolicDim(TOKENS)

    for value in plan.packed_inputs:
        readers = [(c, i) for c, i in value.uses() if c in plan.region]
        first = min((c for c, _ in readers), key=order.__getitem__)
        packed = ir.Value(name=f"{value.name}_packed", type=value.type,
                          shape=ir.Shape([tokens, *value.shape[2:]]))
        pack = ir.Node(DOMAIN, "PackTokens", [value, plan.mask], outputs=[packed], name=f"{value.name}_pack")
        graph.insert_before(first, pack)
        for consumer, index in readers:
            consumer.replace_input_with(index, packed)

    for node in plan.region:
        for value in node.outputs:
            if value.shape is not None:
                value.shape = ir.Shape([tokens, *value.shape[2:]])
        if node.domain in ("", "ai.onnx") and node.op_type == "Reshape":
            target = ir.Value(name=f"{node.outputs[0].name}_packed_shape",
                              const_value=ir.tensor(np.array([-1, *node.outputs[0].shape[1:]], dtype=np.int64)))
            target.shape, target.type = ir.Shape([len(node.outputs[0].shape)]), ir.TensorType(ir.DataType.INT64)
            graph.register_initializer(target)
            node.replace_input_with(1, target)
        axis = node.attributes.get("axis")
        counts_from_front = ((node.domain == DOMAIN and node.op_type in _AXIS_OPS)
                             or (node.domain in ("", "ai.onnx") and node.op_type == "Split"))
        if counts_from_front and axis is not None and axis.value >= 0:
            node.attributes["axis"] = ir.AttrInt64("axis", axis.value - 1)  # one token dim instead of two

    for node, causal in plan.attention.items():
        packed = ir.Node(
            DOMAIN, "PackedMultiHeadAttention", [*node.inputs[:3], plan.mask],
            attributes=[ir.AttrInt64("num_heads", node.attributes.get_int("num_heads", 0)),
                        ir.AttrFloat32("scale", node.attributes.get_float("scale", 0.0)), ir.AttrInt64("causal", causal)],
            name=node.name, metadata_props=dict(node.metadata_props))
        ir.convenience.replace_nodes_and_values(graph, node, [node], [packed], node.outputs, packed.outputs)

    outputs = list(graph.outputs)
    for value in plan.exits:
        name = value.name
        value.name = f"{name}_packed"
        restored = ir.Value(name=name, type=value.type, shape=ir.Shape([*plan.mask.shape, *value.shape[1:]]))
        unpack = ir.Node(DOMAIN, "UnpackTokens", [value, plan.mask], outputs=[restored], name=f"{name}_unpack")
        readers = [(c, i) for c, i in value.uses() if c not in plan.region and c is not unpack]
        graph.insert_after(value.producer(), unpack)
        for consumer, index in readers:
            consumer.replace_input_with(index, restored)
        for position, output in enumerate(outputs):
            if output is value:
                graph.outputs[position] = restored
                if value in plan.zeroed_outputs:
                    restored.metadata_props[VALID_WHERE] = plan.mask.name
    graph.sort()


# --- which graph input is the padding mask, by probing ---------------------------------------

def _ancestor_inputs(*values: ir.Value, stop: Iterable[ir.Value] = ()) -> list[ir.Value]:
    """The graph inputs the values are computed from (one walk for all of them); a value in
    ``stop`` (a padding mask computed inside the graph) counts as an input and is not walked through."""
    stop_ids = {id(v) for v in stop}
    seen, stack, found = set(), list(values), []
    while stack:
        v = stack.pop()
        if v is None or id(v) in seen:
            continue
        seen.add(id(v))
        if v.is_graph_input() or id(v) in stop_ids:
            found.append(v)
            continue
        producer = v.producer()
        if producer is not None:
            stack.extend(producer.inputs)
    return found


def _ancestor_values(value: ir.Value) -> set[ir.Value]:
    """Every value ``value`` is computed from, itself included."""
    seen, stack = set(), [value]
    while stack:
        v = stack.pop()
        if v is None or v in seen:
            continue
        seen.add(v)
        if v.producer() is not None:
            stack.extend(v.producer().inputs)
    return seen


def _probe_masks(rng: np.random.Generator) -> Iterable[np.ndarray]:
    """Padding masks of a few shapes: an all-valid row, right padding, random holes (and, at batch
    3, a row padded at both ends: reads of the first or last position are seen to depend on padding)."""
    for batch, seq in ((3, 5), (2, 7)):
        for _ in range(2):
            mask = (rng.random((batch, seq)) < 0.7).astype(np.int64)
            mask[0] = 1
            mask[-1] = np.arange(seq) < seq // 2
            if batch > 2:
                mask[1, [0, -1]], mask[1, 1] = 0, 1
            yield mask


def _evaluate(model: ir.Model, inputs: list[ir.Value], output: ir.Value, mask_input: ir.Value,
              masks: Iterable[np.ndarray]) -> list[np.ndarray] | None:
    """``output`` computed from each padding mask alone (other [batch, seq] inputs, read for their
    shape, get zeros); None if it reads inputs that cannot be faked so."""
    from leangraph.backends.reference import ReferenceExecutable

    if any(v is not mask_input and (v.shape is None or len(v.shape) != 2 or v.dtype is None) for v in inputs):
        return None
    graph = ir.convenience.extract(model.graph, inputs, [output])  # a copy: the model is not touched
    run = ReferenceExecutable(ir.Model(graph, ir_version=model.ir_version))
    return [run([mask.astype(v.dtype.numpy()) if v is mask_input else np.zeros(mask.shape, v.dtype.numpy())
                 for v in inputs])[0] for mask in masks]


def padding_mask_of(model: ir.Model, node: ir.Node) -> tuple[ir.Value, bool] | str:
    query, key, value = node.inputs[:3]
    attention_mask = node.inputs[3] if len(node.inputs) > 3 else None
    if attention_mask is None:
        return "it has no mask"
    if node.op_type == "MultiHeadAttention":  # [batch, seq, width]
        if any(rank_of(v) != 3 for v in (query, key, value)) or not (query.shape[:2] == key.shape[:2] == value.shape[:2]):
            return "not self-attention over [batch, seq, width] inputs"
        batch, seq = query.shape[0], query.shape[1]
    else:  # leangraph::Attention over [batch, heads, seq, size]
        if any(rank_of(v) != 4 for v in (query, key, value)) or not (
                query.shape[0] == key.shape[0] == value.shape[0] and query.shape[2] == key.shape[2] == value.shape[2]):
            return "not self-attention over [batch, heads, seq, size] inputs"
        batch, seq = query.shape[0], query.shape[2]
    graph_inputs = _ancestor_inputs(attention_mask)

    def mask_like(v: ir.Value) -> bool:
        return (rank_of(v) == 2 and v.shape[0] == batch and v.shape[1] == seq
                and v.dtype in (ir.DataType.INT64, ir.DataType.INT32, ir.DataType.BOOL, ir.DataType.FLOAT))

    # A padding mask is a graph input, or computed from one ([batch, seq] values such as
    # `input_ids != pad_id`, tried in graph order after the inputs).
    candidates = [v for v in graph_inputs if mask_like(v)]
    computed_in_graph = _ancestor_values(attention_mask)
    candidates += [
        out for node in model.graph for out in node.outputs if out in computed_in_graph and mask_like(out)]
    if not candidates:
        return f"its mask is computed from {[v.name for v in graph_inputs]}, none of them a [batch, seq] input"
    probes = list(_probe_masks(np.random.default_rng(0)))
    for mask in candidates:  # the others (e.g. input_ids read for its shape) get zeros
        inputs = _ancestor_inputs(attention_mask, stop=[mask])
        verdicts = _verdicts(model, inputs, attention_mask, mask, probes)
        if len(verdicts) == 1 and None not in verdicts:
            return mask, verdicts.pop()
    right_padded = [(np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
                    for seq, lengths in _LENGTHS]
    for mask in candidates:
        if None not in _verdicts(model, _ancestor_inputs(attention_mask, stop=[mask]), attention_mask, mask,
                                 right_padded):
            return (f"its mask (from '{mask.name}') hides keys by position (sequence lengths, as ONNX Runtime's "
                    "Attention mask_index does), not by the padding mask: the same only for right-padded inputs")
    names = [v.name for v in candidates[:4]] + (["..."] if len(candidates) > 4 else [])
    return f"its mask (from {names}) does not hide exactly the padded keys"


def _verdicts(model: ir.Model, inputs: list[ir.Value], attention_mask: ir.Value, mask: ir.Value,
              probes: list[np.ndarray]) -> set[bool | None]:
    """_classify of the attention mask computed from each probe given as ``mask``; {None} when it
    cannot be computed that way."""
    try:
        computed = _evaluate(model, inputs, attention_mask, mask, probes)
    except Exception:  # an input the probe cannot fake: not a mask we understand
        computed = None
    return {None} if computed is None else {_classify(c, p) for c, p in zip(computed, probes)}


def _classify(computed: np.ndarray, padding: np.ndarray) -> bool | None:
    """True: causal + key padding; False: key padding; None: something else. Only valid query rows
    are compared (padded rows are dropped anyway)."""
    batch, seq = padding.shape
    if computed.ndim > 4 or computed.size == 0:
        return None
    computed = computed.reshape((1,) * (4 - computed.ndim) + computed.shape)
    try:
        computed = np.broadcast_to(computed, (batch, computed.shape[1], seq, seq))
    except ValueError:
        return None
    if computed.dtype == np.bool_:
        visible = computed
    else:
        if not np.all((computed == 0) | (computed <= -1e4)):
            return None  # an additive bias (ALiBi, relative positions), not a mask
        visible = computed == 0
    keys = np.broadcast_to(padding[:, None, None, :] != 0, visible.shape)
    rows = np.broadcast_to(padding[:, None, :, None] != 0, visible.shape)
    causal = keys & np.tril(np.ones((seq, seq), dtype=bool))
    if np.array_equal(visible[rows], keys[rows]):
        return False
    if np.array_equal(visible[rows], causal[rows]):
        return True
    return None


def _zero_where_padded(model: ir.Model, value: ir.Value, mask: ir.Value) -> bool:
    """Whether ``value`` is ``x * m`` with ``m`` the padding mask broadcast over trailing dims (so
    the original holds zeros at padded positions, as an unpacked value does)."""
    producer = value.producer()
    if producer is None or producer.op_type != "Mul" or producer.domain not in ("", "ai.onnx"):
        return False
    for factor in producer.inputs:
        inputs = _ancestor_inputs(factor, stop=[mask]) if factor is not None else []
        if factor is None or mask not in inputs or rank_of(factor) is None:
            continue
        probes = list(_probe_masks(np.random.default_rng(1)))
        try:
            computed = _evaluate(model, inputs, factor, mask, probes)
        except Exception:
            continue
        if computed is not None and all(
                c.ndim >= 2 and c.shape[:2] == p.shape
                and np.array_equal(c != 0, np.broadcast_to((p != 0).reshape(p.shape + (1,) * (c.ndim - 2)), c.shape))
                for c, p in zip(computed, probes)):
            return True
    return False
