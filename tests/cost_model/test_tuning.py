"""`leangraph tune` and `leangraph cost-model evaluate` on small zoo models (ONNX Runtime only)."""

from __future__ import annotations

import json

import pytest

from leangraph.cli import _workloads, main
from leangraph.cost_model import configurations
from leangraph.cost_model.store import MeasurementStore
from leangraph.cost_model.tuning import distinct_candidates, evaluate, train_from_store, tune
from leangraph.errors import OptionError

BACKENDS = ["onnxruntime"]


@pytest.fixture(scope="module")
def workloads():
    return _workloads(["tests.cost_model.factories:bert", "tests.cost_model.factories:gpt2",
                       "tests.cost_model.factories:vit"], "tune")


def test_candidates_cover_backends_passes_and_precisions():
    found = configurations.candidates(["onnxruntime", "torch"])
    assert configurations.Configuration("onnxruntime", "default", "int8") in found
    assert configurations.Configuration("torch", "no_padding_removal", "fp32") in found
    assert not any(c.backend == "torch" and c.precision != "fp32" for c in found)  # no int8 kernels of its own


def test_identical_rewrites_count_once(workloads):
    bert = workloads[0]
    found = distinct_candidates(bert, BACKENDS)
    keys = [c.key for c in found]
    assert len(keys) == len(set(keys)) and 2 <= len(found) <= 4
    assert {c.configuration.precision for c in found} == {"fp32", "int8"}


def test_tune_stores_and_the_second_run_measures_nothing(workloads, tmp_path):
    store = MeasurementStore(tmp_path / "m.sqlite")
    first = tune(workloads[:2], store, backends=BACKENDS)
    assert first and not any(m.stored for m in first) and all(m.seconds > 0 for m in first)
    second = tune(workloads[:2], store, backends=BACKENDS)
    assert all(m.stored for m in second) and [m.seconds for m in second] == [m.seconds for m in first]
    assert tune(workloads[:2], store, backends=BACKENDS, budget_seconds=0) == []


def test_evaluate_holds_out_and_reports_the_api_keys(workloads, tmp_path):
    store = MeasurementStore(tmp_path / "m.sqlite")
    tune(workloads[:2], store, backends=BACKENDS)
    model = train_from_store(store)
    assert model.models == ["bert", "gpt2"]
    result = evaluate(workloads[2:], model, store, backends=BACKENDS)
    assert result["models"] == ["vit"]
    for key in ("kendall_tau", "top1_score", "top5_score", "measured_fraction"):
        assert key in result
    assert 0 < result["top1_score"] <= result["top5_score"] <= 1.0
    entry, = result["per_model"]
    assert entry["measured_fraction"] == 1 / entry["candidates"]
    with pytest.raises(Exception, match="at least 4"):
        train_from_store(store, exclude_models=["bert", "gpt2"])


def test_cli_refuses_files_and_leaked_models(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"")
    assert main(["tune", str(tmp_path / "m.onnx")]) != 0
    assert "tuning needs example inputs" in capsys.readouterr().err
    assert main(["tune", "tests.cost_model.factories:bert", "--budget-minutes", "0"]) != 0
    assert "--budget-minutes must be > 0" in capsys.readouterr().err
    assert main(["cost-model", "evaluate", "--held-out", ","]) != 0
    assert "names no model" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_tune_then_evaluate_held_out(tmp_path, capsys):
    output = tmp_path / "cost_model.json"
    assert main(["tune", "tests.cost_model.factories:bert", "tests.cost_model.factories:gpt2",
                 "--output", str(output), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["measured"] > 0 and output.is_file()
    assert main(["cost-model", "evaluate", "--held-out", "tests.cost_model.factories:bert",
                 "--cost-model", str(output)]) != 0
    assert "was trained on bert" in capsys.readouterr().err
    assert main(["cost-model", "evaluate", "--held-out", "tests.cost_model.factories:llama", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["models"] == ["llama"] and {"kendall_tau", "top1_score", "top5_score",
                                              "measured_fraction"} <= set(result)
