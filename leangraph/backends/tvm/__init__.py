"""TVM backend (apache-tvm, Relax): lowers IR pieces, leangraph ops included, to Relax and builds
them for ``llvm``, run by the Relax VM.

Linear layers (leangraph::MatMulBiasAct with constant weights, int8 DynamicQuantLinear), layer norms and
attention call library kernels (torch's GEMM, fbgemm, layer_norm, the torch backend's attention) through
packed functions over zero-copy DLPack views, which return their results (library.py), except where TIR
kernels of our own apply: the int8 GEMM micro-kernel (int8_gemm.py) and per-sequence attention over
packed tokens (packed_attention.py); the rest is
legalized to TIR, fused, and its elementwise loops vectorized (schedule.py). What the converter
table does not cover (shape arithmetic, gathers, mask building) falls back to ONNX Runtime through
the partitioner.

A compiled piece exports itself as a shared library (``export_library``) that artifacts keep;
``TVMBackend.load_library`` loads it back after registering the packed functions its nodes call
(those library.py registers on import, and those made from a node's attributes and weights), so a
saved model is not compiled again, in any process. A library is native code: loading one runs it
(docs/security.md). Each thread calling a piece gets its own VM.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from leangraph.errors import ArtifactError, ExecutionError
from leangraph.ir.verify import model_name


# TVM's thread pool spins waiting for work by default, fighting torch's pool (the library kernels)
# for the same cores; read when TVM starts its pool, so set before the first import of tvm.
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
# TVM's pool takes half the cores by default (it assumes two hyperthreads per core), so its parallel
# loops (the int8 GEMM's panels) would run on one of this machine's two cores; read when the pool starts.
_usable_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
os.environ.setdefault("TVM_NUM_THREADS", str(_usable_cores))


def available() -> bool:
    try:
        import tvm  # noqa: F401
    except ImportError:
        return False
    return True


def _supported_value(value: ir.Value | None) -> bool:
    return value is None or (value.shape is not None and value.dtype in (ir.DataType.FLOAT, ir.DataType.BOOL))


def _supported_integer(node: ir.Node, value: ir.Value | None) -> bool:
    """Non-float inputs the kernels read: a padding mask, int8 or bfloat16 constant weights; and
    Split's constant sizes (the other converters assume float or bool)."""
    if node.domain in ("", "ai.onnx") and node.op_type == "Split":
        return len(node.inputs) > 1 and value is node.inputs[1] and value.const_value is not None
    if node.domain != "leangraph" or value is None or value.shape is None:
        return False
    if node.op_type == "PackedMultiHeadAttention":
        return value is node.inputs[-1] and value.dtype in (ir.DataType.INT64, ir.DataType.INT32)
    if node.op_type == "DynamicQuantLinear":
        return value is node.inputs[1] and value.dtype == ir.DataType.INT8 and value.const_value is not None
    if node.op_type == "Bf16Linear":
        return value is node.inputs[1] and value.dtype == ir.DataType.BFLOAT16 and value.const_value is not None
    return False


def host_target():
    """LLVM for this machine's CPU (its vector width and features), with the cores it has."""
    import tvm
    from tvm.target import codegen

    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1})


@contextlib.contextmanager
def _without_scope_log():
    """TVM 0.27 logs 'Warning: Scope Saving:' / 'Scope Loaded:' (leftover debug lines, no content)
    to the C stderr on every export and load of a VM library; they are dropped, anything else it
    writes meanwhile is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not re.search(r"Warning: Scope (Saving|Loaded):\s*$", line)]
            sys.stderr.write("".join(kept))


def library_target() -> str:
    """The target a library was built for; one built for another CPU is rebuilt, not loaded."""
    return str(host_target())


class TVMExecutable:
    """A piece built by TVM (or loaded from a library it exported), run by the Relax VM."""

    def __init__(self, model: ir.Model, library: str | os.PathLike | None = None) -> None:
        import tvm
        from tvm import relax

        from leangraph.backends.tvm.converters import register_library_kernels

        self.name = model_name(model)
        self.input_names = [v.name for v in model.graph.inputs]
        self.output_names = [v.name for v in model.graph.outputs]
        # A library loaded back cannot export itself again (TVM: "Module[library] does not support
        # SaveToBytes"): saving a loaded model writes the bytes it was loaded from.
        self._library_bytes = None
        if library is None:
            executable = _build(model)
        else:
            register_library_kernels(model)
            try:
                self._library_bytes = Path(library).read_bytes()
                with _without_scope_log():
                    executable = tvm.runtime.load_module(os.fspath(library))
            except Exception as exc:
                # Named by its file: artifacts load a private copy, whose folder says nothing to the user.
                raise ArtifactError(f"cannot load the TVM library {Path(library).name} of model '{self.name}': "
                                    f"{str(exc).strip()[:500]}", hint="recompile the model") from None
        # The VM does not own the executable: keep it alive as long as the VMs (else a segfault).
        self._executable = executable
        self._vm_class, self._device = relax.VirtualMachine, tvm.cpu()
        self._per_thread = threading.local()
        self._tensor = tvm.runtime.tensor

    @property
    def _vm(self):
        """This thread's VM: a VM's registers and frames are per call, so concurrent calls on one VM
        crash; the executable (code and constants) is shared."""
        vm = getattr(self._per_thread, "vm", None)
        if vm is None:
            vm = self._per_thread.vm = self._vm_class(self._executable, self._device)
        return vm

    def export_library(self, path: str | os.PathLike) -> None:
        """Write the compiled piece as a shared library (TVMBackend.load_library reads it back)."""
        if self._library_bytes is not None:
            Path(path).write_bytes(self._library_bytes)
            return
        with _without_scope_log():
            self._executable.export_library(os.fspath(path))

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        try:
            outputs = self._vm["main"](*[self._tensor(np.asarray(x, order="C")) for x in inputs])  # keeps 0-d
        except Exception as exc:
            raise ExecutionError(f"TVM failed running model '{self.name}': {str(exc).strip()[:2000]}",
                                 hint="compare with backend='reference'") from exc
        return [tensor.numpy() for tensor in list(outputs)]


def ordered_shape_functions():
    """A pass putting the slot computations of VMShapeLower's host shape functions in one order.

    VMShapeLower emits them in the iteration order of a pointer-keyed map, so two compiles of one
    model can differ in it, and so their libraries' bytes; artifacts must be byte-identical. Each
    store writes one slot of the shape heap from slots read before it: sorted by the slot written,
    a store still comes after every store whose slot it reads."""
    import tvm
    from tvm import tirx as tir

    def reads(expr, found: set[int]) -> set[int]:
        if hasattr(expr, "indices"):  # a load (TensorLoad in 0.27; the class moves between versions)
            found.update(int(index.value) for index in expr.indices if hasattr(index, "value"))
        for field in ("a", "b", "value", "condition", "true_value", "false_value"):
            if hasattr(expr, field) and isinstance(getattr(expr, field), tir.Expr):
                reads(getattr(expr, field), found)
        for child in getattr(expr, "args", ()) or ():
            if isinstance(child, tir.Expr):
                reads(child, found)
        return found

    def order(stores: list) -> list | None:
        slots = []
        for store in stores:
            if not isinstance(store, tir.BufferStore) or len(store.indices) != 1 or not isinstance(store.indices[0], tir.IntImm):
                return None
            slots.append(int(store.indices[0]))
        written = set(slots)
        needs = {slot: reads(store.value, set()) & written - {slot} for slot, store in zip(slots, stores)}
        by_slot = dict(zip(slots, stores))
        done, result = set(), []
        while len(result) < len(stores):
            slot = min(s for s in by_slot if s not in done and needs[s] <= done)
            done.add(slot)
            result.append(by_slot[slot])
        return result

    @tvm.transform.module_pass(opt_level=0, name="LeangraphOrderedShapeFunctions")
    def rewrite(module, _context):
        for gvar, func in list(module.functions_items()):
            if (isinstance(func, tir.PrimFunc) and gvar.name_hint.startswith("shape_func")
                    and isinstance(func.body, tir.SeqStmt)):
                stores = order(list(func.body.seq))
                if stores is not None:
                    module[gvar] = func.with_body(tir.SeqStmt(stores))
        return module

    return rewrite


def _build(model: ir.Model):
    """``model`` as Relax, lowered and compiled for the host CPU: a Relax VM executable."""
    import tvm
    from tvm import relax
    from tvm import tirx as tir
    from tvm.relax.backend.cpu_generic import pipeline

    from leangraph.backends.tvm.converters import CONVERTERS, Context, dtype_of
    from leangraph.backends.tvm.schedule import schedule_pass

    output_names = [v.name for v in model.graph.outputs]
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
        if not value.is_graph_input():  # an input's initializer is its default: the caller's value wins
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
            results = [bb.emit_output(env[name]) for name in output_names]
        # The tuple is built outside the dataflow block: returning a tuple bound inside it
        # crashes the 0.27 VM.
        bb.emit_func_output(relax.Tuple(results))
    target = host_target()
    passes = (pipeline.library_dispatch_passes(target) + pipeline.legalize_passes(target) + [schedule_pass()]
              + pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target)
              + [ordered_shape_functions()])
    with target:
        module = tvm.transform.Sequential(passes)(bb.get())
    return tvm.compile(module, target=target)


class TVMBackend:
    name = "tvm"

    def supports(self, node: ir.Node) -> bool:
        from leangraph.backends.tvm.converters import CONVERTERS, ELEMENTWISE, split_sizes

        if node.op_type not in ELEMENTWISE and any(v is not None and v.is_graph_input() and v.const_value is not None
                                                   for v in node.inputs):
            return False  # its converter would bake the default of an input the caller may override
        if node.op_type == "Split" and split_sizes(node) is None:
            return False
        if node.op_type == "LayerNormalization" and any(v.uses() or v.is_graph_output() for v in node.outputs[1:]):
            return False  # its Mean/InvStdDev outputs are training-only; the converter gives Y alone
        return ((node.domain, node.op_type) in CONVERTERS
                and all(_supported_value(v) or _supported_integer(node, v) for v in node.inputs)
                and all(_supported_value(v) for v in node.outputs))

    library_suffix = ".so"

    def compile(self, model: ir.Model, *, alone: bool = True) -> TVMExecutable:
        return TVMExecutable(model)

    def library_target(self) -> str:
        return library_target()

    def load_library(self, model: ir.Model, path: str | os.PathLike, *, alone: bool = True) -> TVMExecutable:
        return TVMExecutable(model, library=path)


__all__ = ["TVMBackend", "TVMExecutable", "available"]
