"""Token pruning (EViT, Liang et al. 2022; see ../shared/PAPERS.md): in chosen encoder layers, the
tokens after attention keep only the ones the first token (CLS) attends to most, and the rest are
fused into one token weighted by that attention, so the MLP and every later layer run on fewer
tokens. Lossy: never exact; it runs only under a loss budget, which sets its knob, the keep rate of
each layer.

Where it applies, and what changes downstream, is token merging's (reduction.py): self-attention
over [batch, seq, width] or padding removal's packed tokens, bidirectional; after the layer's
attention, on its residual stream, a leangraph::PruneTokens with the layer's attention query and
keys (the CLS row of its attention map is recomputed from them: fused attention does not expose
it) and the token sizes; later attention gets ``log(size)`` on its keys (the fused token stands for
all it fused), mean pooling is weighted by the sizes, CLS stays first. When it does nothing, the
note says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx_ir as ir

from leangraph.ir.registry import DOMAIN
from leangraph.passes.base import Pass, PassResult
from leangraph.passes.token_merging.reduction import Site, plan_sites, reduce_tokens

SEARCH_KEEP_RATES = (0.7,)
"""The keep rates the budgeted search tries per layer (EViT's own: 0.7)."""


class prune_build:  # noqa: N801 - a Build, named for what it builds
    """The PruneTokens node of one site."""

    def __init__(self, keep_rate: float, protect: int = 1) -> None:
        if not 0.0 <= keep_rate <= 1.0:
            raise ValueError(f"a keep rate is a fraction of the tokens in [0, 1], not {keep_rate!r}")
        self.keep_rate, self.protect = float(keep_rate), int(protect)

    def describe(self, site: Site) -> str:
        return f"{site.layer}: keep {self.keep_rate:g}"

    def __call__(self, tape, site, unpacked, sizes):
        attention = site.attention
        attrs = {"keep_rate": self.keep_rate, "protect": self.protect,
                 "num_heads": attention.attributes.get_int("num_heads", 1),
                 "scale": attention.attributes.get_float("scale", 0.0)}
        return tape.op_multi_out(
            "PruneTokens", [unpacked(site.stream), unpacked(attention.inputs[0]), unpacked(attention.inputs[1]), sizes],
            attrs, num_outputs=2, domain=DOMAIN, name=f"{attention.name}_prune_tokens")


class PruneTokens:
    """The pass object: ``keep_rates`` per site (a float for all, a sequence in layer order, or
    {site index: keep rate}); a site with keep rate 1 (or absent from a mapping) is left alone."""

    def __init__(self, keep_rates: float | Sequence[float] | Mapping[int, float], protect: int = 1) -> None:
        self.keep_rates, self.protect = keep_rates, protect

    def __call__(self, model: ir.Model) -> PassResult:
        plan = plan_sites(model)
        if isinstance(plan, str):
            return PassResult(False, notes=[plan])
        count = len(plan.sites)
        if isinstance(self.keep_rates, Mapping):
            rates = [self.keep_rates.get(i, 1.0) for i in range(count)]
        elif isinstance(self.keep_rates, (int, float)):
            rates = [float(self.keep_rates)] * count
        else:
            rates = list(self.keep_rates)
            if len(rates) != count:
                raise ValueError(f"{len(rates)} keep rates for {count} layers")
        builds = {i: prune_build(rate, self.protect) for i, rate in enumerate(rates) if rate < 1.0}
        changed, note = reduce_tokens(model, builds, "keep rate < 1")
        if not changed:
            return PassResult(False, notes=[note])
        return PassResult(True, notes=[f"tokens pruned after attention in {note} ("
                                       + ", ".join(builds[i].describe(plan.sites[i]) for i in sorted(builds)) + ")"])


def prune_tokens_pass(keep_rates, protect: int = 1) -> Pass:
    return Pass("prune_tokens", PruneTokens(keep_rates, protect), (__doc__ or "").strip(), exact=False)


PRUNE_TOKENS = prune_tokens_pass(0.7)
"""By name in a pipeline: 70% of each layer's tokens kept (the budgeted search sets keep rates per layer)."""
