"""optimize(): options are checked, both backends run, the report is filled in."""

from __future__ import annotations

import importlib
import logging

import numpy as np
import pytest

import leangraph
from leangraph.errors import OptionError
from tests.helpers import add_relu_model


@pytest.mark.parametrize("backend", ["reference", "onnxruntime", "auto"])
def test_backends_agree(backend):
    cm = leangraph.optimize(add_relu_model(), backend=backend, passes="none")
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(cm(x), np.maximum(x + [-1, 0, 1], 0))
    assert cm.report.nodes_before == cm.report.nodes_after == 2
    assert cm.backend == backend
    assert "add_relu" in str(cm.report)


def test_unknown_backend():
    with pytest.raises(OptionError, match=r"backend .tpu. is not available \(available: auto, reference, onnxruntime, tvm, torch\)"):
        leangraph.optimize(add_relu_model(), backend="tpu")


def test_unknown_pass_name():
    with pytest.raises(OptionError, match=r"no pass named 'fast' \(registered: algebraic, constant_folding"):
        leangraph.optimize(add_relu_model(), passes="fast")


@pytest.mark.parametrize(("options", "message"), [
    ({"max_drop": 0.1}, "max_drop is the allowed drop of evaluate"),
    ({"evaluate": lambda cm: 1.0, "max_drop": -1}, "max_drop must be a finite number >= 0"),
    ({"evaluate": 3.0, "max_drop": 0.1}, "evaluate must be a callable"),
])
def test_bad_budget_options(options, message):
    with pytest.raises(OptionError, match=message):
        leangraph.optimize(add_relu_model(), **options)


def test_bad_tolerance_type():
    with pytest.raises(OptionError, match="tolerance must be a leangraph.Tolerance"):
        leangraph.optimize(add_relu_model(), tolerance=1e-3)


def test_user_pass_by_object_and_by_registered_name():
    import onnx_ir as ir

    from leangraph.passes import PASSES, graph_pass, register

    calls = []

    @graph_pass("count_relus")
    def count_relus(model: ir.Model) -> bool:
        """Counts Relu nodes; changes nothing."""
        calls.append(sum(n.op_type == "Relu" for n in model.graph))
        return False

    x = np.ones((2, 3), np.float32)
    cm = leangraph.optimize(add_relu_model(), (x,), passes=[count_relus, "dce"])
    assert [r.name for r in cm.report.records] == ["count_relus", "dce"] and calls == [1]
    register(count_relus)
    try:
        cm = leangraph.optimize(add_relu_model(), (x,), passes=["count_relus"])
        assert calls == [1, 1]
    finally:
        PASSES.pop("count_relus")


def test_minilm_default_pipeline_halves_nodes_and_matches_eager(minilm):
    import torch

    model, tokenizer = minilm
    batch = tokenizer(["A man is playing a guitar.", "Stocks fell.", "The cat sleeps on the warm mat today."],
                      padding=True, return_tensors="pt")
    inputs = (batch["input_ids"], batch["attention_mask"])
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    cm = leangraph.optimize(model, inputs, dynamic_shapes=dynamic, backend="onnxruntime")
    report = cm.report
    assert report.nodes_after < report.nodes_before / 2, str(report)
    assert not any(r.reverted for r in report.records), str(report)
    other = tokenizer(["One.", "Two words here and there, with more tokens than before."], padding=True,
                      return_tensors="pt")
    for args in (inputs, (other["input_ids"], other["attention_mask"])):
        with torch.no_grad():
            expected = model(*args).last_hidden_state
        torch.testing.assert_close(cm(*args).last_hidden_state, expected, rtol=1e-4, atol=2e-5)


def test_second_optimize_is_a_cache_hit(tmp_path):
    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    first = leangraph.optimize(add_relu_model(), (x,), cache_dir=tmp_path)
    assert not first.report.cache_hit and "cache miss" in str(first.report)
    second = leangraph.optimize(add_relu_model(), (x,), cache_dir=tmp_path)
    assert second.report.cache_hit and "cache hit" in str(second.report)
    np.testing.assert_array_equal(first(x), second(x))
    other = leangraph.optimize(add_relu_model(), (x,), cache_dir=tmp_path, passes="none")
    assert not other.report.cache_hit  # other options, other entry
    assert len(list(tmp_path.iterdir())) == 2


def test_cache_entry_of_an_older_artifact_format_is_a_quiet_miss(tmp_path, monkeypatch):
    # A new artifact format (e.g. version 2: TVM library kernels return their results) cannot load
    # entries written in the old one: they are other entries, not "damaged" ones.
    import warnings

    from leangraph import compile_cache

    x = np.ones((2, 3), np.float32)
    monkeypatch.setattr(compile_cache, "ARTIFACT_VERSION", compile_cache.ARTIFACT_VERSION - 1)
    leangraph.optimize(add_relu_model(), (x,), cache_dir=tmp_path)
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        current = leangraph.optimize(add_relu_model(), (x,), cache_dir=tmp_path)
    assert not current.report.cache_hit and len(list(tmp_path.iterdir())) == 2


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    x = np.ones((2, 3), np.float32)
    leangraph.optimize(add_relu_model(), (x,), cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    (entry / "graph.safetensors").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="is damaged and will be rebuilt"):
        rebuilt = leangraph.optimize(add_relu_model(), (x,), cache_dir=tmp_path)
    assert not rebuilt.report.cache_hit
    assert leangraph.optimize(add_relu_model(), (x,), cache_dir=tmp_path).report.cache_hit


def test_calibration_generator_is_read_for_cache_key_and_verification(tmp_path):
    sets = [(np.full((2, 3), v, np.float32),) for v in (-1.0, 0.5, 2.0)]
    cm = leangraph.optimize(add_relu_model(), calibration=(s for s in sets), cache_dir=tmp_path, passes="cse,dce")
    assert "not verified" not in str(cm.report)
    again = leangraph.optimize(add_relu_model(), calibration=iter(sets), cache_dir=tmp_path, passes="cse,dce")
    assert again.report.cache_hit


def test_capture_and_folding_keep_the_terminal_quiet(caplog):
    # onnxscript's folder warns for each node its evaluator rejects (a static-shape BERT's token-type
    # GatherElements: "Evaluation failed: cannot reshape ..."); the node just stays unfolded, so
    # users must not see it.
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=50)
    bert = transformers.BertModel(config).eval()

    class Encoder(torch.nn.Module):
        def forward(self, ids, mask):
            return bert(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1)

    ids, mask = torch.randint(0, 50, (2, 5)), torch.ones(2, 5, dtype=torch.int64)
    leangraph.optimize(Encoder(), (ids, mask), backend="reference")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_budget_that_reverts_every_pass_says_so_on_stderr_and_in_the_report():
    import onnx_ir as ir

    from leangraph.passes.base import graph_pass

    @graph_pass("perturb_weights")
    def perturb(model: ir.Model) -> bool:  # a wrong rewrite: verification must revert it
        for value in model.graph.initializers.values():
            value.const_value = ir.tensor(value.const_value.numpy() + 1.0, name=value.name)
        return True

    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    with pytest.warns(UserWarning, match="every pass that changed model 'add_relu' was reverted"):
        cm = leangraph.optimize(add_relu_model(), (x,), passes=[perturb], backend="onnxruntime")
    assert "every pass that changed model 'add_relu' was reverted by verification (perturb_weights)" in str(cm.report)
    np.testing.assert_array_equal(cm(x), np.maximum(x + np.arange(3, dtype=np.float32) - 1, 0))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pipeline whose passes are kept says nothing
        leangraph.optimize(add_relu_model(), (x,), passes="cse,dce", backend="onnxruntime")


def _drop_relu():
    import onnx_ir as ir

    from leangraph.passes.base import graph_pass

    @graph_pass("drop_relu")
    def drop_relu(model: ir.Model) -> bool:  # wrong only where x + w < 0
        relu = next(node for node in model.graph if node.op_type == "Relu")
        relu.op_type = "Identity"
        return True

    return drop_relu


def test_passes_are_verified_on_a_sample_and_the_result_on_every_set():
    sets = [(np.full((2, 3), 5.0 + i, np.float32),) for i in range(7)]
    cm = leangraph.optimize(add_relu_model(), sets[0], calibration=sets, passes="cse,dce", backend="onnxruntime")
    assert not any("verified on" in note for note in cm.report.notes)  # nothing changed: nothing to check
    cm = leangraph.optimize(add_relu_model(), sets[0], calibration=sets, passes=[_drop_relu()], backend="onnxruntime")
    assert any(note.startswith("passes verified on 3 of the 7 input sets each (the reference interpreter); the result "
                               "checked on all 7 on onnxruntime") for note in cm.report.notes), cm.report.notes
    assert cm.report.records[0].verified and not cm.report.records[0].reverted


def test_a_wrong_pass_the_sample_missed_is_caught_on_every_set_and_reverted(monkeypatch):
    optimize_module = importlib.import_module("leangraph.optimize")
    monkeypatch.setattr(optimize_module, "verification_sample", lambda sets, count: [0])
    sets = [(np.full((2, 3), 5.0, np.float32),), (np.full((2, 3), 2.0, np.float32),),
            (np.full((2, 3), -5.0, np.float32),)]  # only the last makes x + w negative
    with pytest.warns(UserWarning, match="reverted"):
        cm = leangraph.optimize(add_relu_model(), sets[0], calibration=sets, passes=[_drop_relu()],
                                backend="onnxruntime")
    assert any(note.startswith("the passes' result failed on input set 2") and "verified again on all 3" in note
               for note in cm.report.notes), cm.report.notes
    record, = cm.report.records
    assert record.reverted and "input set 2" in record.reason
    np.testing.assert_array_equal(cm(sets[2][0]), np.zeros((2, 3), np.float32))


def test_a_per_pass_failure_names_the_users_input_set_not_its_place_in_the_sample():
    sets = [(np.full((3, 3), 5.0, np.float32),) for _ in range(7)]
    sets[5] = (np.full((1, 3), -5.0, np.float32),)  # the smallest: in the sample, third of [0, 1, 5]
    with pytest.warns(UserWarning, match="reverted"):
        cm = leangraph.optimize(add_relu_model(), sets[0], calibration=sets, passes=[_drop_relu()],
                                backend="onnxruntime")
    record, = cm.report.records
    assert record.reverted and record.reason.startswith("verification failed on input set 5:"), record.reason
