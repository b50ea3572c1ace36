"""PassManager: a pass that breaks the outputs or raises is reverted exactly and the pipeline goes on."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from leangraph.backends.reference import ReferenceExecutable
from leangraph.ir.printer import format_model
from leangraph.passes import FixedPoint, PassManager, get_pass, graph_pass
from leangraph.passes.manager import CountsInstrument, DiffInstrument, VerifyInstrument
from tests.passes._build import model_from_text

TEXT = """<ir_version: 10, opset_import: ["" : 20]>
g (float[2,3] x) => (float[2,3] y) {
    one = Constant<value = float {1.0}>()
    a = Mul(x, one)
    b = Relu(a)
    c = Relu(a)
    y = Add(b, c)
}"""
X = np.array([[-1.0, 0.5, 2.0], [3.0, -4.0, 0.0]], np.float32)


@graph_pass("break_outputs")
def break_outputs(model: ir.Model) -> bool:
    """Turns every Relu into a Neg: changes the outputs."""
    for node in model.graph:
        if node.op_type == "Relu":
            node.op_type = "Neg"
    return True


@graph_pass("explode")
def explode(model: ir.Model) -> bool:
    """Deletes a node and then fails half-way."""
    model.graph.remove(next(iter(model.graph)), safe=False)
    raise RuntimeError("pass bug")


def _manager(model, pipeline):
    expected = ReferenceExecutable(model)([X])
    return PassManager(pipeline, instruments=[CountsInstrument(), DiffInstrument(), VerifyInstrument([[X]], [expected])])


def test_breaking_pass_is_reverted_and_pipeline_goes_on():
    model = model_from_text(TEXT)
    before = format_model(model)
    model, records = _manager(model, [break_outputs, get_pass("cse")]).run(model)
    broken, cse = records
    assert broken.reverted and broken.verified is False
    assert "verification failed on input set 0: output 'y'" in broken.reason
    assert cse.changed and cse.verified and not cse.reverted
    assert [n.op_type for n in model.graph].count("Relu") == 1
    assert len(before) == len(format_model(model)) + 1  # only cse's change survived


def test_raising_pass_is_reverted_exactly():
    model = model_from_text(TEXT)
    before = format_model(model)
    model, (record,) = _manager(model, [explode]).run(model)
    assert record.reverted and record.reason == "raised RuntimeError: pass bug"
    assert "RuntimeError" in record.traceback
    assert format_model(model) == before
    np.testing.assert_allclose(ReferenceExecutable(model)([X])[0], 2 * np.maximum(X, 0))


def test_fixed_point_repeats_until_nothing_changes():
    model = model_from_text(TEXT)
    group = FixedPoint("cleanup", (get_pass("algebraic"), get_pass("cse"), get_pass("dce")))
    model, records = _manager(model, [group]).run(model)
    rounds = {r.group for r in records}
    assert rounds == {"cleanup#1", "cleanup#2"}
    assert all(not r.changed for r in records if r.group == "cleanup#2")
    assert [n.op_type for n in model.graph] == ["Relu", "Add"]


def test_records_carry_counts_diff_and_fired_rules():
    model = model_from_text(TEXT)
    model, (record,) = _manager(model, [get_pass("algebraic")]).run(model)
    assert record.fired == {"mul_by_one[0]": 1}
    assert record.ops_before["Mul"] == 1 and "Mul" not in record.ops_after
    assert "-  %a = Mul(%x, %one" in record.diff
