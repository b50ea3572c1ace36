"""torch backend: every op of its table against the reference on single-op graphs, and whole models
(partitioned, ONNX Runtime for what it does not take) against eager PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

import leangraph
from leangraph.backends.reference import ReferenceExecutable
from leangraph.backends.torch import TorchBackend, TorchExecutable
from tests.frontend.test_zoo import assert_matches_eager
from tests.ir.test_ops import PADDING, single_op_model
from tests.zoo import ZOO

rng = np.random.default_rng(0)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(("op", "inputs", "attrs"), [
    ("MatMulBiasAct", lambda: [f32(2, 5, 8), f32(8, 6), f32(6)], {"activation": "gelu_tanh"}),
    ("LayerNorm", lambda: [f32(2, 5, 8), f32(8), f32(8)], {"epsilon": 1e-5}),
    ("RMSNorm", lambda: [f32(2, 5, 8), f32(8)], {"epsilon": 1e-6}),
    ("Gelu", lambda: [f32(2, 5, 8)], {}),
    ("Attention", lambda: [f32(2, 4, 5, 8), f32(2, 4, 5, 8), f32(2, 4, 5, 8), rng.random((2, 1, 5, 5)) < 0.7], {"causal": 1}),
    ("MultiHeadAttention", lambda: [f32(2, 5, 16), f32(2, 5, 16), f32(2, 5, 16)], {"num_heads": 4}),
    ("PackTokens", lambda: [f32(1, 5, 3), PADDING], {}),
    ("UnpackTokens", lambda: [f32(int(PADDING.sum()), 3), PADDING], {}),
    ("PackedMultiHeadAttention", lambda: [f32(int(PADDING.sum()), 16)] * 3 + [PADDING], {"num_heads": 4, "causal": 1}),
    ("PackedMultiHeadAttention", lambda: [f32(int(PADDING.sum()), 16)] * 2 + [f32(int(PADDING.sum()), 8), PADDING],
     {"num_heads": 4}),
    ("PackedMultiHeadAttention", lambda: [f32(0, 16)] * 3 + [np.zeros((2, 3), np.int64)], {"num_heads": 4}),  # no token
])
def test_leangraph_ops(op, inputs, attrs):
    arrays = inputs()
    model = single_op_model(op, arrays, attrs)
    assert all(TorchBackend().supports(n) for n in model.graph)
    for got, want in zip(TorchExecutable(model)(arrays), ReferenceExecutable(model)(arrays)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [0, 1])
def test_long_attention_takes_the_sdpa_path(causal):
    from leangraph.backends.torch.ops import WRITTEN_OUT_SCORES_UP_TO

    length = WRITTEN_OUT_SCORES_UP_TO + 8
    arrays = [f32(1, 2, length, 4), f32(1, 2, length, 4), f32(1, 2, length, 4), rng.random((1, 1, 1, length)) < 0.9]
    model = single_op_model("Attention", arrays, {"causal": causal})
    for got, want in zip(TorchExecutable(model)(arrays), ReferenceExecutable(model)(arrays)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("split", ["sizes", "num_outputs"])
def test_split(split):
    from tests.passes._build import model_from_text

    call = "Split<axis=-1>(x, sizes)" if split == "sizes" else "Split<axis=-1, num_outputs=3>(x)"
    model = model_from_text(f"""<ir_version: 10, opset_import: ["" : 20]>
    g (float[2,3,8] x) => (float[2,3,3] a, float[2,3,3] b, float[2,3,2] c) {{ a, b, c = {call} }}""",
                            {"sizes": np.array([3, 3, 2], np.int64)} if split == "sizes" else {})
    x = f32(2, 3, 8)
    assert all(TorchBackend().supports(n) for n in model.graph)
    for got, want in zip(TorchExecutable(model)([x]), ReferenceExecutable(model)([x])):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm", "gpt2", "vit", "resnet"])
def test_zoo_through_torch_matches_eager(name):
    entry = ZOO[name]
    model = entry.build()
    cm = leangraph.optimize(model, entry.inputs(*entry.shapes[0]), dynamic_shapes=entry.dynamic_shapes,
                            backend="torch")
    assert any(backend == "torch" for backend, _ in cm.report.partitions)
    assert_matches_eager(name, model, cm, entry)
