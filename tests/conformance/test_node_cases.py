"""ONNX's operator cases through leangraph (see node_cases.py): every case ONNX Runtime alone
passes must pass through ``optimize(..., backend="onnxruntime")`` too, except those listed in
``node_exclusions.toml`` with their reason. A case ONNX Runtime fails may fail through leangraph
only as a LeanGraphError (a clean refusal naming the model) or with ONNX Runtime's own wrong
values, never with a crash of ours. The counts are in docs/conformance.md."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path

import pytest

import leangraph.errors

from tests.conformance import node_cases

EXCLUDED = tomllib.loads((Path(__file__).parent / "node_exclusions.toml").read_text())


@functools.cache
def _cases():
    return node_cases.collect()


@pytest.mark.parametrize("name", sorted(_cases()))
def test_case(name):
    case = _cases()[name]
    onnxruntime = node_cases.run_with_onnxruntime(case)
    ours = node_cases.run_with_leangraph(case)
    if name in EXCLUDED:
        assert ours != "pass", f"{name} passes now: remove it from node_exclusions.toml"
        pytest.xfail(EXCLUDED[name]["reason"])
    if onnxruntime != "pass":
        error = getattr(leangraph.errors, ours.split(":")[0], None)
        clean = isinstance(error, type) and issubclass(error, leangraph.errors.LeanGraphError)
        same_values = ours.startswith("AssertionError") and onnxruntime.startswith("AssertionError")
        assert ours == "pass" or clean or same_values, f"ONNX Runtime: {onnxruntime}; leangraph: {ours}"
        return
    assert ours == "pass", ours
