"""PassManager: runs an ordered pipeline, observes each pass from outside, reverts what breaks.

For every pass the manager snapshots the model (a structural clone sharing the weight tensors),
runs the pass, and lets the instruments look at the result: time, node counts, op histograms, a
text diff of the IR, the module paths touched, and verification against the reference interpreter
on the calibration inputs. A pass that raises or fails verification is reverted (the snapshot
becomes the model again), recorded with its reason, and the pipeline goes on.

A :class:`FixedPoint` group (the cleanup passes) repeats until a whole round changes nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from leangraph.backends.reference import ReferenceExecutable
from leangraph.ir import clone_model, infer_leangraph_shapes, node_count, op_histogram, verify_model
from leangraph.ir.printer import format_model
from leangraph.passes.base import Pass, PassResult
from leangraph.passes.report import PassRecord
from leangraph.passes.verification import EXACT, Tolerance, compare_outputs, valid_positions

MODULE_PATH = "leangraph.module_path"


@dataclasses.dataclass(frozen=True)
class FixedPoint:
    """Passes run in order, round after round, until a round changes nothing (or max_rounds)."""

    name: str
    passes: tuple[Pass, ...]
    max_rounds: int = 6


PipelineItem = Pass | FixedPoint


class Instrument:
    """Observes passes from outside. ``after_pass`` may set ``record.verified``/``reason``; a record
    that ends up ``verified is False`` makes the manager revert the pass."""

    def before_pass(self, pass_: Pass, model: ir.Model) -> None:  # noqa: B027 - optional hook
        pass

    def after_pass(self, pass_: Pass, model: ir.Model, record: PassRecord, result: PassResult) -> None:  # noqa: B027
        pass


class CountsInstrument(Instrument):
    """Node counts and op histograms before and after."""

    def before_pass(self, pass_, model):
        self._before = op_histogram(model)

    def after_pass(self, pass_, model, record, result):
        after = op_histogram(model)
        record.ops_before, record.ops_after = dict(self._before), dict(after)


class DiffInstrument(Instrument):
    """A unified diff of the printed IR, and the module paths of the nodes the pass touched."""

    def __init__(self, context: int = 2, max_lines: int = 4000, max_region: int = 60) -> None:
        self.context, self.max_lines, self.max_region = context, max_lines, max_region

    def before_pass(self, pass_, model):
        self._before = format_model(model)
        self._before_nodes = _node_signatures(model)

    def after_pass(self, pass_, model, record, result):
        if not result.changed:
            return
        diff = list(difflib.unified_diff(self._before, format_model(model), "before", "after", n=self.context, lineterm=""))
        if len(diff) > self.max_lines:
            diff = diff[: self.max_lines] + [f"... ({len(diff) - self.max_lines} more lines)"]
        record.diff = "\n".join(diff)
        after_nodes = _node_signatures(model)
        removed = [self._before_nodes[s] for s in self._before_nodes.keys() - after_nodes.keys()]
        added = [after_nodes[s] for s in after_nodes.keys() - self._before_nodes.keys()]
        record.module_paths = sorted({n.module for n in removed + added if n.module})
        record.region_before = sorted(removed, key=lambda n: n.order)[: self.max_region]
        record.region_after = sorted(added, key=lambda n: n.order)[: self.max_region]


@dataclasses.dataclass(frozen=True)
class RegionNode:
    """A node as the report draws it: op, value names in and out, module, position in the graph."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    module: str
    order: int


def _node_signatures(model: ir.Model) -> dict[str, RegionNode]:
    """Each node's (op, inputs, outputs) signature; what a pass changed is the symmetric difference."""
    signatures = {}
    for order, node in enumerate(ir.traversal.RecursiveGraphIterator(model.graph)):
        inputs = tuple(v.name if v is not None else "" for v in node.inputs)
        outputs = tuple(v.name for v in node.outputs)
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        signatures[f"{op}({','.join(inputs)})->{','.join(outputs)}"] = RegionNode(
            op, inputs, outputs, node.metadata_props.get(MODULE_PATH, ""), order)
    return signatures


class VerifyInstrument(Instrument):
    """Runs the changed model on the reference interpreter (or ``executor``: model -> an executable
    with input_names and output_names) and compares with the original's outputs. ``indices`` name
    the input sets in messages where ``inputs`` is a sample of the user's (default: their positions)."""

    def __init__(self, inputs: Sequence[Sequence[np.ndarray]], expected: Sequence[Sequence[np.ndarray]],
                 tolerance: Tolerance = EXACT, executor: Callable[[ir.Model], Any] = ReferenceExecutable,
                 indices: Sequence[int] | None = None) -> None:
        self.inputs, self.expected, self.tolerance, self.executor = inputs, expected, tolerance, executor
        self.indices = list(indices) if indices is not None else list(range(len(inputs)))

    def first_failure(self, model: ir.Model) -> str | None:
        """'input set N: why' for the first input set the model's outputs miss, else None."""
        executable = self.executor(model)
        for index, inputs, expected in zip(self.indices, self.inputs, self.expected):
            valid = valid_positions(model, dict(zip(executable.input_names, inputs)))
            reason = compare_outputs(executable(inputs), expected, executable.output_names, self.tolerance, valid)
            if reason:
                return f"input set {index}: {reason}"
        return None

    def after_pass(self, pass_, model, record, result):
        if not result.changed:
            return
        verify_model(model)
        reason = self.first_failure(model)
        record.verified = reason is None
        if reason is not None:
            record.reason = f"verification failed on {reason}"


class ExplainInstrument(Instrument):
    """Before every run of the pass named ``name``: why each of its rules did or did not match,
    node by node (RulePass.explain, onnxscript's matching tracer); passes that are no rule table
    explain themselves in their report notes. ``lines`` holds one list per run."""

    def __init__(self, name: str) -> None:
        self.name, self.lines = name, []

    def before_pass(self, pass_, model):
        if pass_.name == self.name:
            explain = getattr(pass_.run, "explain", None)
            self.lines.append(explain(model) if explain is not None else
                              [f"{pass_.name} is not a table of rules: its report notes say why it did what it did"])


class PassManager:
    """Runs ``pipeline`` over a model. ``run`` returns the final model and one record per pass run."""

    def __init__(
        self,
        pipeline: Sequence[PipelineItem],
        *,
        instruments: Sequence[Instrument] = (),
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.pipeline = list(pipeline)
        self.instruments = list(instruments)
        self.progress = progress

    def run(self, model: ir.Model) -> tuple[ir.Model, list[PassRecord]]:
        records: list[PassRecord] = []
        for item in self.pipeline:
            if isinstance(item, FixedPoint):
                for round_index in range(item.max_rounds):
                    changed = False
                    for pass_ in item.passes:
                        model, record = self._run_one(pass_, model, group=f"{item.name}#{round_index + 1}")
                        records.append(record)
                        changed |= record.changed and not record.reverted
                    if not changed:
                        break
            else:
                model, record = self._run_one(item, model)
                records.append(record)
        return model, records

    def _run_one(self, pass_: Pass, model: ir.Model, group: str = "") -> tuple[ir.Model, PassRecord]:
        if self.progress:
            self.progress(pass_.name)
        snapshot = clone_model(model)
        nodes_before = node_count(model)
        record = PassRecord(name=pass_.name, changed=False, nodes_before=nodes_before, nodes_after=nodes_before,
                            seconds=0.0, group=group)
        for instrument in self.instruments:
            instrument.before_pass(pass_, model)
        start = time.perf_counter()
        try:
            result = pass_(model)
            infer_leangraph_shapes(model)
        except Exception as exc:  # a broken pass must not take the pipeline down: revert and go on
            record.seconds = time.perf_counter() - start
            record.reverted, record.verified = True, False
            record.reason = f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            record.traceback = traceback.format_exc()
            return snapshot, record
        record.seconds = time.perf_counter() - start
        record.changed = result.changed
        record.fired = dict(result.fired)
        record.notes = list(result.notes)
        record.nodes_after = node_count(model)
        for instrument in self.instruments:
            try:
                instrument.after_pass(pass_, model, record, result)
            except Exception as exc:
                record.verified = False
                record.reason = f"{type(instrument).__name__} failed: {type(exc).__name__}: {str(exc).strip()[:500]}"
                record.traceback = traceback.format_exc()
            if record.verified is False:
                break
        if record.verified is False:
            record.reverted = True
            record.nodes_after = nodes_before
            return snapshot, record
        return model, record

