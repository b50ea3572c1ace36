"""The `leangraph` command line: ``leangraph inspect MODEL`` shows what every pass does.

MODEL is an ``.onnx`` file or ``package.module:attribute`` naming a factory that returns
``(torch_module, example_inputs)`` or ``(torch_module, example_inputs, dynamic_shapes)``.
User errors print one paragraph without a traceback and exit non-zero; ``-v`` or ``LEANGRAPH_LOG=debug``
shows the traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

from leangraph.errors import LeanGraphError, OptionError

_ONNX_DTYPES = {"FLOAT": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "INT64": "int64", "INT32": "int32",
                "BOOL": "bool"}


def _load_factory(spec: str):
    module_name, _, attribute = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise OptionError(f"cannot load model factory '{spec}': {exc}",
                          hint="MODEL is an .onnx file or package.module:attribute naming a factory") from None
    result = factory() if callable(factory) else factory
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise OptionError(f"factory '{spec}' must return (module, example_inputs) or (module, example_inputs, dynamic_shapes)",
                          hint="wrap your model: return model, (example_tensor,)")
    return result if len(result) == 3 else (*result, None)


def _example_from_shapes(model_path: str, shapes: list[str]):
    """Inputs for an ONNX model from NAME=2x16 specs: float inputs random normal, integer inputs ones."""
    import numpy as np

    from leangraph.frontend import load_onnx

    graph = load_onnx(model_path)
    dims = {}
    for spec in shapes:
        name, _, text = spec.partition("=")
        try:
            dims[name] = [int(d) for d in text.lower().split("x")]
        except ValueError:
            raise OptionError(f"--example-shapes '{spec}' is not NAME=DIMS like input_ids=2x16", hint="fix the flag") from None
    rng = np.random.default_rng(0)
    inputs = []
    for value in graph.graph.inputs:
        if value.name not in dims:
            raise OptionError(f"--example-shapes gives no shape for input '{value.name}'",
                              hint=f"pass {value.name}=DIMS for every input ({', '.join(v.name for v in graph.graph.inputs)})")
        dtype = np.dtype(_ONNX_DTYPES.get(value.dtype.name, "float32"))
        shape = dims[value.name]
        inputs.append(rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.ones(shape, dtype))
    return inputs


def _inspect(args) -> int:
    import leangraph

    if args.model.endswith(".onnx") or Path(args.model).exists():
        model, dynamic = args.model, None
        example = _example_from_shapes(args.model, args.example_shapes) if args.example_shapes else None
    else:
        model, example, dynamic = _load_factory(args.model)
    cm = leangraph.optimize(model, example, dynamic_shapes=dynamic, backend="reference",
                            passes=args.passes or "default")
    print(cm.report)
    if args.diff:
        for record in cm.report.records:
            if record.diff:
                print(f"\n=== {record.name} {record.group} ===\n{record.diff}")
    if args.html:
        cm.report.to_html(args.html)
        print(f"\nHTML report written to {args.html}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leangraph", description="graph-optimization compiler for neural networks")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="run the passes on MODEL and show what each one did")
    inspect.add_argument("model", help=".onnx file, or package.module:attribute factory returning (module, example_inputs)")
    inspect.add_argument("--passes", help="comma-separated pass names (default: the default pipeline)")
    inspect.add_argument("--html", help="write a self-contained HTML report here")
    inspect.add_argument("--diff", action="store_true", help="print the IR diff of every pass that changed the model")
    inspect.add_argument("--example-shapes", nargs="*", default=[], metavar="NAME=DIMS",
                         help="for .onnx models: input shapes to verify the passes on, e.g. input_ids=2x16")
    inspect.set_defaults(run=_inspect)
    return parser


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


if __name__ == "__main__":
    sys.exit(main())
