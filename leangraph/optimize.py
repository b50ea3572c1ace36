"""optimize(): capture, rewrite (verified pass by pass), compile, and wrap in a CompiledModel."""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from leangraph.backends import AVAILABLE, chain_for, get_backend
from leangraph.backends.partition import compile_partitioned
from leangraph.backends.reference import ReferenceExecutable
from leangraph.artifacts import load
from leangraph.cost_model.backend_choice import choose_backends
from leangraph.errors import ArtifactError, OptionError
from leangraph.frontend import capture
from leangraph.ir import clone_model, node_count
from leangraph.ir.verify import model_name
from leangraph.passes import EXACT, PassManager, Report, Tolerance, resolve
from leangraph.passes.manager import CountsInstrument, DiffInstrument, VerifyInstrument
from leangraph.runtime import CompiledModel, to_numpy
from leangraph.runtime.artifact import VERSION as ARTIFACT_VERSION


def _resolve_backend(backend: str) -> tuple[str, str]:
    """(backend to use, why) for the requested name."""
    if backend == "auto":
        return "auto", ""
    if backend not in AVAILABLE:
        raise OptionError(
            f"backend '{backend}' is not available (available: auto, {', '.join(AVAILABLE)})",
            hint="pass one of the available backends",
        )
    return backend, ""


def _check_options(tolerance, evaluate, max_drop) -> None:
    if evaluate is not None and not callable(evaluate):
        raise OptionError(f"evaluate must be a callable(candidate) -> float, got {type(evaluate).__name__}",
                          hint="pass a function scoring a compiled model on your task, higher is better")
    if not isinstance(max_drop, (int, float)) or max_drop < 0:
        raise OptionError(f"max_drop must be a number >= 0, got {max_drop!r}", hint="e.g. max_drop=0.2")
    if max_drop and evaluate is None:
        raise OptionError("max_drop is the allowed drop of evaluate(); it needs evaluate",
                          hint="pass evaluate=callable(candidate) -> float as well")
    if tolerance is not None and not isinstance(tolerance, Tolerance):
        raise OptionError(
            f"tolerance must be a leangraph.Tolerance, got {type(tolerance).__name__}",
            hint="pass leangraph.Tolerance(rtol=..., atol=...)",
        )


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
    """Capture ``model``, optimize it and compile it for ``backend``; see API.md for the contract.

    Every pass is verified against the reference interpreter on ``calibration`` (or
    ``example_inputs``) within ``tolerance`` (default: fp32 round-off); a pass that fails is
    reverted and the report says why.
    """
    _check_options(tolerance, evaluate, max_drop)
    pipeline = resolve(passes)
    backend_name, why = _resolve_backend(backend)

    start = time.perf_counter()
    graph = capture(model, example_inputs, dynamic_shapes)
    captured = time.perf_counter()
    # The inputs the passes are verified on, as numpy, read once (calibration may be a generator);
    # the cache key depends on them too.
    input_sets = [[to_numpy(x) for x in inputs] for inputs in calibration] if calibration is not None else []
    if not input_sets and example_inputs is not None:
        input_sets = [[to_numpy(x) for x in example_inputs]]
    cache_entry = None
    if cache_dir is not None:
        budget = (getattr(evaluate, "__qualname__", repr(evaluate)), max_drop) if evaluate is not None else ()
        cache_entry = Path(cache_dir) / cache_key(graph, pipeline, backend_name, tolerance or EXACT, input_sets, budget)
        if (cache_entry / "manifest.json").is_file():
            try:
                cached = load(cache_entry)
            except ArtifactError as exc:  # a damaged entry is rebuilt, and the report says so
                warnings.warn(f"leangraph cache entry {cache_entry} is damaged and will be rebuilt: {exc.message}",
                              stacklevel=2)
            else:
                cached.report.capture_seconds = captured - start
                cached.report.cache_hit = True
                cached.report.notes.insert(0, f"cache hit: {cache_entry.name[:16]}... in {cache_dir} (passes and "
                                              "compilation skipped)")
                return cached
    report = Report(
        model_name=model_name(graph),
        nodes_before=node_count(graph),
        nodes_after=node_count(graph),
        backend=backend_name,
        capture_seconds=captured - start,
    )
    if why:
        report.notes.append(why)
    captured_graph = clone_model(graph) if _lossy_allowed(tolerance, evaluate, max_drop) else None
    if pipeline:
        instruments = _instruments(graph, input_sets, tolerance or EXACT, report)
        graph, report.records = PassManager(pipeline, instruments=instruments).run(graph)
    else:
        report.notes.append("no passes were run")
    chain = chain_for(backend_name)
    if backend_name == "auto" and len(chain) > 1 and not input_sets:
        chain = chain[-1:]
        report.notes.append("auto: no example inputs to measure the backends with; whole graph on onnxruntime")
    if captured_graph is not None:
        graph = _quantize(graph, captured_graph, chain, chain[0].name, input_sets, tolerance, evaluate, max_drop,
                          report)
    report.passes_seconds = time.perf_counter() - captured
    compile_start = time.perf_counter()
    if backend_name == "auto" and len(chain) > 1:
        report.notes += choose_backends(graph, chain, input_sets[0])
    executable, pieces, fallbacks = compile_partitioned(graph, chain)
    report.partitions = [(piece.backend, len(piece.nodes)) for piece in pieces]
    report.fallbacks = [f"{f.op} (node '{f.node}'): {f.wanted} -> {f.used}" for f in fallbacks]
    report.compile_seconds = time.perf_counter() - compile_start
    report.nodes_after = node_count(graph)
    compiled = CompiledModel(graph, executable, backend=backend_name, report=report)
    if cache_entry is not None:
        compiled.save(cache_entry)
        report.notes.append(f"cache miss: compiled and stored as {cache_entry.name[:16]}... in {cache_dir}")
    return compiled


def _lossy_allowed(tolerance, evaluate, max_drop) -> bool:
    """API.md: lossy passes run only with a tolerance looser than round-off, or evaluate + max_drop > 0."""
    return (evaluate is not None and max_drop > 0) or (tolerance is not None and not tolerance.is_exact)


def _quantize(graph, captured_graph, chain, kernels_of, input_sets, tolerance, evaluate, max_drop, report):
    """Budgeted int8 for the linear layers (passes/quantization/mixed_precision.py), recorded in the report."""
    from tqdm import tqdm

    from leangraph.cost_model.linear_kernels import BACKEND_KERNELS, time_kernels
    from leangraph.passes import PASSES, PassRecord
    from leangraph.passes.quantization.mixed_precision import choose_precisions

    if kernels_of not in BACKEND_KERNELS:
        report.notes.append(f"quantization skipped: backend '{kernels_of}' has no int8 kernels")
        return graph

    def compile_model(model):
        return CompiledModel(model, compile_partitioned(model, chain)[0], backend=kernels_of, report=None)

    start = time.perf_counter()
    nodes_before = node_count(graph)
    baseline = None
    if evaluate is not None:  # the unoptimized model, on ONNX Runtime: the reference point of max_drop
        unoptimized = compile_partitioned(captured_graph, [get_backend("onnxruntime")])[0]
        baseline = float(evaluate(CompiledModel(captured_graph, unoptimized, backend="onnxruntime", report=None)))
    with tqdm(desc="leangraph quantization", unit="step", disable=None, leave=False) as bar:
        def progress(message):
            bar.set_postfix_str(message)
            bar.update()

        quantized, choices, notes = choose_precisions(
            graph, input_sets, compile_model, time_kernels, BACKEND_KERNELS[kernels_of], evaluate=evaluate,
            max_drop=max_drop, baseline=baseline, tolerance=tolerance or EXACT, progress=progress)
    changed = quantized is not graph
    if changed:
        PASSES["dce"](quantized)  # the fp32 weights the int8 layers replaced
    record = PassRecord(name="mixed_precision", changed=changed, nodes_before=nodes_before,
                        nodes_after=node_count(quantized), seconds=time.perf_counter() - start,
                        verified=True if changed else None, notes=notes)
    if baseline is not None:
        record.notes.insert(0, f"evaluate() of the unoptimized model: {baseline:.4f} (max_drop {max_drop})")
    report.records.append(record)
    report.quantization = [choice.row() for choice in choices]
    return quantized


def cache_key(graph, pipeline, backend: str, tolerance: Tolerance, input_sets, budget=()) -> str:
    """sha256 of everything a compiled model depends on: the captured graph (weights included), the
    passes, the backend, the budget, the verification inputs, the leangraph version and the artifact
    format's (an entry in an older format misses instead of failing to load)."""
    import leangraph  # the version; a module-level import would be circular

    digest = hashlib.sha256()
    digest.update(ir.to_proto(graph).SerializeToString(deterministic=True))
    names = [getattr(item, "name", str(item)) + ":" + ",".join(p.name for p in getattr(item, "passes", ()))
             for item in pipeline]
    digest.update(repr((names, backend, tolerance, budget, leangraph.__version__, ARTIFACT_VERSION)).encode())
    for inputs in input_sets:
        for array in inputs:
            digest.update(repr((array.dtype.str, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _instruments(graph, input_sets, tolerance: Tolerance, report: Report):
    instruments = [CountsInstrument(), DiffInstrument()]
    if not input_sets:
        report.notes.append("passes were not verified: give example_inputs or calibration to verify them")
        return instruments
    oracle = ReferenceExecutable(graph)
    expected = [oracle(inputs) for inputs in input_sets]
    instruments.append(VerifyInstrument(input_sets, expected, tolerance))
    return instruments
