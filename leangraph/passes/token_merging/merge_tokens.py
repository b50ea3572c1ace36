"""Token merging (ToMe, Bolya et al. 2023; see ../shared/PAPERS.md): in chosen encoder layers, the
tokens after attention are merged by bipartite soft matching, so the MLP and every later layer run
on fewer tokens. Lossy: never exact; it runs only under a loss budget, which sets its knob, the merge
ratio of each layer.

Where it applies: encoders whose self-attention is leangraph::MultiHeadAttention over [batch, seq,
width] (masked by a padding mask, or unmasked: ViT) or padding removal's
leangraph::PackedMultiHeadAttention over packed tokens, bidirectional, every layer masked alike.

What it rewrites, for each layer with a ratio > 0: the layer's residual stream after attention (the
value its MLP and the MLP's residual read) goes through leangraph::MergeTokens, with the layer's
attention keys as the similarity metric and the token sizes (how many original tokens each stands
for; they start as the padding mask, so padding is never merged into real tokens) carried along.
In the packed layout the merge runs on the unpacked view and its result is packed again by the new
sizes: merging stays within each sequence. Downstream, on the merged tokens:
- attention masks become the sizes: ``log(size)`` on each key (proportional attention; size 0 hides
  padding), PackedMultiHeadAttention with ``size_bias``;
- a value weighted by the padding mask (mean pooling's ``x * mask``) is weighted by the sizes, so
  the pooled mean is the size-weighted mean over the original tokens;
- the first token (CLS) is protected: never merged, still first, so CLS pooling reads it.

When it does nothing, the note says why: an output with a token axis (BERT's last_hidden_state: per
token positions no longer exist after a merge), a token-axis value that bypasses the merges, causal
attention, or a reduction over tokens it cannot weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx_ir as ir

from leangraph.ir.registry import DOMAIN
from leangraph.passes.base import Pass, PassResult
from leangraph.passes.token_merging.reduction import Build, Site, plan_sites, reduce_tokens


class MergeTokens:
    """The pass object: ``ratios`` per merge site (a float for all of them, a sequence in layer
    order, or {site index: ratio}); ``r`` tokens more per layer (ToMe's fixed schedule)."""

    def __init__(self, ratios: float | Sequence[float] | Mapping[int, float], r: int | Sequence[int] = 0,
                 protect: int = 1, metric: str | Mapping[int, str] = "keys") -> None:
        for name in ([metric] if isinstance(metric, str) else metric.values()):
            if name not in ("keys", "hidden"):
                raise ValueError(f"metric must be 'keys' (ToMe's) or 'hidden' (the merged values), not {name!r}")
        self.ratios, self.r, self.protect, self.metric = ratios, r, protect, metric

    def schedule(self, count: int) -> list[tuple[float, int]]:
        def per_site(knob, default):
            if isinstance(knob, Mapping):
                return [knob.get(i, default) for i in range(count)]
            if isinstance(knob, (int, float)):
                return [knob] * count
            knob = list(knob)
            if len(knob) != count:
                raise ValueError(f"{len(knob)} merge ratios for {count} layers")
            return knob
        return list(zip((float(x) for x in per_site(self.ratios, 0.0)), (int(x) for x in per_site(self.r, 0))))

    def builds(self, count: int) -> dict[int, Build]:
        """The merge of each site with a ratio or r > 0."""
        metrics = [self.metric if isinstance(self.metric, str) else self.metric.get(i, "keys") for i in range(count)]
        return {i: merge_build(ratio, r, metric, self.protect)
                for i, ((ratio, r), metric) in enumerate(zip(self.schedule(count), metrics)) if ratio > 0 or r > 0}

    def __call__(self, model: ir.Model) -> PassResult:
        sites = plan_sites(model)
        if isinstance(sites, str):
            return PassResult(False, notes=[sites])
        builds = self.builds(len(sites.sites))
        changed, note = reduce_tokens(model, builds, "merge ratio > 0")
        if not changed:
            return PassResult(False, notes=[note])
        return PassResult(True, notes=[f"tokens merged after attention in {note} ("
                                       + ", ".join(builds[i].describe(sites.sites[i]) for i in sorted(builds)) + ")"])


def merge_tokens_pass(ratios, r=0, protect: int = 1, metric="keys") -> Pass:
    return Pass("merge_tokens", MergeTokens(ratios, r, protect, metric), (__doc__ or "").strip(), exact=False)


MERGE_TOKENS = merge_tokens_pass(0.1)
"""By name in a pipeline: 10% of each layer's tokens merged (the budgeted search sets ratios per layer)."""

SEARCH_RATIOS = (0.15, 0.3)
"""The ratios the budgeted search tries per layer (0.5 merges every source: measured far too lossy)."""
SEARCH_METRICS = ("hidden", "keys")
"""ToMe matches by the attention keys; the residual stream itself matches better on text encoders
(all-MiniLM-L6-v2, STS-B passages, layer 1 at 0.3: -4.8 Spearman by keys, +0.8 by hidden states)."""




class merge_build:  # noqa: N801 - a Build, named for what it builds
    """The MergeTokens node of one site: its tokens matched by the attention keys (ToMe) or by the
    residual stream itself."""

    def __init__(self, ratio: float, r: int = 0, metric: str = "keys", protect: int = 1) -> None:
        self.ratio, self.r, self.metric, self.protect = float(ratio), int(r), metric, int(protect)

    def describe(self, site: Site) -> str:
        return f"{site.layer}: ratio {self.ratio:g}" + (f" + {self.r}" if self.r else "") + f" by {self.metric}"

    def __call__(self, tape, site, unpacked, sizes):
        keys = self.metric == "keys"
        metric = site.attention.inputs[1] if keys else site.stream
        heads = site.attention.attributes.get_int("num_heads", 1) if keys else 1
        return tape.op_multi_out(
            "MergeTokens", [unpacked(site.stream), unpacked(metric), sizes],
            {"ratio": self.ratio, "r": self.r, "protect": self.protect, "num_heads": int(heads)},
            num_outputs=2, domain=DOMAIN, name=f"{site.attention.name}_merge_tokens")
