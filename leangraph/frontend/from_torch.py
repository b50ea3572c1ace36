"""torch.nn.Module -> IR through the torch.onnx dynamo exporter (torch.export underneath).

Dynamic dims are named by input: ``{"input_ids": {0: "batch", 1: "seq"}}``. Each node keeps the
path of the module that produced it (``encoder.layer.3.attention.self``) as the metadata entry
``leangraph.module_path``; the output structure (a pytree spec) is kept so a compiled model returns
what the module returned.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch.utils import _pytree as pytree

from leangraph.errors import CaptureError
from leangraph.ir import TARGET_OPSET, verify_model

MODULE_PATH = "leangraph.module_path"
OUT_SPEC = "leangraph.out_spec"
CONSTANT_LEAVES = "leangraph.constant_leaves"
"""Metadata: {leaf index: value} for the outputs a module returns that are constants (None, numbers,
strings): the output structure counts them, the ONNX graph has no output for them."""
DIM_LIMITS = "leangraph.dim_limits"
"""Metadata: {dim name: {"max": n, "why": text}} for symbolic dims the model cannot exceed (a
learned position table); the compiled model refuses longer inputs with a message naming the limit
instead of failing inside a Gather or Expand."""
_POSITION_TABLES = ("position_embeddings", "wpe", "embed_positions")
VALUE_RANGES = "leangraph.value_ranges"
"""Metadata: {input name: {"min": a, "max": b, "why": text}} for integer inputs that index a table
(token ids): ONNX's Gather wraps negative indices and refuses large ones deep inside a backend,
where torch raised IndexError; the compiled model checks them first."""
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def to_torch_args(example_inputs: Sequence[Any]) -> tuple[Any, ...]:
    # np.asarray(order="C"), not np.ascontiguousarray, which turns a 0-d array into a 1-d one
    return tuple(torch.from_numpy(np.asarray(x, order="C")) if isinstance(x, np.ndarray) else x for x in example_inputs)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs warnings about optional packages and prints progress, and its onnxscript
    optimizer warns for every node it cannot fold (the node stays and runs); users see errors only."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript.optimizer._constant_folding")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _module_path(node: ir.Node) -> str:
    scopes = node.metadata_props.get(_NAME_SCOPES)
    if not scopes:
        return ""
    try:
        names = ast.literal_eval(scopes)
    except (ValueError, SyntaxError):
        return ""
    modules = [n for n in names[:-1] if n and not n.startswith("_")]
    return modules[-1] if modules else ""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _summarize(exc: BaseException) -> str:
    """The exporter's own cause, without its colour codes and generic advice."""
    text = _ANSI.sub("", str(exc)).strip()
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
        text = text.split("(Refer to the full stack trace", 1)[0]
        text = text.split("The error above occurred when calling", 1)[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    text = " ".join(lines)
    return text[:1200] + (" ..." if len(text) > 1200 else "")


def _checked_dynamic_shapes(module: torch.nn.Module, args: tuple, dynamic_shapes: Any) -> Any:
    """dynamic_shapes checked against forward()'s arguments and, per argument, the axes its example
    has, with negative axes counted from the end (torch.export ignores them: the dim stays static).
    torch.export's own errors for a wrong entry are long and name its internals; a misspelt name
    would otherwise be ignored or fail far from the cause."""
    if dynamic_shapes is None:
        return None
    name = type(module).__name__
    usage = 'e.g. dynamic_shapes={"input_ids": {0: "batch", 1: "seq"}}'
    if not isinstance(dynamic_shapes, (Mapping, tuple, list)):
        raise CaptureError(f"dynamic_shapes for '{name}' must map forward() argument names to {{axis: dim name}}, "
                           f"got {type(dynamic_shapes).__name__}", hint=usage)
    import inspect

    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        parameters = None  # no signature to check against: torch.export checks it
    if parameters is not None and any(p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
                                      for p in parameters.values()):
        parameters = None  # forward(*args): torch.export's own rules
    names = list(parameters or ())
    if isinstance(dynamic_shapes, (tuple, list)):  # torch.export's positional form: one entry per argument
        if parameters is not None and len(dynamic_shapes) != len(args):
            raise CaptureError(f"dynamic_shapes for '{name}' has {len(dynamic_shapes)} entries for {len(args)} "
                               "example inputs", hint="give one entry per forward() argument, None for a static one")
        entries = [(f"'{names[p]}'" if p < len(names) else f"argument {p}", p, axes)
                   for p, axes in enumerate(dynamic_shapes)]
    else:
        if parameters is None:
            return dynamic_shapes
        for argument in dynamic_shapes:
            if argument not in names:
                raise CaptureError(f"dynamic_shapes names '{argument}', which is not an argument of {name}.forward() "
                                   f"({', '.join(names)})", hint=usage)
        entries = [(f"'{argument}'", names.index(argument), axes) for argument, axes in dynamic_shapes.items()]
    fixed = []
    for label, position, axes in entries:
        if not isinstance(axes, Mapping):
            fixed.append(axes)  # None (static), or torch.export's other spellings (a tuple per axis): it checks them
            continue
        example = args[position] if position < len(args) else None
        rank = example.dim() if isinstance(example, torch.Tensor) else None
        if parameters is not None:
            for axis, dim in axes.items():
                if not isinstance(axis, int) or isinstance(axis, bool) or (rank is not None and not -rank <= axis < rank):
                    raise CaptureError(f"dynamic_shapes[{label}] names axis {axis!r}, but the example {label} has "
                                       f"rank {rank}", hint=usage)
                if isinstance(dim, str) and not dim.strip():
                    raise CaptureError(f"dynamic_shapes[{label}] gives axis {axis} an empty dim name", hint=usage)
        fixed.append(axes if rank is None else
                     {axis % rank if isinstance(axis, int) and axis < 0 else axis: dim for axis, dim in axes.items()})
    if isinstance(dynamic_shapes, (tuple, list)):
        return type(dynamic_shapes)(fixed)
    return dict(zip(dynamic_shapes, fixed))


def _behaves_differently_in_training(module: torch.nn.Module) -> bool:
    """Whether training mode changes what ``module`` computes: active dropout, batch statistics."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd

    return any((isinstance(sub, _DropoutNd) and sub.p > 0) or isinstance(sub, _BatchNorm)
               for sub in module.modules() if sub.training)


def _position_limits(module: torch.nn.Module, model: ir.Model) -> dict[str, dict]:
    """The sequence dims bounded by a learned absolute position table (BERT, RoBERTa, DistilBERT,
    GPT-2, OPT, BART): its rows less the ids it reserves (RoBERTa's start after padding_idx, OPT and
    BART's after an offset of 2). Rotary and relative positions have no table and no limit."""
    tables = []
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in _POSITION_TABLES:
            reserved = getattr(sub, "offset", None)
            if not isinstance(reserved, int):
                reserved = sub.padding_idx + 1 if sub.padding_idx is not None else 0
            tables.append((sub.num_embeddings - reserved, name))
    if not tables:
        return {}
    limit, table = min(tables)
    limits = {}
    for value in model.graph.inputs:
        if value.shape is None or len(value.shape) != 2 or value.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
            continue
        dim = value.shape[1]
        if not isinstance(dim, int) and dim.value:
            limits[dim.value] = {"max": limit, "why": f"the position table '{table}' holds {limit} positions"}
    return limits


def _token_ranges(module: torch.nn.Module, model: ir.Model) -> dict[str, dict]:
    """input_ids' range, from the input embedding table of a transformers model (its
    get_input_embeddings(), the library's own way of naming it)."""
    get_table = getattr(module, "get_input_embeddings", None)
    try:
        table = get_table() if callable(get_table) else None
    except Exception:  # noqa: BLE001 - a model without one raises NotImplementedError
        return {}
    if not isinstance(table, torch.nn.Embedding):
        return {}
    return {value.name: {"min": 0, "max": table.num_embeddings - 1,
                         "why": f"the token embedding table has {table.num_embeddings} rows"}
            for value in model.graph.inputs
            if value.name == "input_ids" and value.dtype in (ir.DataType.INT64, ir.DataType.INT32)}


def capture_torch(
    module: torch.nn.Module,
    example_inputs: Sequence[Any],
    dynamic_shapes: Mapping[str, Mapping[int, str]] | None = None,
    *,
    opset: int = TARGET_OPSET,
) -> ir.Model:
    """Export ``module`` called on ``example_inputs`` (positional args) into the IR."""
    name = type(module).__name__
    if not isinstance(example_inputs, (tuple, list)):
        raise CaptureError(
            f"example_inputs for '{name}' must be a tuple of the forward() arguments, "
            f"got {type(example_inputs).__name__}",
            hint="wrap a single input in a tuple: (x,)",
        )
    args = to_torch_args(example_inputs)
    dynamic_shapes = _checked_dynamic_shapes(module, args, dynamic_shapes)
    if module.training and _behaves_differently_in_training(module):
        warnings.warn(f"'{name}' is in training mode: it is captured as it runs now, dropout and batch "
                      "statistics included, so its outputs vary from call to call; call model.eval() first",
                      stacklevel=3)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                verbose=False,
                optimize=True,
            )
    except Exception as exc:
        raise CaptureError(
            f"torch.onnx could not export '{name}': {_summarize(exc)}",
            hint="check that the model runs on example_inputs, that dynamic_shapes names "
            "forward() arguments, and that dynamic dims have size >= 2 in the example",
        ) from exc
    signature = program.exported_program.graph_signature
    mutated = sorted(set(signature.buffers_to_mutate.values()) | set(signature.user_inputs_to_mutate.values()))
    if mutated:
        raise CaptureError(
            f"'{name}'.forward() updates {', '.join(repr(m) for m in mutated)} in place; a compiled model keeps no "
            "state between calls, so those updates would be lost",
            hint="return the new values as outputs instead of assigning them to buffers or inputs")
    from torch.export.graph_signature import ConstantArgument, OutputKind

    user_outputs = [spec for spec in signature.output_specs if spec.kind == OutputKind.USER_OUTPUT]
    constants = {index: spec.arg.value for index, spec in enumerate(user_outputs)
                 if isinstance(spec.arg, ConstantArgument)
                 and (spec.arg.value is None or isinstance(spec.arg.value, (bool, int, float, str)))}
    model = program.model
    model.graph.name = name
    if constants and len(model.graph.outputs) == len(user_outputs) - len(constants):
        model.meta[CONSTANT_LEAVES] = constants
        model.metadata_props[CONSTANT_LEAVES] = json.dumps({str(i): v for i, v in constants.items()})
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        path = _module_path(node)
        if path:
            node.metadata_props[MODULE_PATH] = path
    out_spec = program.exported_program.call_spec.out_spec
    model.meta[OUT_SPEC] = out_spec
    try:
        model.metadata_props[OUT_SPEC] = pytree.treespec_dumps(out_spec)
    except Exception:  # an output type torch cannot serialize: it still works in this process
        pass
    model.metadata_props["leangraph.source"] = f"torch:{type(module).__module__}.{name}"
    limits = _position_limits(module, model)
    if limits:
        model.metadata_props[DIM_LIMITS] = json.dumps(limits, sort_keys=True)
    ranges = _token_ranges(module, model)
    if ranges:
        model.metadata_props[VALUE_RANGES] = json.dumps(ranges, sort_keys=True)
    verify_model(model)
    return model
