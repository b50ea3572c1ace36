"""torch backend: runs a piece op by op with torch (eager, inference mode), one function per op
(ops.py). It takes the leangraph ops and the ONNX ops whose semantics map one to one onto torch;
everything else falls back to ONNX Runtime through the partitioner."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from leangraph.errors import ExecutionError
from leangraph.ir import attributes_of
from leangraph.ir.verify import model_name

_DTYPES = {ir.DataType.FLOAT, ir.DataType.INT64, ir.DataType.INT32, ir.DataType.BOOL}


class TorchExecutable:
    """The nodes in order, each a torch call; values by name. Thread-safe (no state per call)."""

    def __init__(self, model: ir.Model) -> None:
        import torch

        from leangraph.backends.torch.ops import OPS

        self.name = model_name(model)
        self.input_names = [v.name for v in model.graph.inputs]
        self.output_names = [v.name for v in model.graph.outputs]
        self.constants = {name: torch.from_numpy(np.array(value.const_value.numpy()))
                          for name, value in model.graph.initializers.items()}
        self._constant_storage = {t.untyped_storage().data_ptr() for t in self.constants.values()}
        self.steps = [(OPS[(node.domain, node.op_type)], [v.name if v is not None else None for v in node.inputs],
                       [v.name for v in node.outputs], attributes_of(node), node) for node in model.graph]

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        values = dict(self.constants)
        values.update((name, torch.from_numpy(np.asarray(x, order="C"))) for name, x in zip(self.input_names, inputs))
        with torch.inference_mode():
            for run, reads, writes, attrs, node in self.steps:
                try:
                    outputs = run([values[name] if name else None for name in reads], attrs)
                except Exception as exc:
                    raise ExecutionError(
                        f"torch failed running node '{node.name}' ({node.domain or 'ai.onnx'}::{node.op_type}) of "
                        f"model '{self.name}': {str(exc).strip()[:1000]}", hint="compare with backend='reference'",
                    ) from exc
                values.update(zip(writes, outputs))
        # an output that is (a view of) a weight or an input is copied: the caller may write to it
        shared = self._constant_storage | {values[name].untyped_storage().data_ptr() for name in self.input_names}
        return [values[name].numpy().copy() if values[name].untyped_storage().data_ptr() in shared
                else values[name].numpy() for name in self.output_names]


class TorchBackend:
    name = "torch"

    def supports(self, node: ir.Node) -> bool:
        from leangraph.backends.torch.ops import OPS

        return (node.domain, node.op_type) in OPS and all(
            v is None or v.dtype in _DTYPES for v in [*node.inputs, *node.outputs])

    def compile(self, model: ir.Model, *, alone: bool = True) -> TorchExecutable:
        return TorchExecutable(model)


__all__ = ["TorchBackend", "TorchExecutable"]
