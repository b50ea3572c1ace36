"""ONNX Runtime backend: runs a whole IR model in an InferenceSession.

`leangraph` ops are lowered to standard ONNX first (their decompositions), so ONNX Runtime runs any
graph the reference can. Later it serves as the fallback for pieces other backends cannot run.

Sessions run ONNX Runtime's graph optimizations, except those that are slower on CPU or not exact on
the graphs leangraph hands over (DISABLED_FUSIONS, PAD_AXES_BREAK, OVERRIDABLE_BREAK), and fall back
to none where the optimized session fails (OrtExecutable).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from leangraph.errors import ExecutionError
from leangraph.ir import DOMAIN, TARGET_OPSET, clone_model, lower_to_onnx
from leangraph.ir.ops import static_quant_linear
from leangraph.ir.verify import model_name
from leangraph.ir.versions import newest_ir_version


def session_options(threads: int | None = None, spinning: bool = True) -> ort.SessionOptions:
    """``spinning=False`` for a piece that takes turns with other backends: ONNX Runtime's threads
    otherwise keep spinning after a run returns and take the cores from the next piece's kernels
    (measured: torch GEMMs in the TVM piece after an ORT prelude ran 2.5x slower)."""
    options = ort.SessionOptions()
    # Fatal only: every error also comes back as the exception we turn into a leangraph error (or
    # recover from, OrtExecutable), and ONNX Runtime's own copy on stderr would only repeat it.
    options.log_severity_level = 4
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


DISABLED_FUSIONS = ("SkipLayerNormFusion", "LayerNormFusionL1", "LayerNormFusionL2")
"""ONNX Runtime graph fusions left off in our sessions.

SkipLayerNormalization (residual Add + LayerNormalization in one kernel) is slower on CPU than the
two ops it replaces (ONNX Runtime 1.31, [1, 412, 384]: 575 vs 130 us on 2 threads, 1040 vs 180 us
on 1); MiniLM with padded outputs, 960 STS-B sentences: 3.29 vs 3.48 s.

LayerNormFusion (both levels: a decomposed layer norm -> LayerNormalization) fuses what is no layer
norm: ``mean - x`` as if it were ``x - mean`` (every output negated: max error 5.2 on a [2, 5, 8]
test), ``Pow(x - mean, 2.001)`` as a square, and through Casts into graphs ONNX Runtime then
refuses to load (LayerNormalization bound to double and float; a node reading a value the fusion
removed). leangraph's fuse_layer_norm has already turned every real layer norm into
leangraph::LayerNorm, lowered to LayerNormalization itself, so nothing is lost: MiniLM after the
default passes gives the same optimized graph, node for node, with it off (320 STS-B sentences, 2
threads, 7 interleaved rounds: 2.195 s with it on, 2.141 s off, noise)."""

PAD_AXES_BREAK = ("TransposeOptimizer", "TransposeOptimizer_CPUExecutionProvider")
"""ONNX Runtime's transpose optimizers (the level-1 one and the CPU provider's layout one) push a
Transpose through a Pad that has an ``axes`` input (opset 18) as if its pads covered every axis: the
session then fails at run time ("Gather: indices element out of data bounds"), whether the axes are
negative or not. Left off in sessions of graphs that hold such a Pad, only: elsewhere they cancel
and merge Transposes."""


OVERRIDABLE_BREAK = ("SimplifiedLayerNormFusion",)
"""ONNX Runtime's RMS-norm fusion (-> SimplifiedLayerNormalization) copies the epsilon out of an
initializer even when that initializer is also a graph input, whose value the caller may override
(error 12.3 on a [2, 5, 8] test with the epsilon passed as 5.0). Left off in sessions of graphs with
such inputs only: it is the fusion that turns leangraph::RMSNorm's decomposition into one kernel."""


def disabled_optimizers(model: ir.Model) -> list[str]:
    """The ONNX Runtime optimizers to leave off for ``model``: DISABLED_FUSIONS, PAD_AXES_BREAK when a
    Pad (in any subgraph) has axes, OVERRIDABLE_BREAK when an initializer is also a graph input."""
    disabled = list(DISABLED_FUSIONS)
    nodes = ir.traversal.RecursiveGraphIterator(model.graph)
    pads_with_axes = any(node.op_type == "Pad" and node.domain in ("", "ai.onnx") and len(node.inputs) > 3
                         and node.inputs[3] is not None for node in nodes)
    if pads_with_axes:
        disabled += PAD_AXES_BREAK
    if any(value.is_initializer() for value in model.graph.inputs):
        disabled += OVERRIDABLE_BREAK
    return disabled


CONTRIB_DOMAIN = "com.microsoft"

DECOMPOSITIONS = {"StaticQuantLinear": static_quant_linear.decompose_for_onnxruntime}
"""Ops lowered to ONNX Runtime's contrib kernels instead of their standard decompositions. The
standard form of leangraph::StaticQuantLinear (QDQ: DequantizeLinear + MatMul + bias Add) is fused
by ONNX Runtime only partly: MatMul + Add -> Gemm runs before its QDQ rewrites and leaves the weights
dequantized on every call and an fp32 Gemm (MiniLM, padding removed, 18 static int8 layers, 3000
STS-B sentences: 4.30 s vs 1.71 s with that fusion off), and without it the bias Add stays outside
the int8 kernel."""


def lower_for_onnxruntime(model: ir.Model) -> ir.Model:
    """``model`` (changed in place) with the leangraph ops lowered, ONNX Runtime's own way where it
    has one, at an IR version it reads (the installed onnx writes newer ones than it takes)."""
    lowered = lower_to_onnx(model, DECOMPOSITIONS)
    if any(node.domain == CONTRIB_DOMAIN for node in lowered.graph):
        lowered.opset_imports[CONTRIB_DOMAIN] = 1
    lowered.ir_version = min(lowered.ir_version or newest_ir_version(), newest_ir_version())
    return lowered




def inference_session(model: bytes, options: ort.SessionOptions,
                      disabled: Sequence[str] = DISABLED_FUSIONS) -> ort.InferenceSession:
    """A CPU session over a serialized ONNX model, without the ``disabled`` optimizers."""
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled))


def _unoptimized(options: ort.SessionOptions) -> ort.SessionOptions:
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def _reason(exc: Exception) -> str:
    return str(exc).strip()[:2000]


class OrtExecutable:
    """An InferenceSession over the lowered model. ONNX Runtime's run() is thread-safe.

    ONNX Runtime's graph optimizations have broken valid graphs, at load (an invalid rewritten
    graph) and at run time (an out-of-bounds index in a rewritten node), in ways not all known ahead:
    a session that fails either way is opened again without them, and that one is used from then on
    when it works (``unoptimized`` says why). Only a failure of the unoptimized session is an error."""

    def __init__(self, model: ir.Model, threads: int | None = None, spinning: bool = True) -> None:
        self.name = model_name(model)
        self._lowered = lower_for_onnxruntime(clone_model(model))
        self.input_names = [v.name for v in self._lowered.graph.inputs]
        self.output_names = [v.name for v in self._lowered.graph.outputs]
        self._options = (threads, spinning)
        self._fallback: ort.InferenceSession | None = None
        self._lock = threading.Lock()
        self.unoptimized: str | None = None
        """Why the session runs without ONNX Runtime's graph optimizations, or None."""
        try:
            self.session = inference_session(self._serialized(), session_options(threads, spinning),
                                             disabled_optimizers(self._lowered))
        except Exception as exc:
            self.session = self._unoptimized_session()
            self.unoptimized = f"loading with them failed: {_reason(exc)}"

    def _serialized(self) -> bytes:
        return ir.to_proto(self._lowered).SerializeToString()

    def _unoptimized_session(self) -> ort.InferenceSession:
        with self._lock:
            if self._fallback is None:
                try:
                    options = _unoptimized(session_options(*self._options))
                    self._fallback = inference_session(self._serialized(), options, ())
                except Exception as exc:
                    raise ExecutionError(
                        f"ONNX Runtime cannot load model '{self.name}': {_reason(exc)}",
                        hint="use backend='reference', or report the op ONNX Runtime rejects",
                    ) from exc
            return self._fallback

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        # ORT refuses numpy scalars; sequence inputs are lists, empty optionals None
        feeds = {name: x if isinstance(x, list) or x is None else np.asarray(x) for name, x in zip(self.input_names, inputs)}
        try:
            return self.session.run(self.output_names, feeds)
        except Exception as exc:
            failure = exc
        if self.unoptimized is None:
            # The graph as ONNX Runtime rewrote it may be what fails: run the graph as it is. When
            # that fails too, the inputs (or the graph) are at fault, and the optimized session stays.
            try:
                outputs = self._unoptimized_session().run(self.output_names, feeds)
            except Exception:
                pass
            else:
                self.unoptimized = f"running with them failed: {_reason(failure)}"
                self.session = self._fallback
                return outputs
        raise ExecutionError(
            f"ONNX Runtime failed running model '{self.name}': {_reason(failure)}",
            hint="compare with backend='reference' to see whether the graph or the runtime is at fault",
        ) from failure

    def run_in_place(self, feeds: dict[str, np.ndarray], shared: dict[str, str]) -> dict[str, np.ndarray]:
        """Run with the outputs named in ``shared`` (output -> input) written into their input's
        memory (numpy arrays, C-contiguous, updated in place: ONNX Runtime's shared past/present
        buffers); the other outputs are returned by name."""
        binding = self.session.io_binding()
        bound = {}
        for name, array in feeds.items():
            if name in shared.values():
                bound[name] = ort.OrtValue.ortvalue_from_numpy(array)  # the array's own memory
                binding.bind_ortvalue_input(name, bound[name])
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
        returned = [name for name in self.output_names if name not in shared]
        for name in self.output_names:
            if name in shared:
                binding.bind_ortvalue_output(name, bound[shared[name]])
            else:
                binding.bind_output(name)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:
            raise ExecutionError(f"ONNX Runtime failed running model '{self.name}' in place: {_reason(exc)}",
                                 hint="report it with the model") from exc
        by_name = dict(zip(self.output_names, binding.get_outputs()))  # bound in output order
        return {name: by_name[name].numpy() for name in returned}


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


__all__ = ["disabled_optimizers", "inference_session", "linear_model", "OnnxRuntimeBackend", "OrtExecutable",
           "session_options"]
