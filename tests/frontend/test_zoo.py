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


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_capture_and_run_on_reference(name):
    entry = ZOO[name]
    model = entry.build()
    start = time.perf_counter()
    cm = leangraph.optimize(model, entry.inputs(*entry.shapes[0]), dynamic_shapes=entry.dynamic_shapes,
                            backend="reference", passes="none")
    capture_seconds = time.perf_counter() - start
    for shape in entry.shapes:
        inputs = entry.inputs(*shape)
        got = [t.numpy() for t in pytree.tree_leaves(cm(*inputs)) if isinstance(t, torch.Tensor)]
        expected = eager_outputs(model, inputs)
        assert len(got) == len(expected)
        for i, (g, e) in enumerate(zip(got, expected)):
            assert g.shape == e.shape, f"{name} output {i} at {shape}"
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=f"{name} output {i} at {shape}")
    print(f"{name}: captured in {capture_seconds:.1f}s, {cm.report.nodes_before} nodes")
