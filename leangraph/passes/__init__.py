"""Graph rewrites and the machinery that runs them: see manager.py, registry.py, and one module
per pass under cleanup/ and fusion/."""

from leangraph.passes.base import Pass, PassResult, RulePass, graph_pass
from leangraph.passes.manager import FixedPoint, PassManager
from leangraph.passes.registry import PASSES, default_pipeline, get_pass, register, resolve
from leangraph.passes.report import PassRecord, Report
from leangraph.passes.verification import EXACT, Tolerance, compare_outputs

__all__ = [
    "EXACT",
    "PASSES",
    "FixedPoint",
    "Pass",
    "PassManager",
    "PassRecord",
    "PassResult",
    "Report",
    "RulePass",
    "Tolerance",
    "compare_outputs",
    "default_pipeline",
    "get_pass",
    "graph_pass",
    "register",
    "resolve",
]
