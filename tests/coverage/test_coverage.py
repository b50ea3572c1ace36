"""The coverage matrix as a regression test: each cell (architecture x attention implementation x
capture path, tests/coverage/matrix.py) is run and compared with its recorded result in
expected.json. A cell fails when it got worse: a fusion pass that fired fires less or not at all,
padding removal no longer applies, the output is no longer within 1e-4 of eager, or an error
appears. Improvements pass and are printed; record them with

    .venv/bin/python benchmarks/coverage_matrix.py --write --markdown docs/coverage.md
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.coverage.matrix import cell_id, cells, improvements, regressions, run_cell

EXPECTED = json.loads((Path(__file__).parent / "expected.json").read_text())["cells"]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "attention", "capture"), cells(), ids=[cell_id(*c) for c in cells()])
def test_cell(arch, attention, capture, tmp_path):
    name = cell_id(arch, attention, capture)
    got = run_cell(arch, attention, capture, workdir=str(tmp_path))
    if got["skipped"]:
        pytest.skip(got["skipped"])
    assert name in EXPECTED, f"{name} has no recorded result: run benchmarks/coverage_matrix.py --write"
    expected = EXPECTED[name]
    for note in improvements(expected, got):
        print(f"{name} improved: {note}")
    problems = regressions(expected, got)
    assert not problems, f"{name} regressed:\n  " + "\n  ".join(problems)


def test_every_cell_is_recorded():
    # a cell added to the matrix without a recorded result would never be compared
    assert sorted(EXPECTED) == sorted(cell_id(*c) for c in cells())


def test_regressions_and_improvements_are_told_apart():
    before = {
        "fired": ["fuse_attention:a", "remove_padding"],
        "counts": {"fuse_attention:a": 2, "remove_padding": 1},
        "padding_removed": True,
        "why_not": "",
        "max_diff": 1e-7,
        "error": "",
        "skipped": "",
        "padding_zero": None,
    }
    renamed = {
        **before,
        "fired": ["fuse_attention:b", "remove_padding"],
        "counts": {"fuse_attention:b": 2, "remove_padding": 1},
    }
    assert regressions(before, renamed) == []  # a rule renamed within its pass
    assert improvements(before, renamed)
    one_layer = {**before, "counts": {"fuse_attention:a": 1, "remove_padding": 1}}
    assert regressions(before, one_layer) == ["fuse_attention fired 2x before, 1x now"]
    unpadded = {
        **before,
        "padding_removed": False,
        "why_not": "skipped: x",
        "counts": {"fuse_attention:a": 2},
    }
    assert len(regressions(before, unpadded)) == 2
    assert regressions(before, {**before, "max_diff": 1e-3})
    assert regressions(before, {**before, "error": "CaptureError: x"})
    assert (
        regressions({**before, "max_diff": 1e-3}, {**before, "max_diff": 1e-2}) == []
    )  # was not exact before
    assert regressions(unpadded, before) == [] and "padding removal applies now" in improvements(
        unpadded, before
    )
