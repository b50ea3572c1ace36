"""The `leangraph` command line.

    leangraph compile MODEL -o OUT_DIR [--example-shapes NAME=DIMS ...] [--backend B] [--passes P,...] [--json]
    leangraph inspect MODEL [--passes P,...] [--html REPORT.html] [--diff] [--explain PASS]
    leangraph run OUT_DIR --inputs FILE.npz [--output OUT.npz] [--json]
    leangraph bench MODEL_OR_OUT_DIR [--baseline onnxruntime|torch|eager] [--inputs FILE.npz] [--rounds N]
    leangraph generate MODEL --prompts FILE [--max-new-tokens N] [--eos-token-id ID] [--backend B] [--json]
    leangraph tune MODEL... [--budget-minutes M] [--output COST_MODEL.json] [--json]
    leangraph cost-model evaluate --held-out MODEL,MODEL... [--cost-model COST_MODEL.json] [--json]

MODEL is an ``.onnx`` file or ``package.module:attribute`` naming a factory that returns
``(torch_module, example_inputs)`` or ``(torch_module, example_inputs, dynamic_shapes)``.
User errors print one paragraph without a traceback and exit non-zero; ``-v`` or ``LEANGRAPH_LOG=debug``
shows the traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

from leangraph.backends import AVAILABLE
from leangraph.errors import LeanGraphError, OptionError

def _load_factory(spec: str):
    module_name, _, attribute = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        # As `python -m` does: the console script alone would not find the user's own modules.
        sys.path.insert(0, os.getcwd())
    usage = "MODEL is an .onnx file or package.module:attribute naming a factory"
    if not module_name or not attribute:
        raise OptionError(f"MODEL '{spec}' is neither an existing file nor package.module:attribute", hint=usage)
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:  # TypeError: a relative name
        raise OptionError(f"cannot load model factory '{spec}': {exc}", hint=usage) from None
    except Exception as exc:  # importing the user's module ran its code
        raise OptionError(f"importing the module of factory '{spec}' raised {type(exc).__name__}: {exc}",
                          hint="fix the module; import it in Python to see where it fails (or pass -v)") from exc
    try:
        result = factory() if callable(factory) else factory
    except LeanGraphError:
        raise
    except (Exception, SystemExit) as exc:  # the user's own code: its message, and -v for its traceback
        raise OptionError(f"model factory '{spec}' raised {type(exc).__name__}: {exc}",
                          hint="fix the factory; run it in Python to see where it fails (or pass -v)") from exc
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise OptionError(f"factory '{spec}' must return (module, example_inputs) or (module, example_inputs, dynamic_shapes)",
                          hint="wrap your model: return model, (example_tensor,)")
    return result if len(result) == 3 else (*result, None)


MAX_EXAMPLE_BYTES = 1 << 31
"""--example-shapes builds its inputs in memory: a typo such as 100000000000x3 is refused, not an
out-of-memory crash."""


def _parse_shapes(shapes: list[str]) -> dict[str, list[int]]:
    """NAME=2x16 specs -> {name: dims}; every spec well-formed, every name once, dims >= 0."""
    usage = "write NAME=DIMS per input, e.g. --example-shapes input_ids=2x16 attention_mask=2x16"
    if not shapes:
        raise OptionError("--example-shapes is given without any shape", hint=usage)
    dims: dict[str, list[int]] = {}
    for spec in shapes:
        name, _, text = spec.partition("=")
        try:
            parsed = [int(d) for d in text.lower().split("x")] if text else None
        except ValueError:
            parsed = None
        if not name or parsed is None:
            raise OptionError(f"--example-shapes '{spec}' is not NAME=DIMS like input_ids=2x16", hint=usage)
        if any(d < 0 for d in parsed):
            raise OptionError(f"--example-shapes '{spec}' has a negative dim", hint="dims are sizes: 0 or more")
        if name in dims:
            raise OptionError(f"--example-shapes gives input '{name}' twice ({name}={'x'.join(map(str, dims[name]))} "
                              f"and {spec})", hint="give each input one shape")
        dims[name] = parsed
    return dims


def _example_from_shapes(graph, shapes: list[str]):
    """Inputs for an ONNX model from NAME=2x16 specs: float inputs random normal, others ones."""
    import numpy as np

    dims = _parse_shapes(shapes)
    names = [v.name for v in graph.graph.inputs]
    unknown = sorted(set(dims) - set(names))
    if unknown:
        raise OptionError(f"--example-shapes names {', '.join(unknown)}, which the model does not take "
                          f"(its inputs: {', '.join(names)})", hint="name the model's inputs")
    rng = np.random.default_rng(0)
    inputs = []
    for value in graph.graph.inputs:
        if value.name not in dims:
            raise OptionError(f"--example-shapes gives no shape for input '{value.name}'",
                              hint=f"pass {value.name}=DIMS for every input ({', '.join(names)})")
        dtype = np.dtype(value.dtype.numpy())
        shape = dims[value.name]
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if size > MAX_EXAMPLE_BYTES:
            raise OptionError(f"--example-shapes {value.name}={'x'.join(map(str, shape))} would take {size / 2**30:.3g} "
                              f"GiB of {dtype}", hint="example shapes only verify the passes: small ones do, e.g. 2x16")
        inputs.append(rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.ones(shape, dtype))
    return inputs


def _writable_target(path: str, flag: str, *, folder: bool) -> None:
    """Refuse an output path before the work that fills it: a folder where a file goes (or the
    other way round), or a parent that is not a folder."""
    target = Path(path).expanduser()
    if folder and target.exists() and not target.is_dir():
        raise OptionError(f"{flag} '{path}' is a file; it must be a folder", hint=f"pass a new folder to {flag}")
    if not folder and target.is_dir():
        raise OptionError(f"{flag} '{path}' is a folder; it must be a file path", hint=f"pass a file name to {flag}")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OptionError(f"{flag} '{path}' lies under '{parent}', which is a file", hint=f"pass a path under a folder to {flag}")
    if not os.access(parent, os.W_OK):
        raise OptionError(f"{flag} '{path}': '{parent}' is not writable", hint=f"pass a path you can write to {flag}")


def _model_and_inputs(args):
    """(model, example inputs, dynamic shapes) for MODEL; an .onnx file with --example-shapes is
    loaded once here and handed on as IR."""
    if args.model.endswith(".onnx") or Path(args.model).exists():
        if args.example_shapes is None:
            return args.model, None, None
        from leangraph.frontend import load_onnx

        graph = load_onnx(args.model)
        return graph, _example_from_shapes(graph, args.example_shapes), None
    if args.example_shapes is not None:
        raise OptionError("--example-shapes is for .onnx models; a factory returns its own example inputs",
                          hint="leave --example-shapes out")
    return _load_factory(args.model)


def _read_npz(path: str) -> dict:
    import numpy as np

    if not Path(path).is_file():
        raise OptionError(f"inputs file '{path}' does not exist or is not a file", hint="pass an .npz file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("it holds one array, not an .npz archive")
            return {key: data[key] for key in data.files}
    except Exception as exc:  # noqa: BLE001 - zipfile, numpy and the OS each raise their own
        raise OptionError(f"cannot read inputs from '{path}': {exc}",
                          hint="pass an .npz written by numpy.savez with one array per model input") from None


def _inputs_from_npz(path: str, cm) -> list:
    """The arrays of ``path`` in the order of ``cm``'s inputs: by input name, or saved positionally."""
    arrays = _read_npz(path)
    names = [spec.name for spec in cm.inputs]
    if set(names) <= set(arrays):
        return [arrays[name] for name in names]
    if all(f"arr_{i}" in arrays for i in range(len(names))):
        return [arrays[f"arr_{i}"] for i in range(len(names))]
    raise OptionError(f"'{path}' holds {sorted(arrays)}; the model takes {names}",
                      hint="name the arrays after the inputs (np.savez(f, input_ids=..., ...)) or save them positionally")


def _passes(args) -> str:
    return "default" if args.passes is None else args.passes


def _inspect(args) -> int:
    import leangraph

    if args.html:
        _writable_target(args.html, "--html", folder=False)
    model, example, dynamic = _model_and_inputs(args)
    # ONNX Runtime: it runs every op a model may hold (ONNX Runtime's contrib ops too); inspect only reports
    cm = leangraph.optimize(model, example, dynamic_shapes=dynamic, backend="onnxruntime", passes=_passes(args))
    print(cm.report)
    if args.diff:
        for record in cm.report.records:
            if record.diff:
                print(f"\n=== {record.name} {record.group} ===\n{record.diff}")
    if args.html:
        cm.report.to_html(args.html)
        print(f"\nHTML report written to {args.html}")
    if args.explain:
        _explain(args.explain, model, example, dynamic, _passes(args))
    return 0


def _explain(name: str, model, example, dynamic, passes) -> None:
    """Why each rule of pass ``name`` did or did not match, at every run of it in the pipeline."""
    from leangraph.frontend import capture
    from leangraph.passes import resolve
    from leangraph.passes.manager import ExplainInstrument, FixedPoint, PassManager
    from leangraph.passes.registry import get_pass

    get_pass(name)  # an unknown name is an OptionError listing the registered passes
    pipeline = resolve(passes)
    names = {p.name for item in pipeline for p in (item.passes if isinstance(item, FixedPoint) else [item])}
    if name not in names:
        raise OptionError(f"--explain {name}: the pass is not in the pipeline ({', '.join(sorted(names))})",
                          hint="name a pass the pipeline runs, or add it with --passes")
    explain = ExplainInstrument(name)
    PassManager(pipeline, instruments=[explain]).run(capture(model, example, dynamic))
    for run, lines in enumerate(explain.lines, 1):
        print(f"\n=== why {name}'s rules did or did not match (run {run} of {len(explain.lines)}) ===")
        print("\n".join(lines) if lines else "no candidate node for any rule")


def _compile(args) -> int:
    import leangraph

    _writable_target(args.output, "-o/--output", folder=True)
    model, example, dynamic = _model_and_inputs(args)
    cm = leangraph.optimize(model, example, dynamic_shapes=dynamic, backend=args.backend, passes=_passes(args))
    cm.save(args.output)
    reverted = [r.name for r in cm.report.records if r.reverted]
    summary = {
        "model": cm.name, "output": str(args.output), "backend": cm.backend,
        "nodes_before": cm.report.nodes_before, "nodes_after": cm.report.nodes_after,
        "passes_changed": [r.name for r in cm.report.records if r.changed and not r.reverted],
        "passes_reverted": reverted, "verified": example is not None,
        "partitions": [[backend, nodes] for backend, nodes in cm.report.partitions],
        "seconds": round(cm.report.capture_seconds + cm.report.passes_seconds + cm.report.compile_seconds, 3),
    }
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    elif args.verbose:
        print(cm.report)
    if reverted and not args.json:
        print(f"leangraph: warning: passes reverted: {', '.join(reverted)} (see `leangraph inspect`)", file=sys.stderr)
    if example is None and not args.json and not args.verbose:
        print("leangraph: warning: the passes were not verified against the reference (no example inputs); "
              "give --example-shapes NAME=DIMS ... to check each pass", file=sys.stderr)
    return 0


def _run(args) -> int:
    import numpy as np

    import leangraph

    if args.output is not None:
        if not args.output.strip():
            raise OptionError("--output '' names no file", hint="pass a file path, e.g. --output out.npz")
        _writable_target(args.output, "--output", folder=False)
        if Path(args.output).exists() and Path(args.inputs).exists() and Path(args.output).samefile(args.inputs):
            raise OptionError(f"--output '{args.output}' is the --inputs file; writing it would overwrite the inputs",
                              hint="pass another file for the outputs")
    cm = leangraph.load(args.artifact)
    outputs = cm(*_inputs_from_npz(args.inputs, cm))
    from torch.utils import _pytree as pytree

    leaves = [np.asarray(x) for x in pytree.tree_leaves(outputs)]
    named = dict(zip(cm.output_names, leaves))
    if args.output:
        try:
            with open(args.output, "wb") as f:  # a file object: np.savez would add '.npz' to a bare path
                np.savez(f, **named)
        except OSError as exc:
            raise OptionError(f"cannot write --output '{args.output}': {exc.strerror or exc}",
                              hint="pass a file path you can write to") from None
    if args.json:
        print(json.dumps({name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in named.items()},
                         sort_keys=True))
    elif not args.output:
        for name, array in named.items():
            print(f"{name}: {array.dtype}{list(array.shape)}\n{array}")
    return 0


def _bench(args) -> int:
    import statistics
    import time

    import numpy as np

    import leangraph

    import torch

    from leangraph.runtime import to_numpy

    if args.rounds < 1:
        raise OptionError(f"--rounds {args.rounds}: bench needs at least one round", hint="e.g. --rounds 20")
    if Path(args.model, "manifest.json").is_file():
        ignored = [flag for flag, given in (("--backend", args.backend != "auto"),
                                             ("--example-shapes", args.example_shapes is not None)) if given]
        if ignored:
            raise OptionError(f"{' and '.join(ignored)} do not apply to an artifact, which is already compiled",
                              hint="leave them out; pass --inputs FILE.npz for its inputs")
        candidate = leangraph.load(args.model)
        model, example, captured = None, None, candidate.graph
    else:
        model, example, dynamic = _model_and_inputs(args)
        captured = leangraph.capture(model, example, dynamic)  # once: the baseline starts from it too
        candidate = leangraph.optimize(captured, example, backend=args.backend)
    if args.inputs:
        inputs = _inputs_from_npz(args.inputs, candidate)
    elif example is not None:
        inputs = [to_numpy(x) for x in example]
    else:
        raise OptionError("bench needs inputs", hint="pass --inputs FILE.npz (or --example-shapes for .onnx models)")

    if args.baseline in ("torch", "eager"):
        if not isinstance(model, torch.nn.Module):
            raise OptionError(f"--baseline {args.baseline} needs a torch model factory as MODEL",
                              hint="use --baseline onnxruntime for .onnx files and artifacts")

        def baseline(*xs):
            with torch.inference_mode():
                return model(*[torch.from_numpy(np.asarray(x)) for x in xs])
    else:
        baseline = leangraph.optimize(captured, passes="none", backend="onnxruntime")
    runners = {f"leangraph ({candidate.backend})": candidate, f"baseline ({args.baseline})": baseline}
    times = {name: [] for name in runners}
    for name, run in runners.items():
        run(*inputs)  # warm up
    for _ in range(args.rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run(*inputs)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = list(medians.values())[1]
    if args.json:
        print(json.dumps({name: {"median_ms": round(m * 1e3, 3), "speedup_vs_baseline": round(base / m, 3)}
                          for name, m in medians.items()}, sort_keys=True))
    else:
        print(f"{'runner':<28} {'median ms':>10} {'vs baseline':>12}   ({args.rounds} interleaved rounds)")
        for name, m in medians.items():
            print(f"{name:<28} {m * 1e3:>10.2f} {base / m:>11.2f}x")
    return 0


def _read_prompts(path: str) -> list[list[int]]:
    """One prompt per line: token ids separated by spaces or commas; blank lines are skipped."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise OptionError(f"cannot read --prompts '{path}': {exc.strerror or exc}",
                          hint="give a text file with one prompt of token ids per line") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompts.append([int(t) for t in line.replace(",", " ").split()])
        except ValueError:
            raise OptionError(f"--prompts '{path}' line {number} is not token ids: {line.strip()[:60]!r}",
                              hint="write integer token ids separated by spaces, one prompt per line") from None
    if not prompts:
        raise OptionError(f"--prompts '{path}' holds no prompt", hint="one prompt of token ids per line")
    return prompts


def _generate(args) -> int:
    import leangraph

    prompts = _read_prompts(args.prompts)
    model, example, _ = _model_and_inputs(args)
    gen = leangraph.optimize(model, example, task="text-generation", backend=args.backend)
    if args.verbose:
        print("\n".join(gen.report.notes), file=sys.stderr)
    outputs = gen.generate(prompts, max_new_tokens=args.max_new_tokens, eos_token_id=args.eos_token_id)
    if args.json:
        print(json.dumps({"new_tokens": outputs, "cache_stats": vars(gen.cache_stats)}))
    else:
        for tokens in outputs:
            print(" ".join(map(str, tokens)))
    return 0


def _workloads(specs: list[str], what: str):
    """A tuning workload per MODEL: captured once, timed on its example inputs."""
    from leangraph.cost_model.tuning import Workload
    from leangraph.frontend import capture
    from leangraph.ir.verify import model_name
    from leangraph.runtime import CompiledModel

    workloads = []
    for spec in specs:
        if spec.endswith(".onnx") or Path(spec).exists():
            raise OptionError(f"{what} MODEL '{spec}' is a file; tuning needs example inputs",
                              hint="pass a package.module:attribute factory returning (module, example_inputs)")
        module, example, dynamic = _load_factory(spec)
        graph = capture(module, example, dynamic)
        checker = CompiledModel(graph, None, backend="", report=None)
        workloads.append(Workload(spec.rpartition(":")[2] or model_name(graph), graph,
                                  [checker.input_values(list(example))]))
    return workloads


def _progress(description: str):
    from tqdm import tqdm

    return tqdm(desc=description, unit="config", disable=None, leave=False)


def _tune(args) -> int:
    from leangraph.cost_model.store import cache_folder, default_store
    from leangraph.cost_model.tuning import train_from_store, tune

    if args.budget_minutes is not None and not args.budget_minutes > 0:
        raise OptionError(f"--budget-minutes must be > 0, got {args.budget_minutes}", hint="e.g. --budget-minutes 10")
    store = default_store()
    workloads = _workloads(args.model, "tune")
    with _progress("leangraph tune") as bar:
        def progress(message):
            bar.set_postfix_str(message[:80])
            bar.update()

        measured = tune(workloads, store, budget_seconds=60 * args.budget_minutes if args.budget_minutes else float("inf"),
                        progress=progress)
    model = train_from_store(store)
    output = Path(args.output) if args.output else cache_folder() / "cost_model.json"
    model.save(output)
    taken = sum(1 for m in measured if not m.stored)
    summary = {"measured": taken, "reused": len(measured) - taken, "store": str(store.path or "in memory"),
               "trained_rows": model.rows, "cost_model": str(output)}
    print(json.dumps(summary) if args.json else
          f"measured {taken} configurations ({len(measured) - taken} already in {summary['store']}); cost model "
          f"trained on {model.rows} rows -> {output}")
    return 0


def _cost_model_evaluate(args) -> int:
    from leangraph.cost_model.ranker import CostModel
    from leangraph.cost_model.store import default_store
    from leangraph.cost_model.tuning import evaluate, train_from_store

    specs = [spec for spec in args.held_out.split(",") if spec.strip()]
    if not specs:
        raise OptionError("--held-out names no model", hint="e.g. --held-out mypkg.models:bert,mypkg.models:vit")
    store = default_store()
    workloads = _workloads(specs, "cost-model evaluate")
    held_out = [w.name for w in workloads]
    model = CostModel.load(args.cost_model) if args.cost_model else train_from_store(store, exclude_models=held_out)
    leaked = sorted(set(model.models) & set(held_out))
    if leaked:
        raise OptionError(f"the cost model was trained on {', '.join(leaked)}, which --held-out names",
                          hint="hold out models the cost model has not seen, or leave --cost-model out "
                               "(it is then trained on the store without them)")
    with _progress("leangraph cost-model evaluate") as bar:
        def progress(message):
            bar.set_postfix_str(message[:80])
            bar.update()

        result = evaluate(workloads, model, store, progress=progress)
    if args.json:
        print(json.dumps(result))
    else:
        for entry in result["per_model"]:
            print(f"{entry['model']}: Kendall tau {entry['kendall_tau']:.3f}, top-1 {entry['top1_score']:.3f}, "
                  f"top-5 {entry['top5_score']:.3f}, search picked {entry['picked']} measuring "
                  f"{entry['measured_fraction']:.0%} ({entry['search_score']:.3f} of the best: {entry['best']})")
        print(f"mean: Kendall tau {result['kendall_tau']:.3f}, top-1 {result['top1_score']:.3f}, "
              f"top-5 {result['top5_score']:.3f}, measured {result['measured_fraction']:.0%}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leangraph", description="graph-optimization compiler for neural networks")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail: the pass report, tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="run the passes on MODEL and show what each one did")
    inspect.add_argument("model", help=".onnx file, or package.module:attribute factory returning (module, example_inputs)")
    inspect.add_argument("--passes", help="comma-separated pass names (default: the default pipeline)")
    inspect.add_argument("--html", help="write a self-contained HTML report here")
    inspect.add_argument("--diff", action="store_true", help="print the IR diff of every pass that changed the model")
    inspect.add_argument("--explain", metavar="PASS",
                         help="print, per candidate node, why each rule of PASS did or did not match")
    inspect.add_argument("--example-shapes", nargs="*", metavar="NAME=DIMS",
                         help="for .onnx models: input shapes to verify the passes on, e.g. input_ids=2x16")
    inspect.set_defaults(run=_inspect)

    compile_ = commands.add_parser("compile", help="optimize and compile MODEL into an artifact directory")
    compile_.add_argument("model", help=".onnx file, or package.module:attribute factory returning (module, example_inputs)")
    compile_.add_argument("-o", "--output", required=True, help="artifact directory to write")
    compile_.add_argument("--example-shapes", nargs="*", metavar="NAME=DIMS",
                          help="for .onnx models: input shapes to verify the passes on, e.g. input_ids=2x16")
    compile_.add_argument("--backend", default="auto", help=f"auto (the default), {', '.join(AVAILABLE)}")
    compile_.add_argument("--passes", help="comma-separated pass names (default: the default pipeline)")
    compile_.add_argument("--json", action="store_true", help="print a one-line JSON summary")
    compile_.set_defaults(run=_compile)

    run = commands.add_parser("run", help="run a compiled artifact on inputs from an .npz file")
    run.add_argument("artifact", help="artifact directory written by `leangraph compile`")
    run.add_argument("--inputs", required=True, help=".npz with one array per input (by name, or positional)")
    run.add_argument("--output", help="write the outputs to this .npz instead of printing them")
    run.add_argument("--json", action="store_true", help="print output names, shapes and dtypes as JSON")
    run.set_defaults(run=_run)

    bench = commands.add_parser("bench", help="time a model or artifact against a baseline")
    bench.add_argument("model", help="artifact directory, .onnx file, or package.module:attribute factory")
    bench.add_argument("--baseline", choices=["onnxruntime", "torch", "eager"], default="onnxruntime",
                       help="onnxruntime: the unoptimized graph on ONNX Runtime; torch/eager: the module itself")
    bench.add_argument("--inputs", help=".npz with one array per input, by name")
    bench.add_argument("--example-shapes", nargs="*", metavar="NAME=DIMS", help="for .onnx models")
    bench.add_argument("--backend", default="auto", help="backend to compile MODEL for (not for artifacts)")
    bench.add_argument("--rounds", type=int, default=20)
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(run=_bench)

    generate = commands.add_parser("generate", help="generate text (token ids) with a causal LM and a KV cache")
    generate.add_argument("model", help=".onnx decoder (input_ids, attention_mask -> logits), or package.module:attribute "
                                        "factory returning (causal LM module, example_inputs)")
    generate.add_argument("--prompts", required=True, help="text file: one prompt of token ids per line")
    generate.add_argument("--max-new-tokens", type=int, default=32)
    generate.add_argument("--eos-token-id", type=int, default=None)
    generate.add_argument("--backend", default="auto", help=f"auto (the default), {', '.join(AVAILABLE)}")
    generate.add_argument("--json", action="store_true", help="print the new tokens and cache statistics as JSON")
    generate.set_defaults(run=_generate, example_shapes=None)

    tune = commands.add_parser("tune", help="measure MODELs' candidate configurations into the cost-model store "
                                            "and train the cost model on the store")
    tune.add_argument("model", nargs="+", help="package.module:attribute factories returning (module, example_inputs)")
    tune.add_argument("--budget-minutes", type=float, default=None, help="stop measuring after this long")
    tune.add_argument("--output", help="where to write the trained cost model (default: LEANGRAPH_CACHE/cost_model.json)")
    tune.add_argument("--json", action="store_true", help="print a one-line JSON summary")
    tune.set_defaults(run=_tune)

    cost_model = commands.add_parser("cost-model", help="judge the learned cost model")
    cost_commands = cost_model.add_subparsers(dest="cost_command", required=True)
    evaluate = cost_commands.add_parser("evaluate", help="rank held-out models' configurations and measure them all")
    evaluate.add_argument("--held-out", required=True, metavar="MODEL,MODEL...",
                          help="comma-separated factories the cost model was not trained on")
    evaluate.add_argument("--cost-model", help="a cost model JSON (default: trained on the store without the held-out models)")
    evaluate.add_argument("--json", action="store_true", help="print the result as one JSON object")
    evaluate.set_defaults(run=_cost_model_evaluate)
    return parser


INTERNAL_ERROR = 70
"""Exit status of an unexpected exception (EX_SOFTWARE): not a user error, which exits with its
LeanGraphError's code."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = args.verbose or os.environ.get("LEANGRAPH_LOG", "").lower() == "debug"
    try:
        return args.run(args)
    except LeanGraphError as exc:
        if verbose:
            traceback.print_exc()
        print(f"leangraph: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("leangraph: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of leangraph's, not the user's: say so, in one paragraph
        if verbose:
            traceback.print_exc()
        print(f"leangraph: internal error: {type(exc).__name__}: {exc}\n  What to do: this is a leangraph bug; "
              "rerun with -v for the traceback and report it", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
