"""ONNX's operator test cases (``onnx.backend.test.case.node``: one small model per op and
variant, with inputs and expected outputs) run through ``leangraph.optimize(..., backend=
"onnxruntime")`` and through ONNX Runtime alone, compared as ONNX's own runner compares them.

Shared by ``test_node_cases.py`` and ``benchmarks/onnx_node_cases.py`` (the full table)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np


@dataclasses.dataclass
class Outcome:
    name: str
    onnxruntime: str
    """"pass", or why ONNX Runtime alone fails the case."""
    leangraph: str
    """"pass", or why the case fails through leangraph."""


def collect():
    """Every case of the installed onnx, by name (their generators warn on purpose: NaN, overflow)."""
    import onnx.backend.test.case.node as node_cases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return {case.name: case for case in node_cases.collect_testcases()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _compare(got, expected, rtol: float, atol: float) -> None:
    """As onnx.backend.test.runner compares: element types equal, values close, NaN equal."""
    if isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), "sequence lengths differ"
        for g, e in zip(got, expected):
            _compare(g, e, rtol, atol)
        return
    if expected is None:
        assert got is None, "expected an empty optional"
        return
    expected, got = np.asarray(expected), np.asarray(got)
    assert got.dtype == expected.dtype or (expected.dtype == object and got.dtype.kind in "OUS"), \
        f"dtype {got.dtype} != {expected.dtype}"
    if expected.dtype == object or expected.dtype.kind in "OUS":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)


def run_with_onnxruntime(case) -> str:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        for inputs, outputs in case.data_sets:
            got = session.run(None, dict(zip(names, inputs)))
            for g, e in zip(got, outputs):
                _compare(g, e, case.rtol, case.atol)
    except Exception as exc:  # ORT's own failures are part of the table
        return _first_line(exc)
    return "pass"


def run_with_leangraph(case) -> str:
    import leangraph

    try:
        inputs, _ = case.data_sets[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = leangraph.optimize(case.model, tuple(inputs), backend="onnxruntime")
        for inputs, outputs in case.data_sets:
            got = compiled(*inputs)
            got = list(got) if isinstance(got, (list, tuple)) and len(outputs) > 1 else [got]
            for g, e in zip(got, outputs):
                _compare(g, e, case.rtol, case.atol)
    except Exception as exc:
        return _first_line(exc)
    return "pass"


def run(case) -> Outcome:
    return Outcome(case.name, run_with_onnxruntime(case), run_with_leangraph(case))
