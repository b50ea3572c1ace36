"""What every backend provides: which nodes it can run, and a compiled callable for a model.

A compiled callable takes the graph inputs as numpy arrays in graph order and returns the graph
outputs as numpy arrays in graph order. Checking the inputs against the graph's signature is the
runtime's job, not the backend's.
"""

from __future__ import annotations

import os
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



class LibraryBackend(Backend, Protocol):
    """A backend whose compiled pieces are native libraries (TVM). Its executables also have
    ``export_library(path)``; artifacts keep those files and load them instead of compiling again."""

    library_suffix: str

    def library_target(self) -> str:
        """What the libraries are built for (the CPU); a library built for another is rebuilt, not loaded."""

    def load_library(self, model: ir.Model, path: str | os.PathLike, *, alone: bool = True) -> Executable:
        """The executable of ``model`` from the library its executable exported to ``path``."""
