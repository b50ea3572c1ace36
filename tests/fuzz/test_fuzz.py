"""Differential fuzzing: every pass, and the whole default pipeline, on random valid graphs must
give the reference interpreter's outputs on two batch sizes. A pass that the manager had to revert
is a bug found. `make fuzz N=10000` runs more graphs."""

from __future__ import annotations

import pytest

from leangraph.backends.reference import ReferenceExecutable
from leangraph.frontend import load_onnx
from leangraph.passes import PASSES, PassManager, default_pipeline
from leangraph.passes.manager import VerifyInstrument
from leangraph.passes.verification import EXACT, compare_outputs
from tests.fuzz.graphs import random_model

CI_COUNT = 150


def _count(config) -> int:
    return config.getoption("--fuzz-count") or CI_COUNT


def check_seed(seed: int, pipeline) -> str | None:
    """None when the pipeline is exact on the random graph of ``seed``, else what went wrong."""
    proto, input_sets = random_model(seed)
    model = load_onnx(proto)
    oracle = ReferenceExecutable(model)
    expected = [oracle(inputs) for inputs in input_sets]
    model, records = PassManager(pipeline, instruments=[VerifyInstrument(input_sets, expected)]).run(model)
    for record in records:
        if record.reverted:
            return f"seed {seed}: pass {record.name} reverted: {record.reason}"
    final = ReferenceExecutable(model)
    for inputs, want in zip(input_sets, expected):
        reason = compare_outputs(final(inputs), want, final.output_names, EXACT)
        if reason:
            return f"seed {seed}: final model differs: {reason}"
    return None


def _run(pipeline_factory, seeds: range, label: str) -> None:
    failures = [f for f in (check_seed(seed, pipeline_factory()) for seed in seeds) if f]
    print(f"\nfuzz {label}: {len(seeds)} graphs, {len(failures)} mismatches")
    assert not failures, "\n".join(failures[:20])


SHARDS = 4


@pytest.mark.parametrize("shard", range(SHARDS))
def test_default_pipeline_on_random_graphs(request, shard):
    _run(default_pipeline, range(shard, _count(request.config), SHARDS), f"default pipeline (shard {shard})")


@pytest.mark.parametrize("name", sorted(PASSES))
def test_each_pass_on_random_graphs(request, name):
    _run(lambda: [PASSES[name]], range(max(20, _count(request.config) // 5)), name)


def test_generator_makes_valid_varied_graphs():
    ops = set()
    for seed in range(40):
        proto, inputs = random_model(seed)
        ops |= {n.op_type for n in proto.graph.node}
        outputs = ReferenceExecutable(load_onnx(proto))(inputs[0])
        assert len(outputs) == len(proto.graph.output)
        assert all(o.shape[0] == 2 for o in outputs)  # the batch of the first input set
    assert {"Transpose", "Reshape", "Cast", "MatMul", "LayerNormalization", "Erf", "ReduceMean"} <= ops
