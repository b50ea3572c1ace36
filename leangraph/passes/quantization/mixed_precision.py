"""Budgeted mixed precision: which linear layers run in int8.

1. Kernels: for every layer shape, the fp32 and int8 kernels are timed (cost_model.linear_kernels:
   torch's fp32 GEMM, fbgemm's int8, ONNX Runtime's MatMul and MatMulInteger); the backend's kernel
   of each precision gives the predicted latency of the layer in that precision.
2. Sensitivity: each layer alone in int8, the relative squared error of the model's outputs on the
   calibration data (run on the compiled candidate).
3. Assignment: minimize the predicted latency subject to the summed sensitivity staying under a
   budget, as an integer program (scipy.optimize.milp; sensitivities are treated as additive).
4. Check: the assignment is compiled and really evaluated (``evaluate`` within ``max_drop`` of the
   unquantized model, or every output within ``tolerance`` on the calibration data); when it
   misses, the budget is halved and the program solved again, down to no int8 layer at all.

The result is a model and one :class:`LayerChoice` per candidate layer for the report.
"""

from __future__ import annotations

import math

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from leangraph.ir import clone_model
from leangraph.passes.quantization.int8_linear import candidate_layers, quantize_layers
from leangraph.passes.verification import Tolerance, compare_outputs

@dataclasses.dataclass
class LayerChoice:
    """One linear layer: its shape, sensitivity, kernel timings and the precision chosen."""

    name: str
    module_path: str
    shape: tuple[int, int]
    sensitivity: float
    seconds: dict[str, float]
    precision: str = "fp32"
    kernel: str = ""

    def row(self) -> str:
        timings = ", ".join(f"{k} {v * 1e3:.3f} ms" if math.isfinite(v) else f"{k} does not tile this shape"
                            for k, v in self.seconds.items())
        return (f"{self.module_path or self.name}: {self.precision} via {self.kernel} "
                f"[K={self.shape[0]}, N={self.shape[1]}, sensitivity {self.sensitivity:.2e}; {timings}]")


def solve(gain: Sequence[float], sensitivity: Sequence[float], budget: float) -> list[bool]:
    """Which layers go to int8: maximize the summed latency gain with summed sensitivity <= budget."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    gain = np.asarray(gain, dtype=np.float64)
    if not len(gain):
        return []
    result = milp(c=-np.maximum(gain, 0.0), integrality=np.ones_like(gain), bounds=Bounds(0, 1),
                  constraints=LinearConstraint(np.asarray(sensitivity, dtype=np.float64)[None, :], -np.inf, budget))
    if not result.success:
        return [False] * len(gain)
    return [bool(round(x)) and g > 0 for x, g in zip(result.x, gain)]


def output_error(got: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> float:
    """Relative squared error of all float outputs together."""
    num = den = 0.0
    for g, e in zip(got, expected):
        e = np.asarray(e, dtype=np.float64)
        if e.dtype.kind == "f":
            num += float(((np.asarray(g, dtype=np.float64) - e) ** 2).sum())
            den += float((e**2).sum())
    return num / max(den, 1e-30)


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
    names the backend's "fp32" kernel among them and maps its "int8" kernels to their (activation
    bits, weight bits). Each layer's int8 kernel is the fastest of those at its shape."""
    layers = candidate_layers(model)
    if not layers:
        return model, [], ["quantization: no linear layer with constant weights"]
    if not input_sets:
        return model, [], ["quantization skipped: it needs calibration data (or example_inputs)"]
    say = progress or (lambda _: None)
    reference = compile_model(model)
    expected = [reference.run_flat(inputs) for inputs in input_sets]
    timings: dict[tuple[int, int], dict[str, float]] = {}
    choices = []
    int8_kernel: dict[str, str] = {}
    for index, node in enumerate(layers):
        weight = node.inputs[1].const_value.numpy()
        if weight.shape not in timings:
            say(f"timing kernels for shape {weight.shape}")
            timings[weight.shape] = kernel_seconds(weight)
        int8_kernel[node.name] = min(kernels["int8"], key=timings[weight.shape].__getitem__)
        say(f"sensitivity of layer {index + 1}/{len(layers)}")
        single = clone_model(model)
        quantize_layers(single, {node.name}, *kernels["int8"][int8_kernel[node.name]])
        candidate = compile_model(single)
        error = float(np.mean([output_error(candidate.run_flat(inputs), want)
                               for inputs, want in zip(input_sets, expected)]))
        choices.append(LayerChoice(node.name, node.metadata_props.get("leangraph.module_path", ""),
                                   tuple(weight.shape), error, timings[weight.shape], kernel=kernels["fp32"]))

    gain = [c.seconds[kernels["fp32"]] - c.seconds[int8_kernel[c.name]] for c in choices]
    sensitivity = [c.sensitivity for c in choices]
    budget = float(sum(sensitivity))
    notes = []
    if not any(g > 0 for g in gain):
        notes.append(f"quantization: no layer shape where {' or '.join(kernels['int8'])} is faster than "
                     f"{kernels['fp32']} on this machine; every layer stays fp32")
        return model, choices, notes
    for attempt in range(8):
        chosen = solve(gain, sensitivity, budget)
        if not any(chosen):
            break
        names = {c.name for c, pick in zip(choices, chosen) if pick}
        candidate_model = clone_model(model)
        for kernel, bits in kernels["int8"].items():
            quantize_layers(candidate_model, {n for n in names if int8_kernel[n] == kernel}, *bits)
        candidate = compile_model(candidate_model)
        verdict = _check(candidate, input_sets, expected, evaluate, max_drop, baseline, tolerance)
        notes.append(f"quantization attempt {attempt + 1}: {len(names)}/{len(choices)} layers int8 "
                     f"(sensitivity budget {budget:.2e}): {verdict or 'within budget'}")
        if verdict is None:
            for choice, pick in zip(choices, chosen):
                choice.precision, choice.kernel = ("int8", int8_kernel[choice.name]) if pick else ("fp32", kernels["fp32"])
            return candidate_model, choices, notes
        budget /= 2
    notes.append("quantization: no int8 assignment met the budget; every layer stays fp32")
    return model, choices, notes


def _check(candidate, input_sets, expected, evaluate, max_drop, baseline, tolerance) -> str | None:
    """None when the candidate is within the user's budget, else why not."""
    if evaluate is not None:
        score = float(evaluate(candidate))
        if baseline is not None and baseline - score > max_drop:
            return f"evaluate() {score:.4f}, {baseline - score:.4f} below the unoptimized {baseline:.4f} (max_drop {max_drop})"
        return None
    for index, (inputs, want) in enumerate(zip(input_sets, expected)):
        reason = compare_outputs(candidate.run_flat(inputs), want, candidate.output_names, tolerance)
        if reason:
            return f"on input set {index}: {reason}"
    return None
