"""ONNX Runtime backend: runs a whole IR model in an InferenceSession.

`leangraph` ops are lowered to standard ONNX first (their decompositions), so ONNX Runtime runs any
graph the reference can. Later it serves as the fallback for pieces other backends cannot run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from leangraph.errors import ExecutionError
from leangraph.ir import clone_model, lower_to_onnx
from leangraph.ir.verify import model_name


def session_options(threads: int | None = None, spinning: bool = True) -> ort.SessionOptions:
    """``spinning=False`` for a piece that takes turns with other backends: ONNX Runtime's threads
    otherwise keep spinning after a run returns and take the cores from the next piece's kernels
    (measured: torch GEMMs in the TVM piece after an ORT prelude ran 2.5x slower)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class OrtExecutable:
    """An InferenceSession over the lowered model. ONNX Runtime's run() is thread-safe."""

    def __init__(self, model: ir.Model, threads: int | None = None, spinning: bool = True) -> None:
        self.name = model_name(model)
        lowered = lower_to_onnx(clone_model(model))
        self.input_names = [v.name for v in lowered.graph.inputs]
        self.output_names = [v.name for v in lowered.graph.outputs]
        try:
            self.session = ort.InferenceSession(
                ir.to_proto(lowered).SerializeToString(),
                sess_options=session_options(threads, spinning),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:
            raise ExecutionError(
                f"ONNX Runtime cannot load model '{self.name}': {str(exc).strip()[:2000]}",
                hint="use backend='reference', or report the op ONNX Runtime rejects",
            ) from exc

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(self.output_names, dict(zip(self.input_names, inputs)))
        except Exception as exc:
            raise ExecutionError(
                f"ONNX Runtime failed running model '{self.name}': {str(exc).strip()[:2000]}",
                hint="compare with backend='reference' to see whether the graph or the runtime is at fault",
            ) from exc


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def supports(self, node: ir.Node) -> bool:
        return True

    def compile(self, model: ir.Model, *, alone: bool = True) -> OrtExecutable:
        return OrtExecutable(model, self.threads, spinning=alone)


__all__ = ["OnnxRuntimeBackend", "OrtExecutable", "session_options"]
