"""What every backend provides: which nodes it can run, and a compiled callable for a model.

A compiled callable takes the graph inputs as numpy arrays in graph order and returns the graph
outputs as numpy arrays in graph order. Checking the inputs against the graph's signature is the
runtime's job, not the backend's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import onnx_ir as ir


class Executable(Protocol):
    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class Backend(Protocol):
    name: str

    def supports(self, node: ir.Node) -> bool:
        """Whether this backend can run ``node``."""

    def compile(self, model: ir.Model, *, alone: bool = True) -> Executable:
        """A callable running ``model``; the model is not modified. ``alone`` is False for a piece
        that takes turns with other backends' pieces: it must not keep threads busy between calls."""

