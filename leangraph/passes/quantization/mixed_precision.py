"""Budgeted mixed precision: which linear layers run in int8 or bf16 ("reduced" precision).

1. Kernels: for every layer shape, the fp32 and reduced-precision kernels are timed
   (cost_model.linear_kernels: torch's fp32 and bf16 GEMMs, fbgemm's int8, the TVM backend's int8
   micro-kernel, ONNX Runtime's MatMul, DynamicQuantizeMatMul and static-activation
   MatMulIntegerToFloat); the backend's fp32 kernel and each reduced-precision kernel it offers give
   the predicted latency of the layer in each option. Where a static-activation kernel is offered,
   every layer's input range is calibrated first (int8_linear.activation_ranges).
2. Sensitivity: each layer alone with each reduced-precision kernel faster than fp32 at its shape
   (the kernels round differently), the relative squared error of the model's outputs on the
   calibration data (run on the compiled candidate).
3. Assignment: per layer fp32 or one of its reduced-precision kernels, minimizing the predicted
   latency subject to the summed sensitivity staying under a budget, as an integer program
   (scipy.optimize.milp; sensitivities are treated as additive).
4. Check: the assignment is compiled and really evaluated (``evaluate`` within ``max_drop`` of the
   unquantized model, or every output within ``tolerance`` on the calibration data); when it
   misses, the budget is halved and the program solved again, down to all fp32.

   The check keeps a margin: an assignment passes when its drop is at most
   ``(1 - SELECTION_MARGIN) * max_drop``. The search picks the first assignment whose measured drop
   fits, so the one it picks is the one ``evaluate``'s data favours most; on other data its drop is
   larger (all-MiniLM-L6-v2, STS-B: picked at a 0.2 drop on a 300-pair subset, 0.26-0.36 on pairs
   it was not picked on). The margin is what is kept for that; the report says what was used.

The result is a model and one :class:`LayerChoice` per candidate layer for the report.
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
from leangraph.passes.quantization.int8_linear import (activation_ranges, bf16_layers, candidate_layers,
                                                       quantize_layers)
from leangraph.passes.verification import Tolerance, compare_outputs


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


def solve(gain: Sequence[Sequence[float]], sensitivity: Sequence[Sequence[float]], budget: float) -> list[int | None]:
    """Per layer, the index of its reduced-precision option to use (None: fp32): maximize the summed gain
    with the summed sensitivity <= budget and at most one option per layer (a multiple-choice
    knapsack). ``gain[l][j]`` and ``sensitivity[l][j]`` are layer l's with option j."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    options = [(layer, j) for layer, gains in enumerate(gain) for j, g in enumerate(gains) if g > 0]
    if not options:
        return [None] * len(gain)
    one_per_layer = np.zeros((len(gain), len(options)))
    for column, (layer, _) in enumerate(options):
        one_per_layer[layer, column] = 1.0
    cost = np.array([sensitivity[layer][j] for layer, j in options], dtype=np.float64)
    result = milp(c=-np.array([gain[layer][j] for layer, j in options], dtype=np.float64),
                  integrality=np.ones(len(options)), bounds=Bounds(0, 1),
                  constraints=[LinearConstraint(cost[None, :], -np.inf, budget),
                               LinearConstraint(one_per_layer, -np.inf, 1.0)])
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
) -> tuple[ir.Model, list[LayerChoice], list[str]]:
    """The model with the chosen layers in int8, one LayerChoice per candidate, and notes.

    ``compile_model`` gives a compiled candidate (``run_flat(arrays)`` runs it, ``evaluate`` takes
    it); ``kernel_seconds(weight)`` times every linear kernel at that weight's shape; ``kernels``
    names the backend's "fp32" kernel among them and maps its "reduced" kernels to their schemes
    (activation bits, weight bits, static activations: linear_kernels.Int8Scheme). A layer's
    options are the reduced-precision kernels faster than the fp32 one at its shape."""
    layers = candidate_layers(model)
    if not layers:
        return model, [], ["quantization: no linear layer with constant weights"]
    if not input_sets:
        return model, [], ["quantization skipped: it needs calibration data (or example_inputs)"]
    say = progress or (lambda _: None)
    reference = compile_model(model)
    expected = [reference.run_flat(inputs) for inputs in input_sets]
    static = any(getattr(scheme, "static_activations", False) for scheme in kernels["reduced"].values())
    ranges = activation_ranges(model, input_sets, compile_model) if static else {}
    timings: dict[tuple[int, int], dict[str, float]] = {}
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
            sensitivities[kernel] = float(np.mean([output_error(candidate.run_flat(inputs), want)
                                                   for inputs, want in zip(input_sets, expected)]))
        choices.append(LayerChoice(node.name, node.metadata_props.get("leangraph.module_path", ""),
                                   tuple(weight.shape), sensitivities, seconds, kernel=kernels["fp32"]))

    options = [list(c.sensitivities) for c in choices]
    gain = [[c.seconds[kernels["fp32"]] - c.seconds[k] for k in offered] for c, offered in zip(choices, options)]
    sensitivity = [list(c.sensitivities.values()) for c in choices]
    budget = float(sum(max(s) for s in sensitivity))
    notes = []
    if not any(g > 0 for gains in gain for g in gains):
        notes.append(f"quantization: no layer shape where {' or '.join(kernels['reduced'])} is faster than "
                     f"{kernels['fp32']} on this machine; every layer stays fp32")
        return model, choices, notes
    for attempt in range(8):
        chosen = solve(gain, sensitivity, budget)
        picked = {c.name: offered[j] for c, offered, j in zip(choices, options, chosen) if j is not None}
        if not picked:
            break
        candidate_model = clone_model(model)
        for kernel, scheme in kernels["reduced"].items():
            lower_precision(candidate_model, {n for n, k in picked.items() if k == kernel}, scheme, ranges)
        candidate = compile_model(candidate_model)
        verdict = _check(candidate, input_sets, expected, evaluate, max_drop, baseline, tolerance)
        counts = Counter(picked.values())
        per_kernel = ", ".join(f"{counts[kernel]} {kernel}" for kernel in kernels["reduced"] if counts[kernel])
        precisions = _precision_words(kernels, picked.values())
        notes.append(f"quantization attempt {attempt + 1}: {len(picked)}/{len(choices)} layers {precisions} ({per_kernel}; "
                     f"sensitivity budget {budget:.2e}): {verdict or 'within budget'}")
        if verdict is None:
            for choice in choices:
                choice.precision, choice.kernel = ((kernels["reduced"][picked[choice.name]].precision,
                                                    picked[choice.name]) if choice.name in picked
                                                   else ("fp32", kernels["fp32"]))
            return candidate_model, choices, notes
        budget /= 2
    notes.append(NO_ASSIGNMENT_MET)
    return model, choices, notes


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
