"""leangraph: a graph-optimization compiler for neural networks.

    cm = leangraph.optimize(model, example_inputs)
    cm(*inputs)          # same outputs as model(*inputs)
    print(cm.report)     # what every pass did
"""

from leangraph.artifacts import load
from leangraph.errors import LeanGraphError
from leangraph.frontend import capture
from leangraph.optimize import optimize
from leangraph.passes import Tolerance
from leangraph.passes import PassRecord, Report
from leangraph.runtime import CompiledModel

__version__ = "0.1.0"

from leangraph import dynamo as _dynamo  # noqa: E402

_dynamo.register()  # torch.compile(model, backend="leangraph")

__all__ = [
    "CompiledModel",
    "LeanGraphError",
    "PassRecord",
    "Report",
    "Tolerance",
    "capture",
    "load",
    "optimize",
]
