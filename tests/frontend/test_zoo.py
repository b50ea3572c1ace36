"""The capture zoo: every architecture is captured with a dynamic batch (and length where it has
one), run on the reference interpreter at two shapes, and matches eager PyTorch."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch.utils import _pytree as pytree

import leangraph
from tests.zoo import ZOO


def eager_outputs(model, inputs):
    with torch.no_grad():
        return [t.numpy() for t in pytree.tree_leaves(model(*inputs)) if isinstance(t, torch.Tensor)]


def assert_matches_eager(name, model, cm, entry):
    for shape in entry.shapes:
        inputs = entry.inputs(*shape)
        got = [t.numpy() for t in pytree.tree_leaves(cm(*inputs)) if isinstance(t, torch.Tensor)]
        expected = eager_outputs(model, inputs)
        assert len(got) == len(expected)
        for i, (g, e) in enumerate(zip(got, expected)):
            assert g.shape == e.shape, f"{name} output {i} at {shape}"
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=f"{name} output {i} at {shape}")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_capture_and_run_on_reference(name):
    """Captured as is (no passes), then through the default pipeline: both match eager."""
    entry = ZOO[name]
    model = entry.build()
    example = entry.inputs(*entry.shapes[0])
    start = time.perf_counter()
    graph = leangraph.capture(model, example, entry.dynamic_shapes)
    capture_seconds = time.perf_counter() - start
    plain = leangraph.optimize(graph, backend="reference", passes="none")
    assert_matches_eager(name, model, plain, entry)
    optimized = leangraph.optimize(graph, example, backend="reference", passes="default")
    assert not any(r.reverted for r in optimized.report.records), str(optimized.report)
    assert optimized.report.nodes_after <= optimized.report.nodes_before
    assert_matches_eager(name, model, optimized, entry)
    on_ort = leangraph.optimize(optimized.graph, backend="onnxruntime", passes="none")  # leangraph ops lowered
    assert_matches_eager(name, model, on_ort, entry)
    print(f"{name}: captured in {capture_seconds:.1f}s, nodes {plain.report.nodes_before} -> "
          f"{optimized.report.nodes_after}")
