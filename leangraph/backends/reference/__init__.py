"""The reference interpreter: runs any IR graph on numpy inputs.

Standard ops run on ONNX's reference evaluator (``onnx.reference``), `leangraph` ops on their numpy
reference implementations. Slow, simple and independent of every optimizing backend: it is the
oracle every verification compares against.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from leangraph.backends.reference.kernels import OVERRIDES
from leangraph.errors import ExecutionError
from leangraph.ir import DOMAIN, OpDef, all_ops
from leangraph.ir.verify import ONNXRUNTIME_DOMAIN, model_name


def _oprun_class(opdef: OpDef) -> type[OpRun]:
    """An onnx.reference kernel running ``opdef``'s numpy reference implementation."""

    def _run(self, *inputs, **attrs):
        values = dict(opdef.attributes)
        values.update({k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()})
        return tuple(opdef.reference(*inputs, **values))

    # op_schema=None: without it onnx.reference looks the class name up among ONNX's own schemas
    # (our Attention would pick up ONNX Attention-23's attributes).
    return type(opdef.name, (OpRun,), {"op_domain": DOMAIN, "op_schema": None, "_run": _run})


LEANGRAPH_KERNELS = [_oprun_class(op) for op in all_ops()]


class ReferenceExecutable:
    """A model prepared for the reference evaluator. Safe to call from several threads."""

    def __init__(self, model: ir.Model) -> None:
        self.name = model_name(model)
        self.input_names = [v.name for v in model.graph.inputs]
        self.output_names = [v.name for v in model.graph.outputs]
        try:
            self._evaluator = ReferenceEvaluator(ir.to_proto(model), new_ops=[*OVERRIDES, *LEANGRAPH_KERNELS])
        except NotImplementedError as exc:  # an op onnx.reference has no kernel for (ONNX Runtime's contrib ops)
            raise ExecutionError(f"the reference interpreter cannot run model '{self.name}': {str(exc).strip()[:500]}",
                                 hint="run it on backend='onnxruntime'") from exc
        self._lock = threading.Lock()

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feeds = dict(zip(self.input_names, inputs))
        try:
            # IEEE results are the ONNX semantics (log(0) = -inf in T5's position buckets, a softmax
            # row with every key masked is NaN): numpy's warnings about them are noise to the user.
            with self._lock, np.errstate(all="ignore"):  # onnx.reference keeps per-run state on its kernels
                outputs = self._evaluator.run(None, feeds)
        except Exception as exc:
            raise ExecutionError(
                f"the reference interpreter failed on model '{self.name}': {str(exc).strip()[:2000]}",
                hint="the graph computes something ill-defined on these inputs; check the node named above",
            ) from exc
        return [o if isinstance(o, list) or o is None else np.asarray(o) for o in outputs]  # sequences, optionals


class ReferenceBackend:
    name = "reference"

    def supports(self, node: ir.Node) -> bool:
        return node.domain != ONNXRUNTIME_DOMAIN

    def compile(self, model: ir.Model, *, alone: bool = True) -> ReferenceExecutable:
        return ReferenceExecutable(model)


def run_reference(model: ir.Model, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` once on ``inputs`` (graph order) with the reference interpreter."""
    return ReferenceExecutable(model)(inputs)


__all__ = ["LEANGRAPH_KERNELS", "ReferenceBackend", "ReferenceExecutable", "run_reference"]
