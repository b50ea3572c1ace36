"""Budgeted mixed precision: which linear layers run in int8 or bf16 ("reduced" precision).

1. Kernels: for every layer shape, the fp32 and reduced-precision kernels are timed
   (cost_model.linear_kernels: torch's fp32 and bf16 GEMMs, fbgemm's int8, the TVM backend's int8
   micro-kernel, ONNX Runtime's MatMul, DynamicQuantizeMatMul and static-activation
   MatMulIntegerToFloat); the backend's fp32 kernel and each reduced-precision kernel it offers give
   the predicted latency of the layer in each option. Where a static-activation kernel is offered,
   every layer's input range is calibrated first (int8_linear.activation_ranges).
2. Sensitivity: each layer alone with each reduced-precision kernel faster than fp32 at its shape
   (the kernels round differently), the relative squared error of the model's outputs on a sample
   of the calibration data (SENSITIVITY_SETS sets; run on the compiled candidate).
3. Assignment: per layer fp32 or one of its reduced-precision kernels, minimizing the predicted
   latency subject to the summed sensitivity staying under a budget, as an integer program
   (scipy.optimize.milp; sensitivities are treated as additive).
4. Check: the assignment is compiled and really evaluated (``evaluate`` within ``max_drop`` of the
   unquantized model, or every output within ``tolerance`` on the calibration data); when it
   misses, the budget is halved and the program solved again (up to MAX_ATTEMPTS), down to all fp32.

   The check keeps a margin: an assignment passes when its drop is at most
   ``(1 - SELECTION_MARGIN) * max_drop``. The search picks the first assignment whose measured drop
   fits, so the one it picks is the one ``evaluate``'s data favours most; on other data its drop is
   larger (all-MiniLM-L6-v2, STS-B: picked at a 0.2 drop on a 300-pair subset, 0.26-0.36 on pairs
   it was not picked on). The margin is what is kept for that; the report says what was used.

5. Knobs of other lossy passes (passes.base.KnobSpace; token merging's ratio per layer) join the
   same program: each setting alone is compiled, its drop of ``evaluate`` measured (or, under a
   tolerance, its output error, as a layer's) and the time it saves timed on the model
   (``interleaved_saving``); settings that save time are multiple-choice items of their own, bounded
   by the allowed drop where evaluate measured them (their own budget, halved with the other).

The result is a model, one :class:`LayerChoice` per candidate layer and one :class:`KnobChoice` per
knob for the report.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from leangraph.ir import clone_model
from leangraph.passes.base import KnobSpace
from leangraph.passes.quantization.int8_linear import (activation_ranges, bf16_layers, candidate_layers,
                                                       quantize_layers)
from leangraph.passes.verification import Tolerance, compare_outputs, verification_sample


@dataclasses.dataclass
class LayerChoice:
    """One linear layer: its shape, sensitivity per reduced-precision kernel, timings, the choice."""

    name: str
    module_path: str
    shape: tuple[int, int]
    sensitivities: dict[str, float]
    seconds: dict[str, float]
    precision: str = "fp32"
    kernel: str = ""

    def row(self) -> str:
        timings = ", ".join(f"{k} {v * 1e3:.3f} ms" if math.isfinite(v) else f"{k} does not tile this shape"
                            for k, v in self.seconds.items())
        sensitivity = ", ".join(f"{v:.2e}" if len(self.sensitivities) == 1 else f"{v:.2e} ({k})"
                                for k, v in self.sensitivities.items())
        return (f"{self.module_path or self.name}: {self.precision} via {self.kernel} "
                f"[K={self.shape[0]}, N={self.shape[1]}, sensitivity {sensitivity}; {timings}]")


@dataclasses.dataclass
class KnobChoice:
    """One knob a lossy pass declared (passes.base.KnobSpace): each setting's sensitivity and the time
    it saved alone on the timing inputs, and the setting chosen (None: off)."""

    space: KnobSpace
    index: int
    sensitivities: dict[Any, float]
    saved: dict[Any, float]
    baseline_seconds: float
    by_evaluate: bool = False
    """Sensitivities are evaluate()'s drop (the user's metric), not the outputs' relative error."""
    chosen: Any = None

    def row(self) -> str:
        def cost(o):
            return f"evaluate() drop {self.sensitivities[o]:+.3f}" if self.by_evaluate else \
                f"sensitivity {self.sensitivities[o]:.2e}"
        tried = "; ".join(f"{self.space.describe(o)}: {cost(o)}, "
                          f"{self.saved[o] * 1e3:+.1f} ms of {self.baseline_seconds * 1e3:.1f} ms saved"
                          for o in self.sensitivities)
        setting = "off" if self.chosen is None else self.space.describe(self.chosen)
        return f"{self.space.knobs[self.index]}: {setting} [{tried}]"


def solve(gain: Sequence[Sequence[float]], sensitivity: Sequence[Sequence[float]], budget: float | Sequence[float],
          groups: Sequence[int] | None = None) -> list[int | None]:
    """Per layer, the index of its reduced-precision option to use (None: fp32): maximize the summed gain
    with the summed sensitivity <= budget and at most one option per layer (a multiple-choice
    knapsack). ``gain[l][j]`` and ``sensitivity[l][j]`` are layer l's with option j. With ``groups``
    (each row's group), sensitivities in different units: ``budget[g]`` bounds group g's sum."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    options = [(layer, j) for layer, gains in enumerate(gain) for j, g in enumerate(gains) if g > 0]
    if not options:
        return [None] * len(gain)
    one_per_layer = np.zeros((len(gain), len(options)))
    for column, (layer, _) in enumerate(options):
        one_per_layer[layer, column] = 1.0
    cost = np.array([sensitivity[layer][j] for layer, j in options], dtype=np.float64)
    groups = list(groups) if groups is not None else [0] * len(gain)
    budgets = [budget] if isinstance(budget, (int, float)) else list(budget)
    per_group = [LinearConstraint(np.where([groups[layer] == g for layer, _ in options], cost, 0.0)[None, :],
                                  -np.inf, limit) for g, limit in enumerate(budgets)]
    result = milp(c=-np.array([gain[layer][j] for layer, j in options], dtype=np.float64),
                  integrality=np.ones(len(options)), bounds=Bounds(0, 1),
                  constraints=[*per_group, LinearConstraint(one_per_layer, -np.inf, 1.0)])
    chosen: list[int | None] = [None] * len(gain)
    if result.success:
        for (layer, j), x in zip(options, result.x):
            if round(x):
                chosen[layer] = j
    return chosen


def output_error(got: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> float:
    """Relative squared error of all float outputs together."""
    num = den = 0.0
    for g, e in zip(got, expected):
        e = np.asarray(e, dtype=np.float64)
        if e.dtype.kind == "f":
            num += float(((np.asarray(g, dtype=np.float64) - e) ** 2).sum())
            den += float((e**2).sum())
    return num / max(den, 1e-30)


SELECTION_MARGIN = 0.5
"""The part of ``max_drop`` the search leaves unused (see the module doc, step 4)."""

NO_ASSIGNMENT_MET = "quantization: no int8 assignment met the budget; every layer stays fp32"
"""The last note when every attempted assignment missed the budget (optimize() says so on stderr)."""


def choose_precisions(
    model: ir.Model,
    input_sets: Sequence[Sequence[np.ndarray]],
    compile_model: Callable[[ir.Model], Any],
    kernel_seconds: Callable[[np.ndarray], dict[str, float]],
    kernels: dict[str, Any],
    *,
    evaluate: Callable[[Callable], float] | None = None,
    max_drop: float = 0.0,
    baseline: float | None = None,
    tolerance: Tolerance | None = None,
    progress: Callable[[str], None] | None = None,
    knob_spaces: Sequence[KnobSpace] = (),
    kernel_rows: int = 512,
    time_saved: Callable[[Any, Any, Sequence], tuple[float, float]] | None = None,
) -> tuple[ir.Model, list[LayerChoice], list[str], list[KnobChoice]]:
    """The model with the chosen layers in int8 (and the chosen settings of ``knob_spaces``, the
    knobs other lossy passes declared: token merging's ratio per layer), one LayerChoice per
    candidate layer, notes, and one KnobChoice per declared knob.

    ``compile_model`` gives a compiled candidate (``run_flat(arrays)`` runs it, ``evaluate`` takes
    it); ``kernel_seconds(weight)`` times every linear kernel at that weight's shape; ``kernels``
    names the backend's "fp32" kernel among them and maps its "reduced" kernels to their schemes
    (activation bits, weight bits, static activations: linear_kernels.Int8Scheme). A layer's
    options are the reduced-precision kernels faster than the fp32 one at its shape. A knob setting
    is an option where it saved time alone, measured on the model (interleaved with the model
    without it, on the first TIMING_SETS input sets); kernel gains are scaled to the same unit (the
    rows the linear layers see per timing pass over the kernel table's rows)."""
    layers = candidate_layers(model)
    if not layers and not knob_spaces:
        return model, [], ["quantization: no linear layer with constant weights"], []
    if not input_sets:
        return model, [], ["quantization skipped: it needs calibration data (or example_inputs)"], []
    say = progress or (lambda _: None)
    reference = compile_model(model)
    expected = [reference.run_flat(inputs) for inputs in input_sets]
    static = any(getattr(scheme, "static_activations", False) for scheme in kernels["reduced"].values())
    ranges = activation_ranges(model, input_sets, compile_model) if static else {}
    timings: dict[tuple[int, int], dict[str, float]] = {}
    sample = verification_sample(input_sets, SENSITIVITY_SETS)
    choices = []
    for index, node in enumerate(layers):
        weight = node.inputs[1].const_value.numpy()
        if weight.shape not in timings:
            say(f"timing kernels for shape {weight.shape}")
            timings[weight.shape] = kernel_seconds(weight)
        seconds = timings[weight.shape]
        faster = [k for k in kernels["reduced"] if seconds[k] < seconds[kernels["fp32"]]]
        # with no reduced-precision kernel faster, the fastest one's sensitivity still goes in the report
        measured = faster or [min(kernels["reduced"], key=seconds.__getitem__)]
        sensitivities = {}
        for kernel in measured:
            say(f"sensitivity of layer {index + 1}/{len(layers)} ({kernel})")
            single = clone_model(model)
            lower_precision(single, {node.name}, kernels["reduced"][kernel], ranges)
            candidate = compile_model(single)
            sensitivities[kernel] = float(np.mean([output_error(candidate.run_flat(input_sets[i]), expected[i])
                                                   for i in sample]))
        choices.append(LayerChoice(node.name, node.metadata_props.get("leangraph.module_path", ""),
                                   tuple(weight.shape), sensitivities, seconds, kernel=kernels["fp32"]))

    allowed = (1 - SELECTION_MARGIN) * max_drop
    drop = (lambda candidate: baseline - float(evaluate(candidate))) if evaluate is not None and baseline is not None \
        else None
    knob_choices = _measure_knobs(model, knob_spaces, reference, [input_sets[i] for i in sample],
                                  [expected[i] for i in sample], input_sets[:TIMING_SETS], compile_model, say,
                                  time_saved or interleaved_saving, drop)
    scale = _rows_per_timing_pass(model, input_sets[:TIMING_SETS], compile_model) / kernel_rows if layers else 0.0

    options = [list(c.sensitivities) for c in choices] + [list(k.sensitivities) for k in knob_choices]
    gain = ([[scale * (c.seconds[kernels["fp32"]] - c.seconds[k]) for k in c.sensitivities] for c in choices]
            + [[k.saved[o] if k.saved[o] > MIN_SAVING * k.baseline_seconds else 0.0 for o in k.sensitivities]
               for k in knob_choices])
    # Knob settings measured by evaluate() are bounded by the allowed drop itself (a group of their
    # own); one that measured no drop still costs a tenth of it: drops do not add up exactly.
    sensitivity = [list(c.sensitivities.values()) for c in choices] + [
        [max(v, 0.1 * allowed) for v in k.sensitivities.values()] if drop else list(k.sensitivities.values())
        for k in knob_choices]
    groups = [0] * len(choices) + [1 if drop else 0] * len(knob_choices)
    budget = [float(sum(max(s) for s, g in zip(sensitivity, groups) if g == 0)), allowed]
    notes = []
    if not any(g > 0 for gains in gain for g in gains):
        notes.append(f"quantization: no layer shape where {' or '.join(kernels['reduced'])} is faster than "
                     f"{kernels['fp32']} on this machine; every layer stays fp32"
                     + (" and no knob setting saved time" if knob_choices else ""))
        return model, choices, notes, knob_choices
    for attempt in range(MAX_ATTEMPTS):
        chosen = solve(gain, sensitivity, budget, groups)
        picked = {c.name: offered[j] for c, offered, j in zip(choices, options, chosen) if j is not None}
        settings = {id(k): options[len(choices) + i][j] for i, (k, j) in enumerate(zip(knob_choices, chosen[len(choices):]))
                    if j is not None}
        if not picked and not settings:
            break
        candidate_model = clone_model(model)
        for kernel, scheme in kernels["reduced"].items():
            lower_precision(candidate_model, {n for n, k in picked.items() if k == kernel}, scheme, ranges)
        _apply_knobs(candidate_model, knob_choices, settings)
        candidate = compile_model(candidate_model)
        verdict = _check(candidate, input_sets, expected, evaluate, max_drop, baseline, tolerance)
        counts = Counter(picked.values())
        per_kernel = ", ".join(f"{counts[kernel]} {kernel}" for kernel in kernels["reduced"] if counts[kernel])
        precisions = _precision_words(kernels, picked.values())
        knobs_set = "".join(f", {k.space.knobs[k.index]} {k.space.describe(settings[id(k)])}"
                            for k in knob_choices if id(k) in settings)
        notes.append(f"quantization attempt {attempt + 1}: {len(picked)}/{len(choices)} layers {precisions} ({per_kernel}"
                     f"{knobs_set}; sensitivity budget {budget[0]:.2e}"
                     + (f", evaluate() drop budget {budget[1]:.3g} for the knobs" if drop and knob_choices else "")
                     + f"): {verdict or 'within budget'}")
        if verdict is None:
            for choice in choices:
                choice.precision, choice.kernel = ((kernels["reduced"][picked[choice.name]].precision,
                                                    picked[choice.name]) if choice.name in picked
                                                   else ("fp32", kernels["fp32"]))
            for knob in knob_choices:
                knob.chosen = settings.get(id(knob))
            return candidate_model, choices, notes, knob_choices
        budget = [b / 2 for b in budget]
    notes.append(NO_ASSIGNMENT_MET)
    return model, choices, notes, knob_choices


SENSITIVITY_SETS = 4
"""Input sets a layer's or knob setting's sensitivity is measured on (verification_sample: the
first, the most padded, the smallest, then the next in order). MiniLM, 20 STS-B calibration batches: the 48
layer-and-kernel sensitivities took 26 s on all 20; the ranking they give is what matters, and the
chosen assignment is still checked on every set (or by evaluate)."""

MAX_ATTEMPTS = 24
"""Assignments the search checks before it gives up (each halves the budgets; it stops earlier
when the program picks nothing)."""

MIN_SAVING = 0.02
"""A knob setting is offered only where it saved more than this part of the model's time: a smaller
saving is within the timing noise of this machine, and would risk a slower result."""

TIMING_SETS = 3
"""Input sets a knob setting's saving is timed on (interleaved with the model without it)."""
TIMING_ROUNDS = 3


def interleaved_saving(reference, candidate, input_sets) -> tuple[float, float]:
    """(seconds the candidate saves over the reference on one pass over ``input_sets``, the
    reference's seconds): medians of TIMING_ROUNDS interleaved rounds, after one warm-up pass each
    (fresh ONNX Runtime sessions run their first calls slow)."""
    def seconds(compiled) -> float:
        start = time.perf_counter()
        for inputs in input_sets:
            compiled.run_flat(inputs)
        return time.perf_counter() - start

    seconds(reference), seconds(candidate)
    rounds = [(seconds(reference), seconds(candidate)) for _ in range(TIMING_ROUNDS)]
    return float(np.median([base - cand for base, cand in rounds])), float(np.median([base for base, _ in rounds]))


def _measure_knobs(model, knob_spaces, reference, input_sets, expected, timing_sets, compile_model, say,
                   time_saved, drop) -> list[KnobChoice]:
    """Each setting of each declared knob alone: its sensitivity (``drop(candidate)``, evaluate()'s
    drop, where the budget is evaluate's; else the outputs' relative error on every input set) and
    the time it saved on the timing sets (``time_saved``: interleaved_saving)."""
    knob_choices = []
    for space in knob_spaces:
        for index, settings in enumerate(space.options):
            sensitivities, saved, baseline = {}, {}, []
            for setting in settings:
                say(f"{space.knobs[index]}: {space.describe(setting)}")
                single = clone_model(model)
                space.apply(single, {index: setting})
                candidate = compile_model(single)
                sensitivities[setting] = drop(candidate) if drop else float(np.mean(
                    [output_error(candidate.run_flat(inputs), want) for inputs, want in zip(input_sets, expected)]))
                saved[setting], base = time_saved(reference, candidate, timing_sets)
                baseline.append(base)
            knob_choices.append(KnobChoice(space, index, sensitivities, saved, float(np.median(baseline)),
                                           by_evaluate=drop is not None))
    return knob_choices


def _apply_knobs(model: ir.Model, knob_choices: list[KnobChoice], settings: dict[int, Any]) -> None:
    for space in dict.fromkeys(k.space for k in knob_choices):
        chosen = {k.index: settings[id(k)] for k in knob_choices if k.space is space and id(k) in settings}
        if chosen:
            space.apply(model, chosen)


def _rows_per_timing_pass(model: ir.Model, input_sets, compile_model) -> float:
    """Rows the first linear layer multiplies over the input sets (tokens: packed ones where padding
    was removed), which turns the kernel table's per-call gains into gains per timing pass."""
    probe = clone_model(model)
    first = candidate_layers(probe)[0].inputs[0]
    if first not in probe.graph.outputs:
        probe.graph.outputs.append(first)
    index = list(probe.graph.outputs).index(first)
    compiled = compile_model(probe)
    return float(sum(np.prod(compiled.run_flat(inputs)[index].shape[:-1]) for inputs in input_sets))


def lower_precision(model: ir.Model, names, scheme, ranges) -> None:
    """The named layers rewritten as ``scheme`` (an int8 scheme, or bfloat16) wants."""
    if scheme.precision == "bf16":
        bf16_layers(model, names)
    else:
        quantize_layers(model, names, *scheme, ranges=ranges)


def _precision_words(kernels, picked) -> str:
    """'int8', 'bf16' or 'int8 or bf16': the precisions of the picked kernels."""
    found = sorted({kernels["reduced"][kernel].precision for kernel in picked}, key=["int8", "bf16"].index)
    return " or ".join(found)


def _check(candidate, input_sets, expected, evaluate, max_drop, baseline, tolerance) -> str | None:
    """None when the candidate is within the user's budget (less the margin), else why not."""
    if evaluate is not None:
        score = float(evaluate(candidate))
        allowed = (1 - SELECTION_MARGIN) * max_drop
        if baseline is not None and baseline - score > allowed:
            return (f"evaluate() {score:.4f}, {baseline - score:.4f} below the unoptimized {baseline:.4f} "
                    f"(allowed {allowed:.4g}: max_drop {max_drop} less the selection margin)")
        return None
    for index, (inputs, want) in enumerate(zip(input_sets, expected)):
        reason = compare_outputs(candidate.run_flat(inputs), want, candidate.output_names, tolerance)
        if reason:
            return f"on input set {index}: {reason}"
    return None
