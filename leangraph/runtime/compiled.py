"""CompiledModel: calls a compiled graph with the signature of the original model.

Inputs are checked against the graph's inputs (count, dtype, rank, static dims, and symbolic dims
that must agree across inputs) before anything runs; torch tensors in give torch tensors out, numpy
in gives numpy out; outputs come back in the structure the module returned.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from leangraph.backends.base import Executable
from leangraph.errors import InputMismatchError
from leangraph.ir import clone_model, lower_to_onnx
from leangraph.ir.verify import model_name

OUT_SPEC = "leangraph.out_spec"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    @classmethod
    def of(cls, value: ir.Value) -> InputSpec:
        shape = None
        if value.shape is not None:
            shape = tuple(d if isinstance(d, int) else d.value for d in value.shape)
        return cls(value.name, np.dtype(value.dtype.numpy()), shape)

    def __str__(self) -> str:
        dims = "?" if self.shape is None else ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def _load_out_spec(graph: ir.Model):
    """The output structure saved in the graph's metadata (a torch pytree spec as JSON), if any.

    Its container types (e.g. transformers' ModelOutput classes) must be importable; when one is
    not, outputs come back as a tuple and a warning says why."""
    text = graph.metadata_props.get(OUT_SPEC)
    if not text:
        return None
    import importlib
    import json
    import warnings

    from torch.utils import _pytree as pytree

    def types(node):
        if isinstance(node, dict):
            if node.get("type"):
                yield node["type"]
            for child in node.get("children_spec", []):
                yield from types(child)

    try:
        for type_name in set(types(json.loads(text)[1])):
            if type_name not in pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE:
                importlib.import_module(type_name.rsplit(".", 1)[0])
        return pytree.treespec_loads(text)
    except Exception as exc:  # the outputs are still right, only their container is lost
        warnings.warn(f"model '{model_name(graph)}': cannot rebuild its output structure ({exc}); "
                      "outputs are returned as a tuple", stacklevel=3)
        return None


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def to_numpy(x: Any) -> np.ndarray:
    """A model input as numpy: torch tensors detached and moved to the CPU, anything else as an array."""
    return x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)


class CompiledModel:
    """An optimized model ready to call: ``cm(*inputs)`` as ``model(*inputs)``."""

    def __init__(self, graph: ir.Model, executable: Executable, *, backend: str, report: Any) -> None:
        self._graph = graph
        self._executable = executable
        self.backend = backend
        self.report = report
        self.name = model_name(graph)
        self.inputs = [InputSpec.of(v) for v in graph.graph.inputs]
        self.output_names = [v.name for v in graph.graph.outputs]
        self._out_spec = graph.meta.get(OUT_SPEC) or _load_out_spec(graph)

    @property
    def graph(self) -> ir.Model:
        """The optimized IR model."""
        return self._graph

    def to_onnx(self, path: str | os.PathLike) -> None:
        """Write the optimized graph as a standard ONNX file (leangraph ops lowered to ONNX)."""
        ir.save(lower_to_onnx(clone_model(self._graph)), os.fspath(path))

    def save(self, directory: str | os.PathLike) -> None:
        """Write this compiled model as an artifact (manifest JSON + ONNX graph + safetensors);
        ``leangraph.load(directory)`` gives it back."""
        from leangraph.runtime.artifact import save_artifact

        signature = {
            "name": self.name,
            "inputs": [{"name": s.name, "dtype": str(s.dtype), "shape": list(s.shape) if s.shape else None}
                       for s in self.inputs],
            "outputs": list(self.output_names),
        }
        if self.report is not None and self.report.quantization:  # kept: load() reports them again
            signature["quantization"] = list(self.report.quantization)
        save_artifact(self._graph, directory, backend=self.backend, signature=signature, libraries=self._libraries())

    def _libraries(self) -> list:
        """The pieces compiled to native libraries (TVM), to keep in the artifact."""
        from leangraph.backends import get_backend
        from leangraph.backends.partition import PartitionedExecutable
        from leangraph.runtime.artifact import Library

        if not isinstance(self._executable, PartitionedExecutable):
            return []
        libraries = []
        for piece, executable in zip(self._executable.pieces, self._executable.executables):
            if hasattr(executable, "export_library"):
                backend = get_backend(piece.backend)
                libraries.append(Library(f"{piece.key}{backend.library_suffix}", piece.key, piece.backend,
                                         backend.library_target(), executable.export_library))
        return libraries

    def _signature(self) -> str:
        return ", ".join(str(s) for s in self.inputs)

    def _check(self, arrays: list[np.ndarray]) -> None:
        if len(arrays) != len(self.inputs):
            raise InputMismatchError(
                f"model '{self.name}' takes {len(self.inputs)} inputs ({self._signature()}); "
                f"got {len(arrays)}",
                hint="pass the inputs positionally, in the order of the example inputs",
            )
        bound: dict[str, tuple[int, str]] = {}
        for spec, array in zip(self.inputs, arrays):
            if array.dtype != spec.dtype:
                raise InputMismatchError(
                    f"input '{spec.name}' of model '{self.name}' must be {spec.dtype}; got {array.dtype}",
                    hint=f"convert it, e.g. x.astype(np.{spec.dtype}) or tensor.to(torch.{spec.dtype})",
                )
            if spec.shape is None:
                continue
            if array.ndim != len(spec.shape):
                raise InputMismatchError(
                    f"input '{spec.name}' of model '{self.name}' must have rank {len(spec.shape)} "
                    f"({spec}); got shape {list(array.shape)}",
                    hint="check the input's dimensions",
                )
            for axis, (dim, size) in enumerate(zip(spec.shape, array.shape)):
                if isinstance(dim, int) and dim != size:
                    raise InputMismatchError(
                        f"input '{spec.name}' of model '{self.name}' must have size {dim} on axis {axis} "
                        f"({spec}); got shape {list(array.shape)}",
                        hint="this dim was captured as static; capture with dynamic_shapes to vary it",
                    )
                if isinstance(dim, str):
                    if dim in bound and bound[dim][0] != size:
                        size0, where = bound[dim]
                        raise InputMismatchError(
                            f"dim '{dim}' of model '{self.name}' is {size0} in {where} but {size} in "
                            f"input '{spec.name}' axis {axis}",
                            hint=f"inputs sharing the dim '{dim}' must agree on its size",
                        )
                    bound.setdefault(dim, (size, f"input '{spec.name}' axis {axis}"))

    def run_flat(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs, flat and as numpy, for numpy inputs in graph order (checked)."""
        arrays = [np.asarray(a) for a in arrays]
        self._check(arrays)
        return list(self._executable(arrays))

    def __call__(self, *inputs: Any) -> Any:
        as_torch = any(_is_torch(x) for x in inputs)
        arrays = [to_numpy(x) for x in inputs]
        self._check(arrays)
        outputs = self._executable(arrays)
        if as_torch:
            import torch

            outputs = [torch.from_numpy(np.ascontiguousarray(o)) for o in outputs]
        if self._out_spec is not None:
            from torch.utils import _pytree as pytree

            return pytree.tree_unflatten(list(outputs), self._out_spec)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def __repr__(self) -> str:
        return f"CompiledModel('{self.name}', backend='{self.backend}', inputs=[{self._signature()}])"
