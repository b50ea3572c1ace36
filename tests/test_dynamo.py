"""torch.compile(model, backend="leangraph"): matches eager, and new lengths do not recompile."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import leangraph
from tests.zoo import ZOO


def _first(out):
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0] if isinstance(out, (tuple, list)) else out


# GPT-2 under dynamic=True: dynamo makes the head size symbolic and torch.onnx cannot translate the
# symbolic sqrt GPT-2 scales attention with; under torch.compile's default (automatic dynamic) it works.
@pytest.mark.parametrize(("name", "dynamic", "warmup"), [("bert", True, 1), ("vit", True, 1), ("gpt2", None, 2)])
def test_matches_eager_and_stops_recompiling(name, dynamic, warmup):
    torch._dynamo.reset()
    counters.clear()
    entry = ZOO[name]
    model = entry.build()
    compiled = torch.compile(model, backend="leangraph", dynamic=dynamic)
    side = entry.shapes[0][1]
    shapes = [(2, 7), (3, 11), (2, 5), (4, 9), (3, 6)] if name != "vit" else [(2, side), (3, side), (4, side), (5, side)]
    with torch.no_grad():
        for index, shape in enumerate(shapes):
            inputs = entry.inputs(*shape)
            torch.testing.assert_close(_first(compiled(*inputs)), _first(model(*inputs)), rtol=1e-4, atol=1e-5)
            if index == warmup - 1:
                graphs_after_warmup = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs_after_warmup, "a new length recompiled"
    report = leangraph.dynamo.leangraph_backend.last_compiled.report
    assert report.nodes_after < report.nodes_before


def test_automatic_dynamic_recompiles_once_then_not_again():
    torch._dynamo.reset()
    counters.clear()
    entry = ZOO["bert"]
    model = entry.build()
    compiled = torch.compile(model, backend="leangraph")
    with torch.no_grad():
        for shape in [(2, 7), (2, 9)]:  # static first, then dynamo marks seq dynamic
            compiled(*entry.inputs(*shape))
        warm = counters["stats"]["unique_graphs"]
        for shape in [(2, 5), (2, 12), (2, 6)]:
            out = compiled(*entry.inputs(*shape))
            torch.testing.assert_close(_first(out), _first(model(*entry.inputs(*shape))), rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == warm


def test_training_graph_runs_eagerly_with_a_warning():
    torch._dynamo.reset()
    model = torch.nn.Linear(4, 2)
    compiled = torch.compile(model, backend="leangraph")
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.warns(UserWarning, match="needs autograd and runs eagerly"):
        y = compiled(x)
    y.sum().backward()
    assert x.grad is not None


def test_torch_compile_options_reach_optimize():
    import pytest

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(2, 4)
    compiled = torch.compile(model, backend="leangraph", options={"backend": "onnxruntime", "passes": "none"})
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    from leangraph.dynamo import leangraph_backend

    assert leangraph_backend.last_compiled.backend == "onnxruntime"
    assert "no passes were run" in str(leangraph_backend.last_compiled.report)
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"options \['nope'\] are not leangraph's"):
        with torch.no_grad():
            torch.compile(model, backend="leangraph", options={"nope": 1})(x)
