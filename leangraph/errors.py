"""Every user-facing failure of leangraph raises a subclass of :class:`LeanGraphError`.

Messages name the model, node and op concerned and say what to do; the CLIs print them without a
traceback and exit non-zero. Each subclass is one kind of problem so callers can catch narrowly.
"""

from __future__ import annotations


class LeanGraphError(Exception):
    """Base class of every error leangraph raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}\n  What to do: {hint}" if hint else message)


class ModelLoadError(LeanGraphError):
    """The model file or bytes could not be read: missing, not ONNX, truncated, unreadable."""

    exit_code = 2


class InvalidGraphError(LeanGraphError):
    """The graph is structurally wrong: a cycle, a value nobody produces, a broken reference."""

    exit_code = 3


class UnsupportedOpError(LeanGraphError):
    """An op (or its domain) is unknown to ONNX, to the leangraph domain and to the model's functions."""

    exit_code = 3


class CaptureError(LeanGraphError):
    """A torch.nn.Module could not be captured into the IR."""

    exit_code = 4


class InputMismatchError(LeanGraphError):
    """A compiled model was called with the wrong number, shape or dtype of inputs."""

    exit_code = 5


class ExecutionError(LeanGraphError):
    """A backend failed while running a graph it had accepted."""

    exit_code = 6


class VerificationError(LeanGraphError):
    """A rewrite leangraph cannot undo (one that changes the graph's signature, as KV-cache
    introduction does) computes something else than the graph it came from."""

    exit_code = 8


class OptionError(LeanGraphError):
    """An argument of optimize() or a CLI flag has a value leangraph cannot use."""

    exit_code = 2


def describe_node(node, model_name: str | None = None) -> str:
    """`node 'name' (domain::Op) in model 'm'`, for messages. Works on onnx_ir nodes and NodeProtos."""
    domain = getattr(node, "domain", "") or "ai.onnx"
    where = f" in model '{model_name}'" if model_name else ""
    module = ""
    meta = getattr(node, "metadata_props", None)
    if meta is not None and hasattr(meta, "get"):
        path = meta.get("leangraph.module_path")
        if path:
            module = f" from module '{path}'"
    return f"node '{node.name}' ({domain}::{node.op_type}){module}{where}"


class CostModelError(LeanGraphError):
    """A cost-model file that cannot be read, or too few measurements to train one on."""

    exit_code = 2


class ArtifactError(LeanGraphError):
    """A saved artifact is missing, incomplete, from another format version, or has been altered."""

    exit_code = 7
