"""Differential fuzzing: every pass, and the whole default pipeline, on random valid graphs must
give the original model's outputs on two batch sizes, as the reference interpreter and ONNX Runtime
(through our onnxruntime backend) compute them, whether the optimized graph runs on the reference or
on ONNX Runtime. A pass that the manager had to revert is a bug found. `make fuzz N=10000` runs more
graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from leangraph.backends.onnxruntime import OrtExecutable
from leangraph.backends.reference import ReferenceExecutable
from leangraph.frontend import load_onnx
from leangraph.passes import PASSES, PassManager, default_pipeline
from leangraph.passes.manager import VerifyInstrument
from leangraph.passes.verification import EXACT, Tolerance, compare_outputs
from tests.fuzz.graphs import random_model

CI_COUNT = 200


def _count(config) -> int:
    return config.getoption("--fuzz-count") or CI_COUNT


SLACK = 16
"""How many times the reference's own float32 error (against float64) two float32 implementations
may differ by: where that error is large the value is ill-conditioned (a layer norm of a row that is
constant up to round-off divides round-off by sqrt(epsilon)), and any order of float32 operations
gives another answer. Where it is small (almost everywhere), the comparison is EXACT's."""


def _as_float64(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in float64: float32 initializers, inputs, outputs and Casts to float32."""
    twin = onnx.ModelProto()
    twin.CopyFrom(proto)
    graph = twin.graph
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == onnx.TensorProto.FLOAT:
            graph.initializer[index].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64),
                                                                      tensor.name))
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            value.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == onnx.TensorProto.FLOAT:
                attribute.i = onnx.TensorProto.DOUBLE
    return twin


def _run_reference(proto, input_sets, dtype=None) -> list[list[np.ndarray]]:
    evaluator = ReferenceEvaluator(proto)
    names = [value.name for value in proto.graph.input]
    outputs = []
    with np.errstate(all="ignore"):
        for inputs in input_sets:
            feeds = {n: (x.astype(dtype) if dtype is not None and x.dtype == np.float32 else x)
                     for n, x in zip(names, inputs)}
            outputs.append([np.asarray(o) for o in evaluator.run(None, feeds)])
    return outputs


def _original_outputs(proto, input_sets):
    """onnx.reference on the model as generated (not through our frontend, whose losses, such as an
    initializer-input's override dropped, would otherwise hide in the oracle too), and per output the
    float32 result's distance from the float64 one (its slack: see SLACK)."""
    expected = _run_reference(proto, input_sets)
    wide = _run_reference(_as_float64(proto), input_sets, np.float64)
    slack = []
    for narrow_set, wide_set in zip(expected, wide):
        with np.errstate(all="ignore"):
            distance = [np.abs(n.astype(np.float64) - w) for n, w in zip(narrow_set, wide_set)]
        slack.append([np.where(np.isnan(d) & np.isnan(n), 0.0, np.nan_to_num(d, nan=np.inf))
                      for d, n in zip(distance, narrow_set)])
    return expected, slack


ORT_KERNELS = Tolerance(rtol=1e-3, atol=1e-4)
"""How far ONNX Runtime's kernels on the original model may be from the reference: ten times EXACT.
Its float32 Erf, say, is a few ulps off numpy's, and where 1 + erf(x) cancels (x < -3) that is 1e-4
of a GELU; its own wrong rewrites were off by 0.3 to 5 or put NaN elsewhere."""


def _within(got, want, slack, tolerance: Tolerance) -> bool:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape or not np.array_equal(np.isnan(got), np.isnan(want)):
        return False
    finite = ~np.isnan(want)
    with np.errstate(invalid="ignore"):
        error = np.where(got == want, 0.0, np.abs(got - want))[finite]
    allowed = tolerance.atol + tolerance.rtol * np.abs(want[finite]) + SLACK * slack[finite]
    return bool(np.all(error <= allowed))


def _differs(got_sets, want_sets, slack_sets, names, tolerance: Tolerance = EXACT) -> str | None:
    """Why the outputs ``got_sets`` (per input set) are not ``want_sets`` within ``tolerance`` plus
    their slack, or None."""
    for index, (got, want, slack) in enumerate(zip(got_sets, want_sets, slack_sets)):
        reason = compare_outputs(got, want, names, tolerance)
        if reason and not (len(got) == len(want) and all(_within(*t, tolerance) for t in zip(got, want, slack))):
            return f"input set {index}: {reason}"
    return None


def check_seed(seed: int, pipeline, on_onnxruntime: bool = True) -> str | None:
    """None when the pipeline is exact on the random graph of ``seed``, else what went wrong.

    The oracle is onnx.reference on the original model; ONNX Runtime (our backend) on the original
    model must agree with it up to its kernels' accuracy (ORT_KERNELS), and the optimized model, on
    the reference or on ONNX Runtime, must agree exactly (ONNX Runtime's run: with the reference, or
    with itself on the original model)."""
    proto, input_sets = random_model(seed)
    expected, slack = _original_outputs(proto, input_sets)
    names = [value.name for value in proto.graph.output]
    model = load_onnx(proto)
    reason = _differs([ReferenceExecutable(model)(inputs) for inputs in input_sets], expected, slack, names)
    if reason:
        return f"seed {seed}: the imported model differs from the original: {reason}"
    if on_onnxruntime:
        original_on_ort = [OrtExecutable(model)(inputs) for inputs in input_sets]
        reason = _differs(original_on_ort, expected, slack, names, ORT_KERNELS)
        if reason:
            return f"seed {seed}: onnxruntime on the original model differs from the reference: {reason}"
    model, records = PassManager(pipeline, instruments=[VerifyInstrument(input_sets, expected)]).run(model)
    for record in records:
        if record.reverted:
            return f"seed {seed}: pass {record.name} reverted: {record.reason}"
    reason = _differs([ReferenceExecutable(model)(inputs) for inputs in input_sets], expected, slack, names)
    if reason:
        return f"seed {seed}: final model differs: {reason}"
    if on_onnxruntime:
        final_on_ort = [OrtExecutable(model)(inputs) for inputs in input_sets]
        reason = _differs(final_on_ort, expected, slack, names)
        if reason and _differs(final_on_ort, original_on_ort, slack, names):
            return f"seed {seed}: final model on onnxruntime differs: {reason}"
    return None


def _check(seed: int, pipeline, on_onnxruntime: bool) -> str | None:
    try:
        return check_seed(seed, pipeline, on_onnxruntime)
    except Exception as exc:  # a crash is a finding too, and must not hide the other seeds'
        return f"seed {seed}: raised {type(exc).__name__}: {str(exc).strip()[:500]}"


def _run(pipeline_factory, seeds: range, label: str, on_onnxruntime: bool = True) -> None:
    failures = [f for f in (_check(seed, pipeline_factory(), on_onnxruntime) for seed in seeds) if f]
    print(f"\nfuzz {label}: {len(seeds)} graphs, {len(failures)} mismatches")
    assert not failures, "\n".join(failures[:20])


SHARDS = 4


@pytest.mark.parametrize("shard", range(SHARDS))
def test_default_pipeline_on_random_graphs(request, shard):
    _run(default_pipeline, range(shard, _count(request.config), SHARDS), f"default pipeline (shard {shard})")


@pytest.mark.parametrize("name", sorted(PASSES))
def test_each_pass_on_random_graphs(request, name):
    # one pass alone: the reference is the oracle (ONNX Runtime sees the default pipeline's graphs)
    seeds = range(10_000, 10_000 + max(20, _count(request.config) // 5))
    _run(lambda: [PASSES[name]], seeds, name, on_onnxruntime=False)


def test_generator_makes_valid_varied_graphs():
    ops, kinds, overridable = set(), set(), 0
    for seed in range(60):
        proto, inputs = random_model(seed)
        ops |= {n.op_type for n in proto.graph.node}
        initializers = {t.name for t in proto.graph.initializer}
        overridable += any(i.name in initializers for i in proto.graph.input)
        outputs = ReferenceExecutable(load_onnx(proto))(inputs[0])
        assert len(outputs) == len(proto.graph.output)
        assert all(o.shape[0] == 2 for o in outputs)  # the batch of the first input set
    assert {"Transpose", "Reshape", "Cast", "MatMul", "LayerNormalization", "Erf", "ReduceMean", "Gemm", "Pad",
            "Softmax", "Tanh"} <= ops
    assert overridable >= 5


def test_inputs_hold_constant_rows_large_values_and_signed_zeros():
    from tests.fuzz.graphs import input_values

    rng = np.random.default_rng(0)
    rows = input_values(rng, (3, 4, 5), "rows")
    assert (np.ptp(rows, axis=-1) == 0).any()
    assert np.abs(input_values(rng, (3, 4, 5), "large")).max() > 10
    zeros = input_values(rng, (3, 4, 5), "zeros")
    assert (zeros == 0).any() and np.signbit(zeros[zeros == 0]).any() and not np.signbit(zeros[zeros == 0]).all()
