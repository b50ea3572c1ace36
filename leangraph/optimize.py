"""optimize(): capture, rewrite (verified pass by pass), compile, and wrap in a CompiledModel."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from leangraph.backends import AVAILABLE, chain_for, get_backend
from leangraph.backends.partition import compile_partitioned, has_subgraphs
from leangraph.backends.reference import ReferenceExecutable
from leangraph.artifacts import load
from leangraph.cost_model.backend_choice import choose_backends
from leangraph.cost_model.store import default_store, inputs_key, structure_key
from leangraph.compile_cache import cache_key, check_entry, fingerprint, resolve_cache_dir
from leangraph.errors import ExecutionError, InputMismatchError, LeanGraphError, OptionError
from leangraph.frontend import capture
from leangraph.ir import clone_model, node_count
from leangraph.ir.verify import model_name
from leangraph.passes import EXACT, PassManager, Report, Tolerance, resolve
from leangraph.passes.manager import CountsInstrument, DiffInstrument, VerifyInstrument
from leangraph.passes.verification import is_real_number, verification_sample
from leangraph.runtime import CompiledModel, to_numpy
from leangraph.runtime.generation import TextGenerator
from leangraph.text_generation import build_generator, check_task


def _resolve_backend(backend: Any) -> str:
    """The backend to use for the requested name."""
    if not isinstance(backend, str) or (backend != "auto" and backend not in AVAILABLE):
        raise OptionError(
            f"backend {backend!r} is not available (available: auto, {', '.join(AVAILABLE)})",
            hint="pass one of the available backends",
        )
    return backend


def _check_options(tolerance, evaluate, max_drop) -> None:
    if evaluate is not None and not callable(evaluate):
        raise OptionError(f"evaluate must be a callable(candidate) -> float, got {type(evaluate).__name__}",
                          hint="pass a function scoring a compiled model on your task, higher is better")
    if not is_real_number(max_drop) or not math.isfinite(max_drop) or max_drop < 0:
        raise OptionError(f"max_drop must be a finite number >= 0, got {max_drop!r}", hint="e.g. max_drop=0.2")
    if max_drop and evaluate is None:
        raise OptionError("max_drop is the allowed drop of evaluate(); it needs evaluate",
                          hint="pass evaluate=callable(candidate) -> float as well")
    if tolerance is not None and not isinstance(tolerance, Tolerance):
        raise OptionError(
            f"tolerance must be a leangraph.Tolerance, got {type(tolerance).__name__} {tolerance!r}",
            hint="pass leangraph.Tolerance(rtol=..., atol=...)",
        )


def _is_input_tuple(inputs: Any) -> bool:
    return isinstance(inputs, (tuple, list))


def _input_sets(graph: ir.Model, example_inputs, calibration) -> list[list[np.ndarray]]:
    """The inputs the passes are verified on, as numpy, each set checked against the graph's
    inputs (count, dtype, rank, static dims) so a wrong one is refused here and not deep inside a
    backend. Calibration is read once (it may be a generator); the cache key depends on it too."""
    name = model_name(graph)
    if example_inputs is not None and not _is_input_tuple(example_inputs):
        raise OptionError(f"example_inputs of model '{name}' must be a tuple of inputs, got "
                          f"{type(example_inputs).__name__}", hint="wrap a single input in a tuple: (x,)")
    if calibration is not None:
        if isinstance(calibration, (str, bytes, np.ndarray)) or not isinstance(calibration, Iterable):
            raise OptionError(f"calibration for model '{name}' must be an iterable of input tuples, got "
                              f"{type(calibration).__name__}", hint="e.g. calibration=[(x1,), (x2,)]")
        sets = list(calibration)
        if not sets:
            raise OptionError(f"calibration for model '{name}' is empty",
                              hint="give at least one input tuple, or leave calibration out")
        labelled = [(f"calibration set {i}", inputs) for i, inputs in enumerate(sets)]
    else:
        labelled = [("example_inputs", example_inputs)] if example_inputs is not None else []
    checker = CompiledModel(graph, None, backend="", report=None)  # its input check, nothing compiled
    input_sets = []
    for label, inputs in labelled:
        if not _is_input_tuple(inputs):
            raise OptionError(f"{label} of model '{name}' must be a tuple of inputs, got {type(inputs).__name__}",
                              hint="each calibration item is one call's inputs: calibration=[(x1,), (x2,)]")
        try:
            arrays = checker.input_values(list(inputs))
            checker.check_arrays(arrays)
        except InputMismatchError as exc:
            raise InputMismatchError(f"{label}: {exc.message}", hint=exc.hint) from None
        input_sets.append(arrays)
    return input_sets


def _refuse_non_finite(graph: ir.Model, input_sets) -> None:
    """Lossy passes calibrate activation ranges and sensitivities on these inputs: one NaN or inf
    makes every range and score NaN, and the search would compare NaNs."""
    names = [v.name for v in graph.graph.inputs]
    for index, arrays in enumerate(input_sets):
        for name, array in zip(names, arrays):
            if isinstance(array, np.ndarray) and array.dtype.kind == "f" and not np.isfinite(array).all():
                raise OptionError(f"calibration set {index}, input '{name}' of model '{model_name(graph)}' holds NaN "
                                  "or inf; the reduced-precision search calibrates on these inputs",
                                  hint="calibrate on real, finite inputs (or leave the budget out for exact passes only)")


def _as_score(value: Any) -> float | None:
    """A number, or a 0-d numpy array or torch tensor, as a float; None for anything else."""
    if value is None or isinstance(value, (bool, np.bool_, str, bytes)):
        return None
    try:
        return float(value) if np.ndim(value) == 0 else None
    except (TypeError, ValueError):
        return None


def _checked_evaluate(evaluate: Callable[[Any], float]) -> Callable[[Any], float]:
    """``evaluate`` whose every score is a finite number: a NaN would compare as within any budget
    and enable every lossy rewrite, a string or None would fail deep inside the search."""
    name = getattr(evaluate, "__qualname__", type(evaluate).__name__)

    def score(candidate) -> float:
        try:
            value = evaluate(candidate)
        except LeanGraphError:
            raise
        except Exception as exc:
            raise OptionError(f"evaluate ({name}) raised {type(exc).__name__}: {exc}",
                              hint="fix evaluate(); it is called with a compiled candidate and returns a score, "
                                   "higher is better") from exc
        score = _as_score(value)
        if score is None or not math.isfinite(score):
            raise OptionError(f"evaluate ({name}) returned {value!r}; it must return a finite number",
                              hint="return the candidate's score on your task as a float, higher is better")
        return score

    return score


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
    task: str = "default",
    cache_bytes: int | None = None,
) -> CompiledModel | TextGenerator:
    """Capture ``model``, optimize it and compile it for ``backend``; see API.md for the contract.
    ``task="text-generation"`` (a causal LM) returns a TextGenerator instead (text_generation.py).

    Every pass is verified against the reference interpreter on ``calibration`` (or
    ``example_inputs``) within ``tolerance`` (default: fp32 round-off); a pass that fails is
    reverted and the report says why.
    """
    check_task(task)
    if task == "text-generation":
        if evaluate is not None or tolerance is not None or calibration is not None or passes != "default":
            raise OptionError("task='text-generation' takes model, example_inputs, backend and cache_bytes only",
                              hint="leave out passes, calibration, tolerance and evaluate")
        return build_generator(model, example_inputs, backend=_resolve_backend(backend), cache_bytes=cache_bytes,
                               optimize=optimize)
    if cache_bytes is not None:
        raise OptionError("cache_bytes is an option of task='text-generation'", hint="leave it out, or set the task")
    _check_options(tolerance, evaluate, max_drop)
    pipeline = resolve(passes)
    backend_name = _resolve_backend(backend)
    cache_root = resolve_cache_dir(cache_dir) if cache_dir is not None else None
    if evaluate is not None:
        evaluate, user_evaluate = _checked_evaluate(evaluate), evaluate

    start = time.perf_counter()
    graph = capture(model, example_inputs, dynamic_shapes)
    captured = time.perf_counter()
    input_sets = _input_sets(graph, example_inputs, calibration)
    lossy = _lossy_allowed(tolerance, evaluate, max_drop)
    if lossy:
        _refuse_non_finite(graph, input_sets)
    cache_entry, cache_notes = None, []
    if cache_root is not None:
        budget, unstable = _budget_key(user_evaluate, max_drop) if evaluate is not None else ((), "")
        if unstable:
            cache_notes.append(f"cache not used: evaluate() reads {unstable}, which leangraph cannot fingerprint, "
                               "so a cached result could belong to another budget; make evaluate read plain data "
                               "(numbers, strings, arrays) and code only to cache budgeted results")
        else:
            cache_entry = cache_root / cache_key(graph, pipeline, backend_name, tolerance or EXACT, input_sets, budget)
        if cache_entry is not None and (cache_entry / "manifest.json").is_file():
            cached = _cached(cache_entry, graph, backend_name)
            if cached is not None:
                cached.report.capture_seconds = captured - start
                cached.report.cache_hit = True
                cached.report.notes.insert(0, f"cache hit: {cache_entry.name[:16]}... in {cache_root} (passes and "
                                              "compilation skipped)")
                return cached
    report = Report(
        model_name=model_name(graph),
        nodes_before=node_count(graph),
        nodes_after=node_count(graph),
        backend=backend_name,
        capture_seconds=captured - start,
    )
    report.notes += cache_notes
    captured_graph = clone_model(graph) if lossy else None
    store = default_store()
    hits, misses = store.hits, store.misses
    if pipeline:
        graph = _run_pipeline(graph, pipeline, input_sets, tolerance or EXACT, report)
        _say_if_everything_reverted(report, tolerance or EXACT)
    else:
        report.notes.append("no passes were run")
    chain = chain_for(backend_name)
    if backend_name == "auto" and len(chain) > 1 and not input_sets:
        chain = chain[-1:]
        report.notes.append("auto: no example inputs to measure the backends with; whole graph on onnxruntime")
    elif backend_name == "auto" and len(chain) > 1 and has_subgraphs(graph):
        chain = chain[-1:]
        report.notes.append("auto: the graph holds control flow (If/Loop/Scan), which is not cut into pieces; "
                            "whole graph on onnxruntime")
    if captured_graph is not None:
        kernels_of, kernel_seconds = chain[0].name, _kernel_timer()
        if backend_name == "auto" and len(chain) > 1:
            kernels_of = _fastest_reduced_precision(graph, [b.name for b in chain], kernel_seconds, report)
            chain = chain_for(kernels_of)
        graph = _quantize(graph, captured_graph, chain, kernels_of, kernel_seconds, input_sets, tolerance, evaluate,
                          max_drop, report)
    report.passes_seconds = time.perf_counter() - captured
    compile_start = time.perf_counter()
    if backend_name == "auto" and len(chain) > 1:
        report.notes += choose_backends(graph, chain, input_sets[0], store)
    if (store.hits, store.misses) != (hits, misses):
        report.notes.append(f"measurement store: {store.hits - hits} timings reused, {store.misses - misses} taken "
                            f"and stored ({store.path or 'in memory'})")
    executable, pieces, fallbacks = compile_partitioned(graph, chain)
    report.partitions = [(piece.backend, len(piece.nodes)) for piece in pieces]
    report.fallbacks = [f"{f.op} (node '{f.node}'): {f.wanted} -> {f.used}" for f in fallbacks]
    report.compile_seconds = time.perf_counter() - compile_start
    report.nodes_after = node_count(graph)
    compiled = CompiledModel(graph, executable, backend=backend_name, report=report)
    if cache_entry is not None:
        compiled.save(cache_entry)
        report.notes.append(f"cache miss: compiled and stored as {cache_entry.name[:16]}... in {cache_root}")
    return compiled


def _cached(entry: Path, graph: ir.Model, backend: str) -> CompiledModel | None:
    """The compiled model of a cache entry, or None (and a warning) when the entry cannot be used:
    damaged, replaced, or another model's. A bad entry is rebuilt, never reported as the user's
    model being wrong."""
    if entry.is_symlink():  # not written by leangraph: its libraries are not loaded, the link is replaced
        problem = "it is a link"
        entry.unlink()
    else:
        try:
            cached = load(entry)
            problem = check_entry(cached, graph, backend)
        except LeanGraphError as exc:
            problem = exc.message
        if problem is None:
            return cached
    warnings.warn(f"leangraph cache entry {entry} is damaged and will be rebuilt: {problem}", stacklevel=3)
    return None


def _budget_key(evaluate, max_drop) -> tuple[tuple, str]:
    """(what of the budget enters the cache key, "") or ((), what has no stable fingerprint)."""
    digest, unstable = fingerprint(evaluate)
    return ((digest, float(max_drop)), "") if digest is not None else ((), unstable)


def _say_if_everything_reverted(report: Report, tolerance: Tolerance) -> None:
    """A budget under which no rewrite survives is almost always a mistake (a tolerance tighter
    than fp32 round-off, inputs that hit a bug); the compiled model is then the captured graph, and
    the user is told so on stderr as well as in the report."""
    reverted = [record.name for record in report.records if record.reverted]
    kept = [record for record in report.records if record.changed and not record.reverted]
    if reverted and not kept:
        message = (f"every pass that changed model '{report.model_name}' was reverted by verification "
                   f"({', '.join(dict.fromkeys(reverted))}) under {tolerance}: the model is compiled as captured")
        report.notes.append(message)
        warnings.warn(f"leangraph: {message}. The report says why each failed; loosen the tolerance if it is "
                      "tighter than float32 round-off (the default is Tolerance())", stacklevel=3)


def _lossy_allowed(tolerance, evaluate, max_drop) -> bool:
    """API.md: lossy passes run only with a tolerance looser than round-off, or evaluate + max_drop > 0."""
    return (evaluate is not None and max_drop > 0) or (tolerance is not None and not tolerance.is_exact)


def _fastest_reduced_precision(graph: ir.Model, backends: Sequence[str], kernel_seconds, report: Report) -> str:
    """backend="auto" with a budget: the backend whose kernels run the model's linear layers fastest
    on this machine, each layer at its fastest kernel of that backend (fp32 or reduced), from the
    kernel timings the search uses (cost_model.linear_kernels). The model then runs on that
    backend's chain: its reduced-precision layers are its own ops (ONNX Runtime's QDQ and contrib
    kernels do not run inside TVM), and pieces cut between them would cost more than they save.
    Measured: MiniLM, STS-B, AVX-512 VNNI: ONNX Runtime's static int8 GEMM 0.27 ms per layer
    against fbgemm's 0.78 and torch's bf16 0.77; auto had quantized for TVM and ran 1.9x slower."""
    from leangraph.cost_model.linear_kernels import BACKEND_KERNELS
    from leangraph.passes.quantization.int8_linear import candidate_layers

    candidates = [name for name in backends if name in BACKEND_KERNELS]
    if len(candidates) < 2:
        return candidates[0] if candidates else backends[0]
    weights = [node.inputs[1].const_value for node in candidate_layers(graph)]
    if not weights:
        return candidates[0]
    shapes = [tuple(weight.shape) for weight in weights]
    timings = {tuple(weight.shape): kernel_seconds(weight.numpy()) for weight in weights}
    predicted = {name: sum(min(timings[shape][kernel] for kernel in
                               [BACKEND_KERNELS[name]["fp32"], *BACKEND_KERNELS[name]["reduced"]]) for shape in shapes)
                 for name in candidates}
    chosen = min(candidates, key=predicted.__getitem__)
    report.notes.append("auto: reduced precision for " + chosen + " (its linear kernels, predicted per call at "
                        "512 rows: " + ", ".join(f"{name} {seconds * 1e3:.2f} ms" for name, seconds in predicted.items())
                        + "); the model runs on its chain")
    return chosen


def _kernel_timer() -> Callable[[np.ndarray], dict[str, float]]:
    """time_kernels for a weight, measured once per weight shape and machine: the measurement store
    (cost_model.store) keeps the table across runs, and within one call the backend choice and the
    search both ask."""
    from leangraph.cost_model import linear_kernels

    seen: dict[tuple[int, ...], dict[str, float]] = {}
    store = default_store()

    def kernel_seconds(weight: np.ndarray) -> dict[str, float]:
        if weight.shape not in seen:
            key = f"{weight.shape[0]}x{weight.shape[1]}@{linear_kernels.KERNEL_ROWS}"
            stored = store.get("kernel", key)
            if stored is None or set(stored) != set(linear_kernels.kernel_names()):
                stored = linear_kernels.time_kernels(weight)
                store.put("kernel", key, stored, {"k": weight.shape[0], "n": weight.shape[1],
                                                  "rows": linear_kernels.KERNEL_ROWS})
            seen[weight.shape] = stored
        return seen[weight.shape]

    return kernel_seconds


def _quantize(graph, captured_graph, chain, kernels_of, kernel_seconds, input_sets, tolerance, evaluate, max_drop,
              report):
    """Budgeted int8 for the linear layers (passes/quantization/mixed_precision.py), recorded in the report."""
    from tqdm import tqdm

    from leangraph.cost_model.linear_kernels import BACKEND_KERNELS, KERNEL_ROWS
    from leangraph.passes import PASSES, PassRecord
    from leangraph.passes.registry import KNOB_SPACES
    from leangraph.passes.quantization.mixed_precision import NO_ASSIGNMENT_MET, SELECTION_MARGIN, choose_precisions

    if kernels_of not in BACKEND_KERNELS:
        report.notes.append(f"quantization skipped: backend '{kernels_of}' has no int8 kernels")
        return graph

    graphs_of: dict[int, ir.Model] = {}

    def compile_model(model):
        compiled = CompiledModel(model, compile_partitioned(model, chain)[0], backend=kernels_of, report=None)
        graphs_of[id(compiled)] = model
        return compiled

    start = time.perf_counter()
    nodes_before = node_count(graph)
    spaces, skipped = [], []
    for name, declare in KNOB_SPACES.items():
        space = declare(graph)
        if isinstance(space, str):
            skipped.append(f"{name}: {space}")
        else:
            spaces.append(space)
    baseline = None
    if evaluate is not None:  # the unoptimized model, on ONNX Runtime: the reference point of max_drop
        unoptimized = compile_partitioned(captured_graph, [get_backend("onnxruntime")])[0]
        baseline = float(evaluate(CompiledModel(captured_graph, unoptimized, backend="onnxruntime", report=None)))
    with tqdm(desc="leangraph quantization", unit="step", disable=None, leave=False) as bar:
        def progress(message):
            bar.set_postfix_str(message)
            bar.update()

        quantized, choices, notes, knobs = choose_precisions(
            graph, input_sets, compile_model, kernel_seconds, BACKEND_KERNELS[kernels_of], evaluate=evaluate,
            max_drop=max_drop, baseline=baseline, tolerance=tolerance or EXACT, progress=progress,
            knob_spaces=spaces, kernel_rows=KERNEL_ROWS, time_saved=_stored_saving(graphs_of, kernels_of))
    changed = quantized is not graph
    if changed:
        PASSES["dce"](quantized)  # the fp32 weights the int8 layers replaced
    elif NO_ASSIGNMENT_MET in notes:
        budget = f"max_drop {max_drop}" if evaluate is not None else str(tolerance)
        warnings.warn(f"leangraph: no reduced-precision assignment of model '{report.model_name}' met the budget "
                      f"({budget}): every layer stays fp32. The report lists each attempt and why it failed",
                      stacklevel=3)
    record = PassRecord(name="mixed_precision", changed=changed, nodes_before=nodes_before,
                        nodes_after=node_count(quantized), seconds=time.perf_counter() - start,
                        verified=True if changed else None, notes=notes)
    if baseline is not None:
        record.notes.insert(0, f"evaluate() of the unoptimized model: {baseline:.4f} (max_drop {max_drop}; the search "
                               f"accepts drops up to {(1 - SELECTION_MARGIN) * max_drop:.4g}, keeping "
                               f"{SELECTION_MARGIN:.0%} as margin for data evaluate() does not hold)")
    report.records.append(record)
    report.quantization = [choice.row() for choice in choices]
    report.knobs = [knob.row() for knob in knobs] + [f"{reason} (not searched)" for reason in skipped]
    return quantized


def _stored_saving(graphs_of: Mapping[int, ir.Model], backend: str):
    """mixed_precision.interleaved_saving through the measurement store: a knob setting timed on
    this machine against the same model structure, backend and inputs is not timed again."""
    from leangraph.passes.quantization.mixed_precision import interleaved_saving

    store = default_store()

    def time_saved(reference, candidate, input_sets):
        key = ":".join([structure_key(graphs_of[id(reference)]), structure_key(graphs_of[id(candidate)]), backend,
                        inputs_key(input_sets)])
        stored = store.get("knob", key)
        if stored is None:
            stored = list(interleaved_saving(reference, candidate, input_sets))
            store.put("knob", key, stored, {"backend": backend, "input_sets": len(input_sets)})
        return stored[0], stored[1]

    return time_saved


VERIFIED_PER_PASS = 3
"""Input sets each pass is verified on (passes.verification.verification_sample); the pipeline's
result is then checked on every set on ONNX Runtime, and verified pass by pass on every set only
where that check fails."""


def _run_pipeline(graph: ir.Model, pipeline, input_sets, tolerance: Tolerance, report: Report) -> ir.Model:
    """The pipeline run with each pass verified on a sample of the input sets, its result checked on
    all of them; where the check fails, the pipeline runs again, every pass verified on every set."""
    sample = verification_sample(input_sets, VERIFIED_PER_PASS)
    captured = clone_model(graph) if len(sample) < len(input_sets) else None
    instruments, expected, executor = _instruments(graph, input_sets, tolerance, report, sample)
    result, report.records = PassManager(pipeline, instruments=instruments).run(graph)
    if captured is None or expected is None or not any(r.changed and not r.reverted for r in report.records):
        return result
    try:
        problem = VerifyInstrument(input_sets, expected, tolerance, _onnxruntime_oracle).first_failure(result)
    except LeanGraphError as exc:
        problem = f"onnxruntime, which cannot compile it ({exc.message[:200]})"
    if problem is None:
        report.notes.append(f"passes verified on {len(sample)} of the {len(input_sets)} input sets each (the reference "
                            f"interpreter); the result checked on all {len(input_sets)} on onnxruntime (against the "
                            "captured model on onnxruntime where the interpreter did not run it)")
        return result
    report.notes.append(f"the passes' result failed on {problem}, which the per-pass sample did not hold: every pass "
                        f"verified again on all {len(input_sets)} input sets")
    instruments = [CountsInstrument(), DiffInstrument(), VerifyInstrument(input_sets, expected, tolerance, executor)]
    result, report.records = PassManager(pipeline, instruments=instruments).run(captured)
    return result


def _instruments(graph, input_sets, tolerance: Tolerance, report: Report, sample: Sequence[int]):
    """The pass instruments (verification on the ``sample`` indices of ``input_sets``), the expected
    outputs of every set, and the executor that verifies (None, None without inputs)."""
    instruments = [CountsInstrument(), DiffInstrument()]
    if not input_sets:
        report.notes.append("passes were not verified: give example_inputs or calibration to verify them")
        return instruments, None, None
    executor = ReferenceExecutable
    try:
        oracle = ReferenceExecutable(graph)
        expected = _expected_outputs(graph, oracle, input_sets, sample)
    except ExecutionError as exc:
        # onnx.reference lacks some ops and old-opset forms (Scan-8); ONNX Runtime is the oracle then
        executor = _onnxruntime_oracle
        oracle = _onnxruntime_oracle(graph)
        expected = [oracle(inputs) for inputs in input_sets]
        report.notes.append(f"passes verified on ONNX Runtime: the reference interpreter cannot run the model "
                            f"({exc.message[:200]})")
    instruments.append(VerifyInstrument([input_sets[i] for i in sample], [expected[i] for i in sample], tolerance,
                                        executor, indices=sample))
    return instruments, expected, executor


def _expected_outputs(graph: ir.Model, oracle, input_sets, sample) -> list:
    """The captured model's outputs on every input set: the reference interpreter's on the sets the
    passes are verified on, ONNX Runtime's on the others (those only check the pipeline's result,
    on ONNX Runtime too: a differential check, at a hundredth of the interpreter's time)."""
    rest = sorted(set(range(len(input_sets))) - set(sample))
    others = {}
    if rest:
        try:
            fast = _onnxruntime_oracle(graph)
            others = {i: fast(input_sets[i]) for i in rest}
        except LeanGraphError:
            others = {}
    return [others[i] if i in others else oracle(inputs) for i, inputs in enumerate(input_sets)]


def _onnxruntime_oracle(model: ir.Model):
    return get_backend("onnxruntime").compile(model)
