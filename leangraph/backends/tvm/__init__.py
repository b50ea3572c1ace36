"""TVM backend (apache-tvm, Relax): lowers IR pieces, leangraph ops included, to Relax and builds
them for ``llvm``, run by the Relax VM.

Linear layers (leangraph::MatMulBiasAct with constant weights, int8 DynamicQuantLinear) and
attention call library kernels (torch's GEMM, fbgemm, scaled_dot_product_attention) through
destination-passing packed functions over zero-copy DLPack views (library.py); the rest is
legalized to TIR, fused, and its elementwise loops vectorized (schedule.py). What the converter
table does not cover (shape arithmetic, gathers, mask building) falls back to ONNX Runtime through
the partitioner.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from leangraph.errors import ExecutionError
from leangraph.ir.verify import model_name


# TVM's thread pool spins waiting for work by default, fighting torch's pool (the library kernels)
# for the same cores; read when TVM starts its pool, so set before the first import of tvm.
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")


def available() -> bool:
    try:
        import tvm  # noqa: F401
    except ImportError:
        return False
    return True


def _supported_value(value: ir.Value | None) -> bool:
    return value is None or (value.shape is not None and value.dtype in (ir.DataType.FLOAT, ir.DataType.BOOL))


def _supported_integer(node: ir.Node, value: ir.Value | None) -> bool:
    """Integer inputs the library kernels read: a padding mask, int8 constant weights (the other
    converters assume float or bool)."""
    if node.domain != "leangraph" or value is None or value.shape is None:
        return False
    if node.op_type == "PackedMultiHeadAttention":
        return value is node.inputs[-1] and value.dtype in (ir.DataType.INT64, ir.DataType.INT32)
    if node.op_type == "DynamicQuantLinear":
        return value is node.inputs[1] and value.dtype == ir.DataType.INT8 and value.const_value is not None
    return False


def host_target():
    """LLVM for this machine's CPU (its vector width and features), with the cores it has."""
    import tvm
    from tvm.target import codegen

    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1})


class TVMExecutable:
    def __init__(self, model: ir.Model) -> None:
        import tvm
        from tvm import relax
        from tvm import tirx as tir
        from tvm.relax.backend.cpu_generic import pipeline

        from leangraph.backends.tvm.converters import CONVERTERS, Context, dtype_of
        from leangraph.backends.tvm.schedule import schedule_pass

        self.name = model_name(model)
        self.input_names = [v.name for v in model.graph.inputs]
        self.output_names = [v.name for v in model.graph.outputs]
        symbols: dict[str, tir.Var] = {}

        def relax_shape(value: ir.Value) -> list:
            dims = []
            for index, dim in enumerate(value.shape):
                if isinstance(dim, int):
                    dims.append(dim)
                else:  # one Relax variable per symbol name; unnamed dims get their own
                    name = dim.value or f"{value.name}_dim{index}"
                    dims.append(symbols.setdefault(name, tir.Var(name, "int64")))
            return dims

        bb = relax.BlockBuilder()
        params = [relax.Var(v.name, relax.TensorType(relax_shape(v), dtype_of(v))) for v in model.graph.inputs]
        env = {v.name: p for v, p in zip(model.graph.inputs, params)}
        for name, value in model.graph.initializers.items():
            env[name] = relax.const(value.const_value.numpy())
        ctx = Context(bb, relax_shape)
        with bb.function("main", params):
            with bb.dataflow():
                for node in model.graph:
                    convert = CONVERTERS[(node.domain, node.op_type)]
                    outputs = convert(ctx, node, [env[v.name] if v is not None else None for v in node.inputs])
                    for value, expr in zip(node.outputs, outputs):
                        bound = bb.emit(expr)
                        if value.shape is not None and value.dtype is not None and bound.ty.shape is None:
                            # Relax could not infer it (e.g. broadcasting against a dim named
                            # 'Min(512, seq)'): take the shape the IR recorded, checked at run time.
                            bound = bb.match_cast(bound, relax.TensorType(relax_shape(value), dtype_of(value)))
                        env[value.name] = bound
                results = [bb.emit_output(env[name]) for name in self.output_names]
            # The tuple is built outside the dataflow block: returning a tuple bound inside it
            # crashes the 0.27 VM.
            bb.emit_func_output(relax.Tuple(results))
        target = host_target()
        passes = (pipeline.library_dispatch_passes(target) + pipeline.legalize_passes(target) + [schedule_pass()]
                  + pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target))
        with target:
            module = tvm.transform.Sequential(passes)(bb.get())
        # The VM does not own the executable: keep it alive as long as the VM (else a segfault).
        self._executable = tvm.compile(module, target=target)
        self._vm = relax.VirtualMachine(self._executable, tvm.cpu())
        self._tensor = tvm.runtime.tensor

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        try:
            outputs = self._vm["main"](*[self._tensor(np.ascontiguousarray(x)) for x in inputs])
        except Exception as exc:
            raise ExecutionError(f"TVM failed running model '{self.name}': {str(exc).strip()[:2000]}",
                                 hint="compare with backend='reference'") from exc
        return [tensor.numpy() for tensor in list(outputs)]


class TVMBackend:
    name = "tvm"

    def supports(self, node: ir.Node) -> bool:
        from leangraph.backends.tvm.converters import CONVERTERS

        return ((node.domain, node.op_type) in CONVERTERS
                and all(_supported_value(v) or _supported_integer(node, v) for v in node.inputs)
                and all(_supported_value(v) for v in node.outputs))

    def compile(self, model: ir.Model, *, alone: bool = True) -> TVMExecutable:
        return TVMExecutable(model)


__all__ = ["TVMBackend", "TVMExecutable", "available"]
