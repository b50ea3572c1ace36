"""optimize(): capture, rewrite, compile, and wrap the result in a CompiledModel."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from leangraph.backends import AVAILABLE, get_backend
from leangraph.errors import OptionError
from leangraph.frontend import capture
from leangraph.ir import node_count
from leangraph.ir.verify import model_name
from leangraph.passes import Report
from leangraph.runtime import CompiledModel


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """An output-level error budget: every output within rtol/atol of the reference, and (when
    set) the cosine similarity of each output to the reference at least ``min_cosine``."""

    rtol: float = 1e-4
    atol: float = 1e-5
    min_cosine: float | None = None


EXACT = Tolerance()
PASS_PRESETS = ("default", "none")
DEFAULT_PIPELINE: tuple[str, ...] = ()
"""Names of the passes ``passes="default"`` runs, in order."""


def _resolve_passes(passes: str | Sequence[Any]) -> list[Any]:
    if isinstance(passes, str):
        if passes == "none":
            return []
        if passes == "default":
            return list(DEFAULT_PIPELINE)
        raise OptionError(
            f"passes='{passes}' is not a preset (presets: {', '.join(PASS_PRESETS)})",
            hint="pass 'default', 'none', or a list of pass names",
        )
    if passes:
        raise OptionError(
            f"passes {list(passes)!r}: no passes are registered in this version of leangraph",
            hint="use passes='none' or passes='default'",
        )
    return []


def _resolve_backend(backend: str) -> tuple[str, str]:
    """(backend to use, why) for the requested name."""
    if backend == "auto":
        return "onnxruntime", "auto: whole graph on onnxruntime (the fastest backend available here)"
    if backend not in AVAILABLE:
        raise OptionError(
            f"backend '{backend}' is not available (available: auto, {', '.join(AVAILABLE)})",
            hint="pass one of the available backends",
        )
    return backend, ""


def optimize(
    model: Any,
    example_inputs: Sequence[Any] | None = None,
    *,
    dynamic_shapes: Mapping[str, Mapping[int, str]] | None = None,
    backend: str = "auto",
    passes: str | Sequence[Any] = "default",
    calibration: Iterable[Sequence[Any]] | None = None,
    tolerance: Tolerance | None = None,
    evaluate: Callable[[Any], float] | None = None,
    max_drop: float = 0.0,
    cache_dir: str | None = None,
) -> CompiledModel:
    """Capture ``model``, optimize it and compile it for ``backend``; see API.md for the contract."""
    if cache_dir is not None:
        raise OptionError(
            "cache_dir: the compiled-artifact cache is not implemented in this version of leangraph",
            hint="leave cache_dir unset",
        )
    if evaluate is not None or max_drop:
        raise OptionError(
            "evaluate/max_drop: lossy passes are not implemented in this version of leangraph",
            hint="leave evaluate and max_drop unset",
        )
    if tolerance is not None and not isinstance(tolerance, Tolerance):
        raise OptionError(
            f"tolerance must be a leangraph.Tolerance, got {type(tolerance).__name__}",
            hint="pass leangraph.Tolerance(rtol=..., atol=...)",
        )
    pipeline = _resolve_passes(passes)
    backend_name, why = _resolve_backend(backend)

    start = time.perf_counter()
    graph = capture(model, example_inputs, dynamic_shapes)
    captured = time.perf_counter()
    report = Report(
        model_name=model_name(graph),
        nodes_before=node_count(graph),
        nodes_after=node_count(graph),
        backend=backend_name,
        capture_seconds=captured - start,
    )
    if why:
        report.notes.append(why)
    if not pipeline:
        report.notes.append(f"passes='{passes}' runs no passes" if isinstance(passes, str) else "no passes")
    executable = get_backend(backend_name).compile(graph)
    report.compile_seconds = time.perf_counter() - captured
    report.nodes_after = node_count(graph)
    return CompiledModel(graph, executable, backend=backend_name, report=report)
