"""The learned cost model: features from the IR, training, the JSON format, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from leangraph.cost_model.features import FEATURE_NAMES, features
from leangraph.cost_model.ranker import CostModel, CostModelError, kendall_tau, top_k_score
from leangraph.errors import OptionError
from tests.passes._build import model_from_text

LINEAR = """<ir_version: 10, opset_import: ["" : 20, "leangraph" : 1]>
g (float[batch,seq,{k}] x, int64[batch,seq] attention_mask) => (float[batch,seq,{n}] y) {{
    y = leangraph.MatMulBiasAct(x, w)
}}"""


def _linear(k: int, n: int):
    return model_from_text(LINEAR.format(k=k, n=n), {"w": np.zeros((k, n), np.float32)})


def _inputs(batch: int, seq: int, k: int, real: int | None = None):
    mask = np.ones((batch, seq), np.int64)
    if real is not None:
        mask[:, real:] = 0
    return [[np.zeros((batch, seq, k), np.float32), mask]]


def test_linear_flops_follow_the_bound_dims_and_backend_is_one_hot():
    row = features(_linear(16, 8), "tvm", _inputs(2, 5, 16))
    assert list(row) == list(FEATURE_NAMES)
    assert row["log_flops_fp32"] == pytest.approx(np.log1p(2 * 2 * 5 * 16 * 8))
    assert (row["backend_tvm"], row["backend_onnxruntime"]) == (1.0, 0.0)
    assert row["layers_fp32"] == 1 and row["packed"] == 0
    padded = features(_linear(16, 8), "tvm", _inputs(2, 5, 16, real=3))
    assert padded["padding_fraction"] == pytest.approx(0.4)
    assert padded["log_real_tokens"] == pytest.approx(np.log1p(6))


def _synthetic(n: int, seed: int = 0):
    """Seconds that grow with the fp32 FLOPs and halve on int8: a law the trees can learn."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        row = dict.fromkeys(FEATURE_NAMES, 0.0)
        flops, int8 = rng.uniform(10, 20), rng.integers(0, 2)
        row["log_flops_int8" if int8 else "log_flops_fp32"] = flops
        row["backend_onnxruntime"] = 1.0
        samples.append((row, float(np.exp(flops) * 1e-9 * (0.5 if int8 else 1.0))))
    return samples


def test_a_trained_model_ranks_what_it_learned_and_survives_json(tmp_path):
    model = CostModel.train(_synthetic(200), models=["a", "b", "a"])
    held_out = _synthetic(40, seed=1)
    predicted = model.predict([f for f, _ in held_out])
    assert kendall_tau(predicted, [s for _, s in held_out]) > 0.8
    path = tmp_path / "cost_model.json"
    model.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "leangraph-cost-model" and data["models"] == ["a", "b"] and data["rows"] == 200
    np.testing.assert_allclose(CostModel.load(path).predict([f for f, _ in held_out]), predicted)


def test_too_few_measurements_and_bad_files_are_refused(tmp_path):
    with pytest.raises(CostModelError, match="(?s)at least 4 measurements.*leangraph tune"):
        CostModel.train(_synthetic(3))
    with pytest.raises(OptionError, match="does not exist"):
        CostModel.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CostModelError, match="cannot be read"):
        CostModel.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CostModelError, match="is not a leangraph cost model"):
        CostModel.load(tmp_path / "other.json")
    data = CostModel.train(_synthetic(20)).to_json()
    (tmp_path / "old.json").write_text(json.dumps({**data, "feature_names": data["feature_names"][:-1]}))
    with pytest.raises(CostModelError, match="written by another leangraph"):
        CostModel.load(tmp_path / "old.json")
    (tmp_path / "tampered.json").write_text(json.dumps({**data, "booster": "tree\ngarbage"}))
    with pytest.raises(CostModelError, match="its trees cannot be read"):
        CostModel.load(tmp_path / "tampered.json")


def test_top_k_score_is_the_best_over_the_best_among_the_picks():
    measured = [4.0, 1.0, 2.0, 3.0]
    assert top_k_score([1, 4, 3, 2], measured, 1) == pytest.approx(0.25)  # picks the slowest
    assert top_k_score([1, 4, 3, 2], measured, 3) == pytest.approx(0.5)
    assert top_k_score([4, 1, 2, 3], measured, 1) == 1.0
