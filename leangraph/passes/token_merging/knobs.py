"""The knobs of token reduction for the budgeted search: per layer, merge (a ratio, by keys or
hidden states) or prune (a keep rate), or neither. One knob space for both, so that one candidate
can merge in some layers and prune in others (each site takes one reduction)."""

from __future__ import annotations

import onnx_ir as ir

from leangraph.passes.base import KnobSpace
from leangraph.passes.token_merging.merge_tokens import SEARCH_METRICS, SEARCH_RATIOS, merge_build
from leangraph.passes.token_merging.prune_tokens import SEARCH_KEEP_RATES, prune_build
from leangraph.passes.token_merging.reduction import checked_sites, reduce_tokens


def _build(setting):
    kind, *args = setting
    return merge_build(args[1], metric=args[0]) if kind == "merge" else prune_build(args[0])


def _describe(setting) -> str:
    kind, *args = setting
    return f"merge ratio {args[1]:g} by {args[0]} similarity" if kind == "merge" else f"prune, keep {args[0]:g}"


def knob_space(model: ir.Model) -> KnobSpace | str:
    """Per layer: token merging or pruning after its attention (or why the model has no such knob)."""
    sites = checked_sites(model)
    if isinstance(sites, str):
        return sites
    options = (*(("merge", metric, ratio) for metric in SEARCH_METRICS for ratio in SEARCH_RATIOS),
               *(("prune", keep) for keep in SEARCH_KEEP_RATES))

    def apply(target: ir.Model, chosen: dict[int, tuple]) -> None:
        changed, note = reduce_tokens(target, {i: _build(setting) for i, setting in chosen.items()}, "reduction")
        if not changed:
            raise ValueError(f"token reduction did not apply: {note}")

    return KnobSpace("token_reduction", tuple(f"tokens reduced after {site.layer}" for site in sites),
                     (options,) * len(sites), apply, describe=_describe)
