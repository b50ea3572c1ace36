"""Capture: models from torch or ONNX into the IR."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import onnx
import onnx_ir as ir

from leangraph.errors import CaptureError, OptionError
from leangraph.ir import clone_model
from leangraph.frontend.from_onnx import load_onnx


def capture(
    model: Any,
    example_inputs: Sequence[Any] | None = None,
    dynamic_shapes: Mapping[str, Mapping[int, str]] | None = None,
) -> ir.Model:
    """Capture ``model`` (torch.nn.Module, onnx.ModelProto, path of an .onnx file) into the IR.

    For torch modules ``example_inputs`` are the positional arguments of ``forward`` and
    ``dynamic_shapes`` names the dims that may vary. ONNX models keep the symbolic dims of the file.
    """
    if isinstance(model, (onnx.ModelProto, str, os.PathLike, bytes, ir.Model)) and dynamic_shapes is not None:
        raise OptionError(
            "dynamic_shapes applies to torch modules; an ONNX model keeps the dims its file declares",
            hint="leave dynamic_shapes out, or re-export the ONNX model with symbolic dims where sizes vary",
        )
    if isinstance(model, (onnx.ModelProto, str, os.PathLike, bytes)):
        return load_onnx(model)
    if isinstance(model, ir.Model):
        return clone_model(model)  # passes rewrite in place; the caller's model stays as it was
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module):
        from leangraph.frontend.from_torch import capture_torch

        if example_inputs is None:
            raise CaptureError(
                f"capturing torch module '{type(model).__name__}' needs example_inputs",
                hint="pass a tuple of example tensors: the positional arguments of forward()",
            )
        return capture_torch(model, example_inputs, dynamic_shapes)
    raise CaptureError(
        f"cannot capture an object of type {type(model).__module__}.{type(model).__name__}",
        hint="pass a torch.nn.Module, an onnx.ModelProto, or the path of an .onnx file",
    )


__all__ = ["capture", "load_onnx"]
