"""Constant folding: evaluates nodes whose inputs are all constant (weights, shape arithmetic on
static dims) and replaces them by initializers, including shape computations that the symbolic
shapes make static (onnxscript's folder), and lifts Constant nodes into initializers. Exact: the
folded values are what the nodes computed.

A graph input with an initializer (an overridable default, ONNX IR version >= 4) is not a constant:
onnxscript's folder skips nodes reading one, but its shape inference and its rewrites of Reshape,
Expand, Gather and Dropout read any value's initializer, so the defaults are set aside while it runs.

Shape folding trusts the symbolic dims recorded in the graph; they come from torch.export or ONNX
shape inference, and verification runs the result on real inputs.
"""

from __future__ import annotations

import contextlib
import logging

import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxscript.optimizer

from leangraph.passes.base import graph_pass


_FOLDER_LOG = logging.getLogger("onnxscript.optimizer._constant_folding")
_LOG = logging.getLogger(__name__)


class _UnfoldedToDebug(logging.Filter):
    """The folder warns for every node its evaluator rejects (e.g. BERT's token-type GatherElements:
    "Evaluation failed: cannot reshape array of size 1 into shape (1,5)"); such a node just stays in
    the graph and runs, so the warning is noise on the user's terminal: kept at debug level, ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.getMessage().startswith("Evaluation failed"):
            _LOG.debug("constant_folding: node left unfolded: %s", record.getMessage())
            return False
        return True


@contextlib.contextmanager
def _quiet_folder():
    quiet = _UnfoldedToDebug()
    _FOLDER_LOG.addFilter(quiet)
    try:
        yield
    finally:
        _FOLDER_LOG.removeFilter(quiet)


@contextlib.contextmanager
def defaults_hidden(model: ir.Model):
    """While inside: the graph inputs that have an initializer (their default, which a caller may
    override) carry no const_value, so that code reading const_value takes them for what they are,
    runtime values."""
    hidden = {value: value.const_value for value in model.graph.inputs if value.const_value is not None}
    for value in hidden:
        value.const_value = None
    try:
        yield
    finally:
        for value, tensor in hidden.items():
            value.const_value = tensor


@graph_pass("constant_folding")
def constant_folding(model: ir.Model) -> bool:
    """Fold constant subgraphs and static shape arithmetic into initializers."""
    with _quiet_folder(), defaults_hidden(model):
        result = onnxscript.optimizer.fold_constants(model)
    if result.modified:
        onnxscript.optimizer.remove_unused_nodes(model)
    lifted = common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    return bool(result.modified or lifted.modified)
