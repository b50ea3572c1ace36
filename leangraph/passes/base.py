"""What a pass is: a named function over the model that says whether it changed it.

    @graph_pass("dce")
    def dce(model: ir.Model) -> bool: ...

Rule-based passes are tables of onnxscript rewrite rules (pattern function -> replacement function,
with a condition); :class:`RulePass` runs the table and reports which rules fired.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import onnx_ir as ir
import onnx_ir.passes.common
import onnxscript.optimizer
from onnxscript.rewriter import MatchingTracer, MatchStatus
from onnxscript.rewriter import pattern as rewriter_pattern

PassFunction = Callable[[ir.Model], "bool | PassResult"]


@dataclasses.dataclass
class PassResult:
    changed: bool
    fired: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    """For rule passes: how often each rule rewrote the graph."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """What the pass wants the report to say: what it did, or why it did nothing."""


@dataclasses.dataclass(frozen=True)
class Pass:
    """A named rewrite. ``exact`` passes keep outputs equal up to fp reassociation; lossy ones
    (quantization, token merging) only run when the user allowed a loss."""

    name: str
    run: PassFunction
    doc: str = ""
    exact: bool = True

    def __call__(self, model: ir.Model) -> PassResult:
        result = self.run(model)
        return result if isinstance(result, PassResult) else PassResult(bool(result))


def graph_pass(name: str, *, exact: bool = True) -> Callable[[PassFunction], Pass]:
    """Decorate ``fn(model) -> bool`` into a :class:`Pass` whose doc is the function's docstring."""

    def wrap(fn: PassFunction) -> Pass:
        return Pass(name, fn, (fn.__doc__ or "").strip(), exact)

    return wrap


class RulePass:
    """Runs a table of rewrite rules, rule by rule, until none fires; counts each rule's rewrites."""

    def __init__(self, name: str, rules: Sequence[rewriter_pattern.RewriteRule], doc: str = "", max_rounds: int = 8):
        self.name = name
        self.rules = list(rules)
        self.doc = doc
        self.max_rounds = max_rounds
        for rule in self.rules:
            if not rule.name:
                raise ValueError(f"every rule of pass '{name}' needs a name")

    def __call__(self, model: ir.Model) -> PassResult:
        fired: collections.Counter[str] = collections.Counter()
        # Rules read constants through Value.const_value, which Constant nodes' outputs only carry
        # once propagated.
        onnxscript.optimizer.basic_constant_propagation(ir.traversal.RecursiveGraphIterator(model.graph))
        for _ in range(self.max_rounds):
            round_count = 0
            for rule in self.rules:
                count = rewriter_pattern.RewriteRuleSet([rule]).apply_to_model(model)
                if count:
                    fired[rule.name] += count
                    round_count += count
                    ir.passes.common.RemoveUnusedNodesPass()(model)
            if not round_count:
                break
        return PassResult(bool(fired), fired)

    def explain(self, model: ir.Model) -> list[str]:
        """Why the rules did or did not match, node by node (onnxscript's matching tracer): per
        candidate node (a node of a rule's root op type) the rule that got furthest, how many nodes
        of its pattern matched, and where it stopped. Candidates no rule matched beyond the root
        node itself are counted, not listed."""
        tracer = MatchingTracer()
        rewriter_pattern.RewriteRuleSet(self.rules).apply_to_model(model.clone(), tracer=tracer)
        best: dict[int, tuple] = {}
        for rule, matches in tracer.best_matches_map.items():
            for info in matches:
                key = id(info.root_node)
                if key not in best or info.score() > best[key][1].score():
                    best[key] = (rule, info)
        lines, shallow = [], 0
        for rule, info in sorted(best.values(), key=lambda pair: pair[1].root_node.name or ""):
            matched = len(info.match_result.nodes)
            if info.status != MatchStatus.SUCCESS and matched <= 1:
                shallow += 1
                continue
            status = ("matched" if info.status == MatchStatus.SUCCESS
                      else f"{matched} pattern nodes matched, then failed: {info.match_result.reason}")
            lines.append(f"'{info.root_node.name}' ({info.root_node.op_type}): {rule.name}: {status}")
        if shallow:
            lines.append(f"{shallow} other candidate nodes: no rule matched beyond the node itself")
        return lines

    def as_pass(self, exact: bool = True) -> Pass:
        return Pass(self.name, self, self.doc, exact)



@dataclasses.dataclass(frozen=True)
class KnobSpace:
    """The knobs a lossy pass declares for the budgeted search (passes/quantization/mixed_precision.py):
    one knob per site (a layer), each with the settings it may take besides off. The search measures
    each setting alone (its sensitivity and the time it saves), picks settings under the budget and
    calls ``apply`` on a candidate model with {knob index: chosen setting}."""

    pass_name: str
    knobs: tuple[str, ...]
    """What each knob sets, for the report (e.g. 'merge ratio of bert.encoder.layer.0')."""
    options: tuple[tuple[Any, ...], ...]
    """Per knob, its settings besides off."""
    apply: Callable[[ir.Model, dict[int, Any]], None]
    describe: Callable[[Any], str] = str
    """A setting in words (e.g. 'ratio 0.3, hidden-state metric')."""
