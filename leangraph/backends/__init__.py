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
    if name == "torch":
        from leangraph.backends.torch import TorchBackend

        return TorchBackend()
    raise OptionError(
        f"backend '{name}' is not available (available: {', '.join(AVAILABLE)})",
        hint="pass one of the available backends",
    )


AVAILABLE = ("reference", "onnxruntime", "tvm", "torch")

FALLBACKS = ("onnxruntime", "reference")
"""Backends that run every ONNX op; any other backend gets onnxruntime behind it for what it cannot run."""


def chain_for(name: str) -> list[Backend]:
    """The backend and, behind it, the fallback for what it cannot run. ``auto``: TVM where it is
    installed (pieces are then moved to ONNX Runtime by measurement, cost_model/backend_choice.py)."""
    if name == "auto":
        from leangraph.backends import tvm

        return [get_backend("tvm"), get_backend("onnxruntime")] if tvm.available() else [get_backend("onnxruntime")]
    chain = [get_backend(name)]
    if name not in FALLBACKS:
        chain.append(get_backend(FALLBACKS[0]))
    return chain


__all__ = ["AVAILABLE", "FALLBACKS", "Backend", "Executable", "chain_for", "get_backend"]
