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
from leangraph.ir import DOMAIN, TARGET_OPSET, clone_model, lower_to_onnx
from leangraph.ir.ops import static_quant_linear
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


DISABLED_FUSIONS = ("SkipLayerNormFusion",)
"""ONNX Runtime graph fusions left off in our sessions. SkipLayerNormalization (residual Add +
LayerNormalization in one kernel) is slower on CPU than the two ops it replaces (ONNX Runtime 1.31,
[1, 412, 384]: 575 vs 130 us on 2 threads, 1040 vs 180 us on 1); MiniLM with padded outputs,
960 STS-B sentences: 3.29 vs 3.48 s."""

CONTRIB_DOMAIN = "com.microsoft"

DECOMPOSITIONS = {"StaticQuantLinear": static_quant_linear.decompose_for_onnxruntime}
"""Ops lowered to ONNX Runtime's contrib kernels instead of their standard decompositions. The
standard form of leangraph::StaticQuantLinear (QDQ: DequantizeLinear + MatMul + bias Add) is fused
by ONNX Runtime only partly: MatMul + Add -> Gemm runs before its QDQ rewrites and leaves the weights
dequantized on every call and an fp32 Gemm (MiniLM, padding removed, 18 static int8 layers, 3000
STS-B sentences: 4.30 s vs 1.71 s with that fusion off), and without it the bias Add stays outside
the int8 kernel."""


def lower_for_onnxruntime(model: ir.Model) -> ir.Model:
    """``model`` (changed in place) with the leangraph ops lowered, ONNX Runtime's own way where it has one."""
    lowered = lower_to_onnx(model, DECOMPOSITIONS)
    if any(node.domain == CONTRIB_DOMAIN for node in lowered.graph):
        lowered.opset_imports[CONTRIB_DOMAIN] = 1
    return lowered


def inference_session(model: bytes, options: ort.SessionOptions) -> ort.InferenceSession:
    """A CPU session over a serialized ONNX model, without DISABLED_FUSIONS."""
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_FUSIONS))


class OrtExecutable:
    """An InferenceSession over the lowered model. ONNX Runtime's run() is thread-safe."""

    def __init__(self, model: ir.Model, threads: int | None = None, spinning: bool = True) -> None:
        self.name = model_name(model)
        lowered = lower_for_onnxruntime(clone_model(model))
        self.input_names = [v.name for v in lowered.graph.inputs]
        self.output_names = [v.name for v in lowered.graph.outputs]
        try:
            self.session = inference_session(ir.to_proto(lowered).SerializeToString(), session_options(threads, spinning))
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


def linear_model(weight: np.ndarray, scale: np.ndarray | None = None, bias: np.ndarray | None = None, *,
                 activation_bits: int = 8, activation_range: tuple[float, float] | None = None) -> bytes:
    """A one-layer ONNX model ``y = x @ W (+ bias)`` over x [rows, K]: MatMul for a float weight;
    for an int8 weight with its per-channel ``scale``, leangraph::DynamicQuantLinear lowered
    (DynamicQuantizeLinear + MatMulInteger, which ONNX Runtime fuses), or with ``activation_range``
    (the calibrated [low, high] of x) leangraph::StaticQuantLinear lowered (QuantizeLinear +
    MatMulInteger, fused into MatMulIntegerToFloat)."""
    k, n = weight.shape
    x = ir.val("x", ir.DataType.FLOAT, ir.Shape(["rows", k]))
    arrays = {"w": weight, "scale": scale, "bias": bias}
    if scale is not None and activation_range is not None:
        a_scale, a_zero = static_quant_linear.calibrated_scale(*activation_range)
        arrays = {"a_scale": np.array(a_scale), "a_zero": np.array(a_zero), **arrays}
    constants = []
    for name, array in arrays.items():
        if array is not None:
            constants.append(ir.Value(name=name, shape=ir.Shape(array.shape), const_value=ir.tensor(array),
                                      type=ir.TensorType(ir.DataType.from_numpy(array.dtype))))
    if scale is None:
        node = ir.node("MatMulBiasAct", [x, *constants], {"activation": "none"}, domain=DOMAIN)
    elif activation_range is not None:
        node = ir.node("StaticQuantLinear", [x, *constants], {"activation": "none"}, domain=DOMAIN)
    else:
        node = ir.node("DynamicQuantLinear", [x, *constants], {"activation": "none", "activation_bits": activation_bits},
                       domain=DOMAIN)
    node.outputs[0].name = "y"
    node.outputs[0].dtype, node.outputs[0].shape = ir.DataType.FLOAT, ir.Shape(["rows", n])
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=constants,
                     opset_imports={"": TARGET_OPSET, DOMAIN: 1}, name="linear")
    return ir.to_proto(lower_for_onnxruntime(ir.Model(graph, ir_version=10))).SerializeToString()


__all__ = ["linear_model", "OnnxRuntimeBackend", "OrtExecutable", "session_options"]
