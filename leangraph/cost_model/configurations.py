"""Whole-model configurations the learned cost model ranks: backend x exact-pass set x precision.

A :class:`Configuration` is one point of the space ``optimize()`` chooses from: which backend runs
the model (each with ONNX Runtime behind it for what it cannot run), whether padding removal runs
(exact, but slower where batches hold no padding, and it changes which kernels run), and the
precision of every linear layer (fp32, the backend's dynamic int8 kernel, or bf16 where the backend
has a bf16 GEMM). ``build`` applies one to a captured model without verification (the cost model
ranks speed; the search verifies the configuration it keeps); ``measure`` times it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from leangraph.backends import chain_for
from leangraph.backends.partition import compile_partitioned
from leangraph.cost_model.linear_kernels import BACKEND_KERNELS, Int8Scheme
from leangraph.cost_model.timing import median_seconds
from leangraph.ir import clone_model
from leangraph.passes import PassManager
from leangraph.passes.quantization.int8_linear import bf16_layers, candidate_layers, quantize_layers
from leangraph.passes.registry import default_pipeline
from leangraph.runtime import CompiledModel

PASS_SETS = ("default", "no_padding_removal")
"""The exact pipelines a configuration may run: the default, or the default without padding removal."""


@dataclasses.dataclass(frozen=True)
class Configuration:
    backend: str
    passes: str = "default"
    precision: str = "fp32"

    def describe(self) -> str:
        return f"{self.backend}, {self.passes.replace('_', ' ')} passes, {self.precision} linear layers"

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def backends_here() -> list[str]:
    """The compiling backends installed on this machine."""
    from leangraph.backends import tvm

    return ["onnxruntime", "torch"] + (["tvm"] if tvm.available() else [])


def candidates(backends: Sequence[str] | None = None) -> list[Configuration]:
    """Every configuration of the space, for the given backends (default: those installed)."""
    found = []
    for backend in backends if backends is not None else backends_here():
        precisions = ["fp32"] + [p for p in ("int8", "bf16") if _scheme(backend, p) is not None]
        found += [Configuration(backend, passes, precision) for passes in PASS_SETS for precision in precisions]
    return found


def _scheme(backend: str, precision: str):
    """The scheme of the backend's first dynamic kernel of that precision, or None."""
    for scheme in BACKEND_KERNELS.get(backend, {}).get("reduced", {}).values():
        if scheme.precision == precision and not (isinstance(scheme, Int8Scheme) and scheme.static_activations):
            return scheme
    return None


def pipeline_for(passes: str):
    pipeline = default_pipeline()
    if passes == "no_padding_removal":
        pipeline = [item for item in pipeline if getattr(item, "name", "") != "remove_padding"]
    return pipeline


def after_passes(model: ir.Model, passes: str) -> ir.Model:
    """A copy of the captured model with the pass set applied (unverified)."""
    return PassManager(pipeline_for(passes)).run(clone_model(model))[0]


def rewritten(model: ir.Model, configuration: Configuration, passed: ir.Model | None = None) -> ir.Model:
    """The captured model with the configuration's passes and precision applied (unverified);
    ``passed``: the model after the configuration's pass set already (copied, not changed)."""
    graph = clone_model(passed) if passed is not None else after_passes(model, configuration.passes)
    scheme = _scheme(configuration.backend, configuration.precision)
    if scheme is not None:
        names = {node.name for node in candidate_layers(graph)}
        if configuration.precision == "bf16":
            bf16_layers(graph, names)
        else:
            quantize_layers(graph, names, scheme.activation_bits, scheme.weight_bits)
    return graph


def compiled(graph: ir.Model, configuration: Configuration) -> CompiledModel:
    executable = compile_partitioned(graph, chain_for(configuration.backend))[0]
    return CompiledModel(graph, executable, backend=configuration.backend, report=None)


def measure(model: CompiledModel, input_sets: Sequence[Sequence[np.ndarray]], rounds: int = 5) -> float:
    """Seconds of one pass over ``input_sets``, median of ``rounds`` after warm-up."""
    def one_pass():
        for inputs in input_sets:
            model.run_flat(list(inputs))

    return median_seconds(one_pass, rounds=rounds)
