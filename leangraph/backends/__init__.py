"""Backends by name. Each one says which nodes it supports and compiles a model into a callable."""

from __future__ import annotations

from leangraph.backends.base import Backend, Executable
from leangraph.errors import OptionError


def get_backend(name: str) -> Backend:
    if name == "reference":
        from leangraph.backends.reference import ReferenceBackend

        return ReferenceBackend()
    if name == "onnxruntime":
        from leangraph.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if name == "tvm":
        from leangraph.backends import tvm

        if not tvm.available():
            raise OptionError("backend 'tvm' needs apache-tvm, which is not installed",
                              hint="pip install apache-tvm==0.27.0.post1 (make installs it)")
        return tvm.TVMBackend()
    raise OptionError(
        f"backend '{name}' is not available (available: {', '.join(AVAILABLE)})",
        hint="pass one of the available backends",
    )


AVAILABLE = ("reference", "onnxruntime", "tvm")

__all__ = ["AVAILABLE", "Backend", "Executable", "get_backend"]
