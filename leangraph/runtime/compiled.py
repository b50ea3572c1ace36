"""CompiledModel: calls a compiled graph with the signature of the original model.

Inputs (positional, or by the graph's input names) are checked against the graph's inputs (count,
dtype, rank, static dims, and symbolic dims that must agree across inputs) before anything runs;
what is not an array (a string, None, a ragged list, a meta tensor) is an InputMismatchError naming
the input. Torch tensors in give torch tensors out, numpy in gives numpy out; outputs come back in
the structure the module returned, rebuilt from types this process registered with torch's pytree,
never by importing what a model file names (docs/security.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from leangraph.backends.base import Executable
from leangraph.errors import InputMismatchError, OptionError
from leangraph.ir import clone_model, lower_to_onnx
from leangraph.ir.verify import model_name

OUT_SPEC = "leangraph.out_spec"


def _kind(type_: ir.TypeProtocol | None) -> str:
    """"tensor", "sequence", "optional(tensor)", "optional(sequence)": how an input is passed
    (an array, a list of arrays, either or None)."""
    if isinstance(type_, ir.SequenceType):
        return "sequence"
    if isinstance(type_, ir.OptionalType):
        return f"optional({_kind(type_.elem_type)})"
    return "tensor"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    """The element type (of the tensor, or of the sequence's tensors)."""
    shape: tuple[int | str | None, ...] | None
    kind: str = "tensor"

    @classmethod
    def of(cls, value: ir.Value) -> InputSpec:
        kind = _kind(value.type)
        shape = None
        if value.shape is not None and kind == "tensor":
            shape = tuple(d if isinstance(d, int) else d.value for d in value.shape)
        return cls(value.name, np.dtype(value.dtype.numpy()), shape, kind)

    def __str__(self) -> str:
        if self.kind != "tensor":
            return f"{self.name}: {self.kind.replace('tensor', str(self.dtype)).replace('sequence', f'sequence<{self.dtype}>')}"
        dims = "?" if self.shape is None else ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


MAX_OUT_SPEC_CHARS = 1 << 20
"""The output structure is a few hundred characters for real models; more is not one leangraph wrote."""
MAX_OUT_SPEC_DEPTH = 64


class _Unusable(Exception):
    """Why the output structure in a model's metadata cannot be rebuilt (outputs become a tuple)."""


def _short(text: str, limit: int = 120) -> str:
    """A name from a model file, cut for a message (the file may hold anything)."""
    return text if len(text) <= limit else text[:limit] + "..."


def _spec_from_text(text: str):
    """A torch pytree spec from its JSON (``treespec_dumps``), built only from container types this
    process has registered with torch's pytree: torch's and leangraph's, and those of modules the
    user imported (transformers registers its ModelOutput classes when they are defined). Nothing the
    text names is imported: a model file can name any module, and importing one runs its code.

    ``pytree.treespec_loads`` is not used: it imports the modules named by enum keys in a context and
    by a defaultdict's default factory."""
    import collections
    import json

    from torch.utils import _pytree as pytree

    if len(text) > MAX_OUT_SPEC_CHARS:
        raise _Unusable(f"its description is {len(text)} characters long")
    try:
        protocol, root = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        raise _Unusable("its description is not the JSON of a torch pytree spec") from None
    if protocol != 1:
        raise _Unusable(f"its description has serialization protocol {_short(repr(protocol))}, not 1")
    unknown: set[str] = set()

    def build(node, depth: int):
        if depth > MAX_OUT_SPEC_DEPTH:
            raise _Unusable(f"it is nested deeper than {MAX_OUT_SPEC_DEPTH} levels")
        if (not isinstance(node, dict) or set(node) != {"type", "context", "children_spec"}
                or not isinstance(node["children_spec"], list)):
            raise _Unusable("its description is not the JSON of a torch pytree spec")
        name, context, children = node["type"], node["context"], node["children_spec"]
        if name is None and context is None and not children:
            return pytree.treespec_leaf()
        if not isinstance(name, str):
            raise _Unusable("its description is not the JSON of a torch pytree spec")
        built = [build(child, depth + 1) for child in children]
        typ = pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE.get(name) if name != pytree.NO_SERIALIZED_TYPE_NAME_FOUND else None
        if typ is None:
            unknown.add(name)
            return None
        definition = pytree.SUPPORTED_SERIALIZED_TYPES[typ]
        if typ is collections.defaultdict:
            raise _Unusable("it holds a defaultdict, whose reader in torch imports the module of its default factory")
        try:
            if definition.from_dumpable_context is None:
                if not isinstance(context, str):
                    raise ValueError("the context is not a JSON string")
                value = json.loads(context)  # plain JSON: no object hook, so no enum module imported
            else:  # a reader registered in this process (namedtuple's looks its type up in the registry)
                value = definition.from_dumpable_context(context)
        except (ValueError, TypeError, RecursionError, NotImplementedError, AssertionError) as exc:
            raise _Unusable(f"the context of its {_short(name)} cannot be read ({_short(str(exc))})") from None
        return pytree.TreeSpec(typ, value, built)

    spec = build(root, 0)
    if unknown and _import_trusted_output_modules(unknown):
        unknown.clear()
        spec = build(root, 0)
    if unknown:
        names = ", ".join(_short(name) for name in sorted(unknown)[:5]) + (", ..." if len(unknown) > 5 else "")
        raise _Unusable(f"its container types ({names}) are not registered in this process; leangraph imports "
                        "nothing a model file names: import the module defining them first (for transformers' "
                        "outputs, transformers and the model's class) to get the structure back")
    return spec


TRUSTED_OUTPUT_MODULES = ("transformers.modeling_outputs",)
"""Modules leangraph itself may import to rebuild an output structure: installed libraries whose
output containers (transformers' ModelOutput classes) most captured models return. The list is
leangraph's, not the file's: a file naming any other module gets a tuple and a warning."""


def _import_trusted_output_modules(names: set[str]) -> bool:
    """Import the trusted modules that define some of ``names`` (and are installed); whether any was."""
    import importlib
    import importlib.util

    wanted = [module for module in TRUSTED_OUTPUT_MODULES
              if module not in sys.modules and any(name.rsplit(".", 1)[0] == module for name in names)]
    imported = False
    for module in wanted:
        try:
            if importlib.util.find_spec(module.split(".")[0]) is None:
                continue
            importlib.import_module(module)  # a name from the list above, never from the file
            imported = True
        except Exception:  # noqa: BLE001 - a broken installation: the outputs come back as a tuple
            continue
    return imported


CONSTANT_LEAVES = "leangraph.constant_leaves"


def _metadata_object(graph: ir.Model, key: str) -> dict:
    """The JSON object capture wrote under ``key`` in the graph's metadata, or {} when there is
    none or it is not a small JSON object: these entries only restore conveniences and sharpen
    messages, and the file is not trusted to say more."""
    import json

    text = graph.metadata_props.get(key)
    if not text or len(text) > 65536:
        return {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _constant_leaves(graph: ir.Model) -> dict[int, Any]:
    """{leaf index: value} of the outputs the module returned as constants (None, numbers, strings),
    which the graph has no output for (frontend/from_torch.py). Anything else in the file is ignored."""
    if CONSTANT_LEAVES in graph.meta:
        return graph.meta[CONSTANT_LEAVES]
    return {int(k): v for k, v in _metadata_object(graph, CONSTANT_LEAVES).items()
            if k.isdigit() and (v is None or isinstance(v, (bool, int, float, str)))}


def _load_out_spec(graph: ir.Model, num_outputs: int):
    """The output structure saved in the graph's metadata (a torch pytree spec as JSON), if any and
    if it can be rebuilt from types registered in this process; else None and a warning saying why
    (the outputs are still right, only their container is lost)."""
    text = graph.metadata_props.get(OUT_SPEC)
    if not text:
        return None
    import warnings

    try:
        spec = _spec_from_text(text)
        num_outputs += len(_constant_leaves(graph))
        if spec.num_leaves != num_outputs:
            raise _Unusable(f"it has {spec.num_leaves} leaves for the graph's {num_outputs} outputs")
    except _Unusable as exc:
        warnings.warn(f"model '{model_name(graph)}': its outputs are returned as a tuple: the output structure "
                      f"in its metadata cannot be rebuilt ({exc})", stacklevel=3)
        return None
    return spec


def _torch():
    """torch, if something in this process imported it (a torch input implies it was)."""
    return sys.modules.get("torch")


def _is_torch(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


_NUMPY_LACKS = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")
"""torch dtypes numpy has no type of its own for; ml_dtypes has them (onnx-ir reads them so too)."""


def _torch_to_numpy(x: Any, what: str) -> np.ndarray:
    torch = _torch()
    if x.device.type == "meta":
        raise InputMismatchError(f"{what} is a tensor on torch's meta device: it has a shape but no data",
                                 hint="pass a tensor holding data (on the CPU or a GPU)")
    if x.layout != torch.strided:
        raise InputMismatchError(f"{what} is a {x.layout} tensor; compiled models take dense tensors",
                                 hint="pass tensor.to_dense()")
    if x.is_quantized:
        raise InputMismatchError(f"{what} is a quantized tensor ({x.dtype})", hint="pass tensor.dequantize()")
    try:
        tensor = x.detach().cpu().resolve_conj().resolve_neg()
        name = str(tensor.dtype).removeprefix("torch.")
        if name in _NUMPY_LACKS:
            import ml_dtypes

            bits = {1: torch.uint8, 2: torch.int16}[tensor.element_size()]
            return tensor.contiguous().view(bits).numpy().view(getattr(ml_dtypes, name))
        return tensor.numpy()
    except (TypeError, RuntimeError, KeyError, AttributeError) as exc:
        raise InputMismatchError(f"{what} is a torch tensor ({type(x).__name__}, {x.dtype}) that cannot be read as "
                                 f"an array: {str(exc).strip()[:300]}",
                                 hint="pass a plain tensor on the CPU, e.g. tensor.to(torch.float32)") from None


def to_numpy(x: Any, what: str = "an input", dtype: np.dtype | None = None) -> np.ndarray:
    """A model input as numpy: torch tensors detached and moved to the CPU, anything else as an
    array; an InputMismatchError naming ``what`` for what is not an array (a string, None, a ragged
    list, a meta tensor, a dtype numpy cannot hold). ``dtype``: the input's, when known; text is
    refused unless it is a string input."""
    if _is_torch(x):
        return _torch_to_numpy(x, what)
    textual = dtype is not None and np.dtype(dtype).kind == "O"  # an ONNX string input
    if x is None or (isinstance(x, (str, bytes)) and not textual) or isinstance(x, (dict, set)):
        raise InputMismatchError(f"{what} must be an array (a numpy array or torch tensor); got "
                                 f"{type(x).__name__} {_short(repr(x), 60)}",
                                 hint="pass the model's inputs as numpy arrays or torch tensors")
    if isinstance(x, np.ndarray):
        array = x
    else:
        try:
            array = np.asarray(x)
        except (ValueError, TypeError) as exc:  # ragged nested lists, objects numpy cannot convert
            raise InputMismatchError(f"{what} cannot be read as an array ({type(x).__name__}): {str(exc)[:300]}",
                                     hint="pass a numpy array or torch tensor; nested lists must be rectangular") from None
    # An ndarray with no dtype to compare against is left to the caller's dtype check. (ml_dtypes'
    # bfloat16 and float8 are of kind "V" too, but not structured.)
    text = array.dtype.kind in "OUS" or array.dtype.names is not None
    if text and not textual and (dtype is not None or array is not x):
        raise InputMismatchError(f"{what} is not numeric: {type(x).__name__} read as an array of {array.dtype}",
                                 hint="pass the model's inputs as numeric numpy arrays or torch tensors")
    return array


def _as_value(x: Any, what: str, spec: InputSpec):
    """An input as the executables take it: an array; for a sequence input a list of arrays; for
    an optional one also None."""
    kind = spec.kind
    if kind.startswith("optional("):
        if x is None:
            return None
        kind = kind[len("optional("):-1]
    if kind == "sequence":
        if not isinstance(x, (list, tuple)):
            raise InputMismatchError(f"{what} is a sequence: pass a list of arrays, got {type(x).__name__}",
                                     hint="e.g. [np.ones(3, np.float32), np.zeros(2, np.float32)]")
        return [to_numpy(item, f"element {i} of {what}", spec.dtype) for i, item in enumerate(x)]
    return to_numpy(x, what, spec.dtype)


def _check_structured(model: str, spec: InputSpec, value: Any) -> None:
    """The element types of a sequence or optional input."""
    items = [] if value is None else value if isinstance(value, list) else [value]
    for index, item in enumerate(items):
        if item.dtype != spec.dtype:
            raise InputMismatchError(f"element {index} of input '{spec.name}' of model '{model}' must be {spec.dtype}; "
                                     f"got {item.dtype}", hint=f"convert it, e.g. x.astype(np.{spec.dtype})")


def _to_torch(array: np.ndarray):
    torch = _torch()
    name = array.dtype.name
    if name in _NUMPY_LACKS:  # ml_dtypes arrays: torch.from_numpy does not know them
        bits = {1: np.uint8, 2: np.int16}[array.dtype.itemsize]
        return torch.from_numpy(np.asarray(array, order="C").view(bits)).view(getattr(torch, name))
    return torch.from_numpy(np.asarray(array, order="C"))  # not ascontiguousarray: it makes 0-d arrays 1-d


_NOT_LOADED = object()  # the output structure, before the first call reads it
_MISSING = object()  # an input given neither positionally nor by name


def _output_path(path: Any, what: str, example: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise OptionError(f"the path for {what} must be a str or os.PathLike, got {type(path).__name__} "
                          f"{_short(repr(path), 60)}", hint=example)
    text = os.fspath(path)
    if not str(text).strip() or "\0" in str(text):  # '' would mean the working directory
        raise OptionError(f"the path for {what} is empty or holds a NUL byte ({_short(repr(text), 60)})", hint=example)
    return Path(text)


def signature_inputs(specs: Sequence[InputSpec]) -> list[dict]:
    """The inputs as an artifact's manifest lists them (load() compares them with its graph's)."""
    return [{"name": s.name, "dtype": str(s.dtype), "shape": None if s.shape is None else list(s.shape),
             **({"kind": s.kind} if s.kind != "tensor" else {})} for s in specs]


DIM_LIMITS = "leangraph.dim_limits"


VALUE_RANGES = "leangraph.value_ranges"


def _metadata_bounds(graph: ir.Model, key: str, fields: tuple[str, ...]) -> dict[str, tuple]:
    """{name: (*fields, why)} from the bounds capture wrote under ``key`` (frontend/from_torch.py:
    a learned position table bounds the sequence dim, the token table the ids); malformed entries
    are left out."""
    bounds = {}
    for name, entry in _metadata_object(graph, key).items():
        if (isinstance(entry, dict) and isinstance(entry.get("why"), str)
                and all(isinstance(entry.get(f), int) and not isinstance(entry[f], bool) for f in fields)):
            bounds[str(name)] = (*(entry[f] for f in fields), _short(entry["why"]))
    return bounds


def _dim_limits(graph: ir.Model) -> dict[str, tuple[int, str]]:
    return _metadata_bounds(graph, DIM_LIMITS, ("max",))


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
        # The structure captured in this process, else the one in the metadata, read at the first
        # call (so its warning, if any, points there, and optimize()'s input checker reads nothing).
        self._out_spec = graph.meta.get(OUT_SPEC) or _NOT_LOADED
        self._dim_limits = _dim_limits(graph)
        self._value_ranges = _metadata_bounds(graph, VALUE_RANGES, ("min", "max"))
        self._constant_leaves = sorted(_constant_leaves(graph).items())
        self._defaults = {v.name: v.const_value for v in graph.graph.inputs if v.const_value is not None}
        """Inputs with a default (an initializer that is also an input): the caller may leave them out."""

    @property
    def graph(self) -> ir.Model:
        """The optimized IR model."""
        return self._graph

    def to_onnx(self, path: str | os.PathLike) -> None:
        """Write the optimized graph as a standard ONNX file (leangraph ops lowered to ONNX)."""
        target = _output_path(path, f"the ONNX file of model '{self.name}'", "e.g. cm.to_onnx('model.onnx')")
        if target.is_dir():
            raise OptionError(f"cannot write the ONNX file of model '{self.name}' to '{target}': it is a folder",
                              hint=f"pass a file path, e.g. '{target / 'model.onnx'}'")
        lowered = lower_to_onnx(clone_model(self._graph))
        # Written next to the target and renamed over it: a failure leaves no half-written file.
        staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            ir.save(lowered, os.fspath(staging))
            os.replace(staging, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                staging.unlink(missing_ok=True)
            raise OptionError(f"cannot write the ONNX file of model '{self.name}' to '{target}': "
                              f"{exc.strerror or exc}", hint="pass a path in a folder you can write to") from None

    def save(self, directory: str | os.PathLike) -> None:
        """Write this compiled model as an artifact (manifest JSON + ONNX graph + safetensors);
        ``leangraph.load(directory)`` gives it back."""
        from leangraph.runtime.artifact import save_artifact

        directory = _output_path(directory, f"the artifact of model '{self.name}'", "e.g. cm.save('model_artifact')")
        signature = {
            "name": self.name,
            "inputs": signature_inputs(self.inputs),
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

    def check_arrays(self, arrays: list[np.ndarray]) -> None:
        """An InputMismatchError unless ``arrays`` (numpy, in graph order) fit the graph's inputs:
        count, dtype, rank, static dims, shared symbolic dims, and the bounds capture recorded."""
        if len(arrays) != len(self.inputs):
            raise InputMismatchError(
                f"model '{self.name}' takes {len(self.inputs)} inputs ({self._signature()}); "
                f"got {len(arrays)}",
                hint="pass the inputs positionally, in the order of the example inputs",
            )
        bound: dict[str, tuple[int, str]] = {}
        for spec, array in zip(self.inputs, arrays):
            if spec.kind != "tensor":
                _check_structured(self.name, spec, array)
                continue
            if array.dtype != spec.dtype:
                raise InputMismatchError(
                    f"input '{spec.name}' of model '{self.name}' must be {spec.dtype}; got {array.dtype}",
                    hint=f"convert it, e.g. x.astype(np.{spec.dtype}) or tensor.to(torch.{spec.dtype})",
                )
            if spec.name in self._value_ranges and array.size:
                low, high, why = self._value_ranges[spec.name]
                if array.min() < low or array.max() > high:
                    raise InputMismatchError(
                        f"input '{spec.name}' of model '{self.name}' holds {array.min()}..{array.max()}; it takes "
                        f"{low}..{high}: {why}", hint="check the tokenizer: its vocabulary must be the model's")
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
                    limit = self._dim_limits.get(dim)
                    if limit is not None and size > limit[0]:
                        raise InputMismatchError(
                            f"input '{spec.name}' of model '{self.name}' has {size} on axis {axis} (dim '{dim}'); the "
                            f"model takes at most {limit[0]}: {limit[1]}",
                            hint=f"split or truncate the input to at most {limit[0]} (e.g. a tokenizer's "
                                 f"max_length={limit[0]}, truncation=True)",
                        )

    def _what(self, index: int) -> str:
        if index < len(self.inputs):
            return f"input '{self.inputs[index].name}' of model '{self.name}'"
        return f"input #{index} of model '{self.name}'"

    def _arrays(self, inputs: Sequence[Any], named: dict[str, Any]) -> list[np.ndarray]:
        """The inputs in graph order as numpy, keyword arguments placed by the graph's input names,
        inputs left out given their defaults where the graph has one."""
        names = [spec.name for spec in self.inputs]
        if named:
            unknown = [key for key in named if key not in names]
            if unknown:
                raise InputMismatchError(
                    f"model '{self.name}' has no input named {', '.join(repr(k) for k in unknown)}; its inputs are "
                    f"{self._signature()}", hint=f"pass the inputs by these names or positionally: {', '.join(names)}")
            twice = [key for key in named if names.index(key) < len(inputs)]
            if twice:
                raise InputMismatchError(
                    f"input {', '.join(repr(k) for k in twice)} of model '{self.name}' was given both positionally "
                    "and by name", hint="pass each input once")
        if len(inputs) > len(names):
            raise InputMismatchError(
                f"model '{self.name}' takes {len(self.inputs)} inputs ({self._signature()}); got {len(inputs)}",
                hint="pass the inputs positionally, in the order of the example inputs, or by name",
            )
        placed = list(inputs) + [named.get(name, _MISSING) for name in names[len(inputs):]]
        missing = [name for name, value in zip(names, placed) if value is _MISSING and name not in self._defaults]
        if missing:
            given = len(inputs) + len(named)
            raise InputMismatchError(
                f"model '{self.name}' takes {len(names)} inputs ({self._signature()}); got {given}: "
                f"{', '.join(repr(m) for m in missing)} not given",
                hint="pass every input, positionally or by name (only inputs with a default may be left out)")
        placed = [self._defaults[name].numpy() if value is _MISSING else value for name, value in zip(names, placed)]
        return [_as_value(x, self._what(i), self.inputs[i]) for i, x in enumerate(placed)]

    def input_values(self, inputs: Sequence[Any]) -> list:
        """``inputs`` (positional, in graph order) as the executables take them: numpy arrays; lists
        of arrays for sequence inputs; None for an empty optional. Not checked (check_arrays)."""
        return self._arrays(list(inputs), {})

    def run_flat(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs, flat and as numpy, for numpy inputs in graph order (checked)."""
        if not isinstance(arrays, (list, tuple)):
            raise InputMismatchError(f"run_flat() of model '{self.name}' takes a list of inputs, got "
                                     f"{type(arrays).__name__}", hint="pass [x] for one input, not x")
        arrays = self._arrays(list(arrays), {})
        self.check_arrays(arrays)
        return list(self._executable(arrays))

    def __call__(self, /, *inputs: Any, **named: Any) -> Any:
        """The outputs for ``inputs`` (positional in the order of the example inputs, or by the graph's
        input names), in the structure the module returned: torch tensors in give torch tensors out."""
        as_torch = any(_is_torch(x) for x in (*inputs, *named.values()))
        arrays = self._arrays(inputs, named)
        self.check_arrays(arrays)
        outputs = list(self._executable(arrays))
        if as_torch:
            outputs = [_to_torch(o) for o in outputs]
        if self._out_spec is _NOT_LOADED:
            self._out_spec = _load_out_spec(self._graph, len(self.output_names))
        if self._out_spec is not None:
            from torch.utils import _pytree as pytree

            try:
                leaves = list(outputs)
                for index, value in self._constant_leaves:
                    leaves.insert(index, value)
                return pytree.tree_unflatten(leaves, self._out_spec)
            except Exception as exc:  # a registered container refusing the context the file gave it
                import warnings

                warnings.warn(f"model '{self.name}': its outputs are returned as a tuple: the output structure "
                              f"in its metadata does not fit them ({type(exc).__name__}: {_short(str(exc))})",
                              stacklevel=2)
                self._out_spec = None
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def __repr__(self) -> str:
        return f"CompiledModel('{self.name}', backend='{self.backend}', inputs=[{self._signature()}])"
