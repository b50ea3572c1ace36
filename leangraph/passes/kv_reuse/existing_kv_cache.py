"""A decoder that already has a KV cache (optimum's ``decoder_with_past_model.onnx`` or
``decoder_model_merged.onnx``, onnxruntime-genai's model, a TorchScript export of a HF model with
``past_key_values``): its cache inputs and outputs read off the graph, so it is used as it is
instead of getting a second cache from introduce_kv_cache.

What is recognised: per layer an input whose name holds ``past`` and an output whose name holds
``present`` (or ``past``), each a key and a value (``key`` / ``value`` in the name, or a trailing
0 / 1 after the layer number), rank 4 or 3, with one symbolic dim besides the batch: the
positions. ``input_ids``, ``attention_mask`` over past and new positions, ``position_ids`` over
the new positions only (HF's convention with a cache), and boolean inputs such as optimum's
``use_cache_branch`` (fed True). Nothing in the graph changes.
"""

from __future__ import annotations

import re

import onnx_ir as ir

from leangraph.passes.fusion._checks import rank as rank_of
from leangraph.passes.kv_reuse.introduce_kv_cache import LAYOUT_KEY, KVCacheLayout

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)


def _role(name: str) -> tuple[int, str] | None:
    """(layer, 'key' | 'value') from a cache tensor's name, or None."""
    lowered = name.lower()
    numbers = [int(n) for n in re.findall(r"\d+", lowered)]
    if not numbers:
        return None
    first = re.search(r"\d+", lowered)
    # the words after the layer number first (past_key_values.3.value), then the rest of the name
    # without "key_values" (past_key_3)
    for words in (lowered[first.end():], re.sub(r"key_?values?", "", lowered[:first.start()])):
        if "key" in words:
            return numbers[0], "key"
        if "value" in words:
            return numbers[0], "value"
    if len(numbers) >= 2 and numbers[-1] in (0, 1):  # past_key_values_3_0 / _3_1
        return numbers[0], ("key", "value")[numbers[-1]]
    return None


def _pairs(values: list[ir.Value], word: str) -> dict[int, dict[str, ir.Value]] | str:
    layers: dict[int, dict[str, ir.Value]] = {}
    for value in values:
        if word not in value.name.lower():
            continue
        role = _role(value.name)
        if role is None:
            return f"'{value.name}' names no layer and key or value"
        layer, which = role
        if which in layers.setdefault(layer, {}):
            return f"'{value.name}' and '{layers[layer][which].name}' both read as layer {layer}'s {which}"
        layers[layer][which] = value
    for layer, pair in layers.items():
        if set(pair) != {"key", "value"}:
            return f"layer {layer} has a {next(iter(pair))} but no {({'key', 'value'} - set(pair)).pop()}"
    return layers


def _position_axis(value: ir.Value, batch) -> int | str:
    if value.dtype not in _FLOATS or rank_of(value) not in (3, 4):
        return f"'{value.name}' is not a rank-3 or rank-4 float tensor"
    axes = [i for i, d in enumerate(value.shape) if i > 0 and not isinstance(d, int)]
    if len(axes) != 1 or value.shape[0] != batch:
        return f"'{value.name}' {value.shape} has no single symbolic position dim after the batch"
    return axes[0]


def find_kv_cache(model: ir.Model) -> KVCacheLayout | str | None:
    """The layout of the cache ``model`` already has; None when it has no past inputs (then
    introduce_kv_cache makes one); why not when it has some but they cannot be driven."""
    graph = model.graph
    if not any("past" in v.name.lower() for v in graph.inputs):
        return None
    inputs = {v.name: v for v in graph.inputs}
    tokens, mask = inputs.get("input_ids"), inputs.get("attention_mask")
    if tokens is None or mask is None:
        return "skipped: a decoder with past inputs needs inputs named input_ids and attention_mask"
    past = _pairs([v for v in graph.inputs], "past")
    present = _pairs([v for v in graph.outputs], "present")
    if isinstance(present, dict) and not present:
        present = _pairs([v for v in graph.outputs], "past")
    for found in (past, present):
        if isinstance(found, str):
            return f"skipped: {found}"
    if sorted(past) != sorted(present) or not past:
        return f"skipped: past layers {sorted(past)} and present layers {sorted(present)} differ"
    batch = tokens.shape[0] if tokens.shape is not None else None
    axes = []
    for layer in sorted(past):
        found = [_position_axis(v, batch) for v in (*past[layer].values(), *present[layer].values())]
        reason = next((f for f in found if isinstance(f, str)), None)
        if reason is not None:
            return f"skipped: {reason}"
        if len(set(found)) != 1:
            return f"skipped: layer {layer}'s past and present hold positions on different axes {found}"
        axes.append(found[0])
    cache = {v.name for layer in past.values() for v in layer.values()}
    logits = [v for v in graph.outputs if v.name not in {x.name for layer in present.values() for x in layer.values()}]
    if len(logits) != 1:
        return f"skipped: {len(logits)} outputs besides the present keys and values; one (the logits) is expected"
    flags, others = [], []
    for value in graph.inputs:
        if value.name in cache or value is tokens or value is mask:
            continue
        if value.dtype == ir.DataType.BOOL and (rank_of(value) or 0) <= 1:
            flags.append(value.name)  # use_cache_branch
        elif rank_of(value) == 2 and value.shape[1] == tokens.shape[1]:
            others.append(value.name)  # position_ids, over the new positions
        else:
            return f"skipped: input '{value.name}' {value.shape} is neither a cache tensor nor position ids"
    layout = KVCacheLayout(
        tokens=tokens.name, mask=mask.name,
        past=[(past[i]["key"].name, past[i]["value"].name) for i in sorted(past)],
        present=[(present[i]["key"].name, present[i]["value"].name) for i in sorted(past)],
        seq_axis=axes, logits=logits[0].name, other_inputs=others, positions_new_only=True, flags=flags)
    model.metadata_props[LAYOUT_KEY] = layout.to_json()
    return layout
