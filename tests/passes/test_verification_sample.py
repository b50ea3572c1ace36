"""passes.verification.verification_sample: which input sets every pass is verified on."""

from __future__ import annotations

import numpy as np

from leangraph.passes.verification import verification_sample


def _set(batch: int, seq: int, real: int):
    mask = np.zeros((batch, seq), np.int64)
    mask[:, :real] = 1
    return [np.ones((batch, seq), np.int64), mask]


def test_first_most_padded_and_smallest_sets():
    sets = [_set(4, 10, 10), _set(8, 30, 30), _set(2, 5, 5), _set(4, 12, 3), _set(4, 10, 9)]
    assert verification_sample(sets, 3) == [0, 2, 3]
    assert verification_sample(sets, 2) == [0, 3]
    assert verification_sample(sets, 10) == [0, 1, 2, 3, 4]
    assert verification_sample(sets[:2], 3) == [0, 1]


def test_float_only_sets_fill_up_in_order():
    sets = [[np.ones((n, 4), np.float32)] for n in (3, 1, 2, 5)]
    assert verification_sample(sets, 3) == [0, 1, 2]
