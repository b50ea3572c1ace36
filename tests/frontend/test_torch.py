"""Capture from torch: dynamic dims, module paths, output structure, clear capture errors."""

from __future__ import annotations

import pytest
import torch

from leangraph.errors import CaptureError
from leangraph.frontend import capture
from leangraph.frontend.from_torch import MODULE_PATH


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = torch.nn.Linear(8, 8)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))

    def forward(self, x):
        return x + self.mlp(self.attention(x))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.fixture(scope="module")
def net_ir():
    torch.manual_seed(0)
    return capture(Net().eval(), (torch.randn(2, 5, 8),), {"x": {0: "batch", 1: "seq"}})


def test_dynamic_dims_are_symbolic(net_ir):
    assert [str(d) for d in net_ir.graph.inputs[0].shape] == ["batch", "seq", "8"]


def test_module_paths_are_kept(net_ir):
    paths = {n.metadata_props.get(MODULE_PATH) for n in net_ir.graph}
    assert {"layers.0.attention", "layers.1.mlp.0", "layers.1.mlp.2"} <= paths


def test_static_capture_without_dynamic_shapes():
    model = capture(Net().eval(), (torch.randn(2, 5, 8),))
    assert [d for d in model.graph.inputs[0].shape] == [2, 5, 8]


def test_missing_example_inputs():
    with pytest.raises(CaptureError, match="needs example_inputs"):
        capture(Net())


def test_example_inputs_must_be_a_tuple():
    with pytest.raises(CaptureError, match="must be a tuple of the forward"):
        capture(Net(), torch.randn(2, 5, 8))


def test_dynamic_shapes_naming_unknown_argument():
    with pytest.raises(CaptureError, match=r"names 'y', which is not an argument of Net.forward\(\) \(x\)"):
        capture(Net(), (torch.randn(2, 5, 8),), {"y": {0: "batch"}})


def test_dynamic_shapes_axis_past_the_rank():
    with pytest.raises(CaptureError, match=r"names axis 3, but the example 'x' has rank 3"):
        capture(Net(), (torch.randn(2, 5, 8),), {"x": {3: "batch"}})
    capture(Net(), (torch.randn(2, 5, 8),), {"x": {-3: "batch"}})  # negative axes count from the end


def test_untraceable_module():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # control flow on data: torch.export cannot trace it
                return x * 2
            return x

    with pytest.raises(CaptureError, match="DataDependent"):
        capture(DataDependent(), (torch.randn(3),))


def test_negative_axes_in_dynamic_shapes_are_dynamic():
    # torch.export ignored a negative axis and kept the dim static
    graph = capture(Net(), (torch.randn(2, 5, 8),), {"x": {-3: "batch"}})
    assert str(graph.graph.inputs[0].shape[0]) == "batch"


def test_empty_dim_names_are_refused():
    with pytest.raises(CaptureError, match="gives axis 0 an empty dim name"):
        capture(Net(), (torch.randn(2, 5, 8),), {"x": {0: " "}})


def test_in_place_state_updates_are_refused():
    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("count", torch.zeros(1))

        def forward(self, x):
            self.count += 1
            return x + self.count

    with pytest.raises(CaptureError, match=r"updates 'count' in place; a compiled model keeps no state"):
        capture(Counting(), (torch.randn(2, 3),))


def test_training_mode_with_dropout_warns():
    class WithDropout(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = torch.nn.Dropout(0.1)

        def forward(self, x):
            return self.drop(x) * 2

    with pytest.warns(UserWarning, match=r"'WithDropout' is in training mode.*model.eval\(\)"):
        capture(WithDropout(), (torch.randn(2, 3),))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        capture(WithDropout().eval(), (torch.randn(2, 3),))
        capture(Net(), (torch.randn(2, 5, 8),))  # training mode without dropout or batch norm: no difference
