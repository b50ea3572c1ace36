"""CompiledModel: input checks at call time, torch/numpy round trip, output structure, to_onnx."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import leangraph
from leangraph.errors import InputMismatchError
from tests.helpers import add_relu_model


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x, ids):
        return {"hidden": self.proj(x), "stats": (x.sum(-1), ids * 2)}


@pytest.fixture(scope="module")
def compiled():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    x, ids = torch.randn(2, 3, 4), torch.arange(6).reshape(2, 3)
    dyn = {"x": {0: "batch", 1: "seq"}, "ids": {0: "batch", 1: "seq"}}
    return model, leangraph.optimize(model, (x, ids), dynamic_shapes=dyn, backend="reference", passes="none")


def test_torch_in_torch_out_in_module_structure(compiled):
    model, cm = compiled
    x, ids = torch.randn(3, 5, 4), torch.arange(15).reshape(3, 5)
    out = cm(x, ids)
    expected = model(x, ids)
    assert set(out) == {"hidden", "stats"} and isinstance(out["stats"], tuple)
    torch.testing.assert_close(out["hidden"], expected["hidden"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["stats"][1], expected["stats"][1])


def test_numpy_in_numpy_out(compiled):
    _, cm = compiled
    out = cm(np.ones((1, 2, 4), np.float32), np.zeros((1, 2), np.int64))
    assert isinstance(out["hidden"], np.ndarray)


def test_wrong_number_of_inputs(compiled):
    _, cm = compiled
    with pytest.raises(InputMismatchError, match=r"takes 2 inputs \(x: float32\[batch, seq, 4\], ids: int64\[batch, seq\]\); got 1"):
        cm(torch.randn(2, 3, 4))


def test_wrong_dtype(compiled):
    _, cm = compiled
    with pytest.raises(InputMismatchError, match=r"input 'ids' of model 'TwoInputs' must be int64; got int32"):
        cm(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.int32))


def test_wrong_rank(compiled):
    _, cm = compiled
    with pytest.raises(InputMismatchError, match=r"input 'x' .* must have rank 3 .*got shape \[2, 4\]"):
        cm(torch.randn(2, 4), torch.zeros(2, 3, dtype=torch.int64))


def test_wrong_static_dim(compiled):
    _, cm = compiled
    with pytest.raises(InputMismatchError, match=r"input 'x' .* must have size 4 on axis 2"):
        cm(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.int64))


def test_symbolic_dims_must_agree(compiled):
    _, cm = compiled
    with pytest.raises(InputMismatchError, match=r"dim 'seq' of model 'TwoInputs' is 3 in input 'x' axis 1 but 7"):
        cm(torch.randn(2, 3, 4), torch.zeros(2, 7, dtype=torch.int64))


def test_onnx_model_single_output_and_to_onnx(tmp_path):
    cm = leangraph.optimize(add_relu_model(), backend="onnxruntime", passes="none")
    x = np.array([[-2.0, 0.0, 3.0], [1.0, 1.0, 1.0]], np.float32)
    y = cm(x)
    assert isinstance(y, np.ndarray)
    np.testing.assert_allclose(y, np.maximum(x + [-1, 0, 1], 0))
    cm.to_onnx(tmp_path / "out.onnx")
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"))
