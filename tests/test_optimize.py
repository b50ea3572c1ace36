"""optimize(): options are checked, both backends run, the report is filled in."""

from __future__ import annotations

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
    assert cm.backend in ("reference", "onnxruntime")
    assert "add_relu" in str(cm.report)


def test_unknown_backend():
    with pytest.raises(OptionError, match=r"backend 'tpu' is not available \(available: auto, reference, onnxruntime\)"):
        leangraph.optimize(add_relu_model(), backend="tpu")


def test_unknown_pass_name():
    with pytest.raises(OptionError, match=r"no pass named 'fast' \(registered: algebraic, constant_folding"):
        leangraph.optimize(add_relu_model(), passes="fast")


def test_unimplemented_options_are_refused_not_ignored(tmp_path):
    with pytest.raises(OptionError, match="cache_dir"):
        leangraph.optimize(add_relu_model(), cache_dir=str(tmp_path))
    with pytest.raises(OptionError, match="evaluate/max_drop"):
        leangraph.optimize(add_relu_model(), evaluate=lambda cm: 1.0, max_drop=0.1)


def test_bad_tolerance_type():
    with pytest.raises(OptionError, match="tolerance must be a leangraph.Tolerance"):
        leangraph.optimize(add_relu_model(), tolerance=1e-3)
