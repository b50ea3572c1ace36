"""The token-reduction knobs (passes/token_merging/knobs.py) in the budgeted search
(passes/quantization/mixed_precision.py): settings measured alone, offered where they save time,
chosen within the budget; with a fake timer, so that what is chosen does not depend on this
machine's noise."""

from __future__ import annotations

import numpy as np

from leangraph.backends import get_backend
from leangraph.backends.partition import compile_partitioned
from leangraph.backends.reference import run_reference
from tests.passes.test_merge_tokens import _bert_inputs, _cosine, bert_encoder, bert_graph  # noqa: F401 - fixtures


def _search(graph, inputs, evaluate=None, max_drop=0.0, saving_per_merge=1.0):
    """The budgeted search over the merge knobs alone (no int8 kernel faster), with a fake timer:
    each MergeTokens node in a candidate saves ``saving_per_merge`` seconds."""
    from leangraph.cost_model.linear_kernels import BACKEND_KERNELS
    from leangraph.passes.quantization.mixed_precision import choose_precisions
    from leangraph.passes.token_merging.knobs import knob_space

    kernels = BACKEND_KERNELS["onnxruntime"]

    def fake_saving(reference, candidate, sets):
        return saving_per_merge * sum(n.op_type in ("MergeTokens", "PruneTokens") for n in candidate.graph.graph), 10.0

    slower = lambda weight: {kernels["fp32"]: 1e-3, **{k: 2e-3 for k in kernels["reduced"]}}  # noqa: E731
    baseline = evaluate(_compiled(graph)) if evaluate else None
    return choose_precisions(graph, inputs, _compiled, slower, kernels, evaluate=evaluate, max_drop=max_drop,
                             baseline=baseline, knob_spaces=[knob_space(graph)], time_saved=fake_saving)


def test_budgeted_search_sets_merge_ratios_that_save_time_within_the_budget(bert_graph):
    inputs = [[x.numpy() for x in _bert_inputs(4, seq)] for seq in (24, 20)]
    exact = [run_reference(bert_graph, i)[0] for i in inputs]

    def evaluate(candidate):  # mean cosine to the exact outputs, x100
        return 100 * float(np.mean([_cosine(candidate.run_flat(i)[0], e).mean() for i, e in zip(inputs, exact)]))

    model, _, notes, knobs = _search(bert_graph, inputs, evaluate, max_drop=50.0)
    assert len(knobs) == 2 and all(len(k.sensitivities) == 5 for k in knobs)  # 4 merges, 1 prune
    assert any(k.chosen is not None for k in knobs), notes
    assert any(n.op_type in ("MergeTokens", "PruneTokens") for n in model.graph)
    assert 100 - evaluate(_compiled(model)) <= 25.0  # within the budget less the search's margin
    assert "tokens reduced after" in knobs[0].row() and "ms saved" in knobs[0].row()

    model, _, notes, knobs = _search(bert_graph, inputs, evaluate, max_drop=1e-6)  # no loss allowed
    assert all(k.chosen is None for k in knobs)
    assert not any(n.op_type in ("MergeTokens", "PruneTokens") for n in model.graph)


def test_budgeted_search_leaves_merging_off_where_it_is_slower(bert_graph):
    inputs = [[x.numpy() for x in _bert_inputs(4, 24)]]
    model, _, notes, knobs = _search(bert_graph, inputs, saving_per_merge=-1.0)
    assert all(k.chosen is None for k in knobs)
    assert "no knob setting saved time" in notes[-1]


def _compiled(model):
    from leangraph.runtime import CompiledModel

    return CompiledModel(model, compile_partitioned(model, [get_backend("onnxruntime")])[0], backend="onnxruntime",
                         report=None)
