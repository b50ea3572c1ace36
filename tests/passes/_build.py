"""Tiny graphs for pass tests, written in ONNX's text syntax and imported through our frontend."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser

from leangraph.backends.reference import ReferenceExecutable
from leangraph.frontend import load_onnx
from leangraph.passes import PassManager, get_pass
from leangraph.passes.manager import CountsInstrument, VerifyInstrument


def _split_args(text: str) -> list[str]:
    args, depth, current = [], 0, ""
    for ch in text:
        if ch in "(<":
            depth += 1
        elif ch in ")>":
            depth -= 1
        if ch == "," and depth == 0:
            args.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        args.append(current.strip())
    return args


def _flatten_call(expr: str, out: list[str], counter: list[int]) -> str:
    """Emit statements for the nested call ``expr``; return the name holding its value."""
    expr = expr.strip()
    if "(" not in expr:
        return expr
    head, rest = expr.split("(", 1)
    args = [_flatten_call(a, out, counter) for a in _split_args(rest[:-1])]
    counter[0] += 1
    name = f"_t{counter[0]}"
    out.append(f"{name} = {head}({', '.join(args)})")
    return name


def flatten(text: str) -> str:
    """ONNX text syntax with nested calls (``y = Add(MatMul(x, w), b)``) -> one call per line."""
    lines, counter = [], [0]
    for line in text.splitlines():
        stripped = line.strip()
        if "=" in stripped and "(" in stripped and not stripped.startswith("<") and "=>" not in stripped:
            lhs, rhs = stripped.split("=", 1)
            head, rest = rhs.strip().split("(", 1)
            if "(" in rest:
                args = [_flatten_call(a, lines, counter) for a in _split_args(rest.rstrip()[:-1])]
                lines.append(f"{lhs.strip()} = {head}({', '.join(args)})")
                continue
        lines.append(line)
    return "\n".join(lines)


def model_from_text(text: str, initializers: dict[str, np.ndarray] | None = None):
    proto = onnx.parser.parse_model(flatten(text))
    for name, array in (initializers or {}).items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    return load_onnx(proto)


def run_pass(name: str, model, inputs: list[np.ndarray]):
    """Run one pass under verification; return (model, record)."""
    expected = ReferenceExecutable(model)(inputs)
    manager = PassManager([get_pass(name)], instruments=[CountsInstrument(), VerifyInstrument([inputs], [expected])])
    model, (record,) = manager.run(model)
    assert not record.reverted, record.reason
    return model, record


def ops(model) -> list[str]:
    return [n.op_type for n in model.graph]
