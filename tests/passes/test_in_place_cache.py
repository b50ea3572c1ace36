"""cache_in_place (passes/kv_reuse/in_place_cache.py): decode steps append each new key and value
into preallocated buffers shared by the past inputs and present outputs (ONNX Runtime's
GroupQueryAttention), with per-row lengths; the logits equal the Concat step graph's."""

from __future__ import annotations

import numpy as np
import pytest

import leangraph
from leangraph.passes.kv_reuse.in_place_cache import cache_in_place
from leangraph.runtime.generation import _InPlaceBatch, _Request
from tests.runtime.test_generation import causal_lm


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_decode_appends_in_place_at_each_rows_own_length(name):
    gen = leangraph.optimize(causal_lm(name), task="text-generation")
    assert gen._in_place is not None
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, (2, 9))
    members = []
    for row, cached in ((0, 6), (1, 2)):
        request = _Request(row, [int(t) for t in ids[row, :cached]], 4, None)
        _, request.kv = gen._run_step(ids[row:row + 1, :cached], np.ones((1, cached), np.int64), gen._empty_kv(1))
        request.tokens = list(request.prompt)
        members.append(request)
    concat_kv = [r.kv for r in members]
    batch = _InPlaceBatch.of(members, gen.layout.seq_axis, gen._in_place[2], gen._dtype)
    buffer = batch.kv[0][0]
    assert buffer.shape[2] == 6 + 4  # the longest member's cached positions and its new tokens
    for step in range(2):
        positions = [6 + step, 2 + step]
        tokens = np.asarray([[ids[row, p]] for row, p in enumerate(positions)], np.int64)
        got = gen._step_in_place(batch, tokens)
        for row, end in enumerate(positions):  # the Concat step graph on the same row alone
            expected, concat_kv[row] = gen._run_step(tokens[row:row + 1], np.ones((1, end + 1), np.int64),
                                                     concat_kv[row])
            np.testing.assert_allclose(got[row], expected[0], rtol=1e-4, atol=1e-5)
    assert batch.kv[0][0] is buffer and batch.lengths == [8, 4]
    assert not buffer[1, :, 4:].any() and buffer[1, :, 3].any()  # row 1 grew at its own length only
    np.testing.assert_allclose(batch.rows(1)[0][0], concat_kv[1][0][0], rtol=1e-5, atol=1e-6)


def test_a_shared_prefix_step_graph_is_refused_with_the_reason():
    import onnx_ir as ir

    gen = leangraph.optimize(causal_lm("gpt2"), task="text-generation")
    _, shared_layout, _, _ = gen._shared
    empty = ir.Model(ir.Graph([], [], nodes=[], opset_imports={"": 20}), ir_version=10)
    found = cache_in_place(empty, shared_layout)
    assert isinstance(found, str) and "shared prefix" in found
