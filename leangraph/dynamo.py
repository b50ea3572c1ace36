"""``torch.compile(model, backend="leangraph")``: a TorchDynamo backend (registered on import).

Dynamo hands the backend an FX graph whose inputs are the data tensors, the module's parameters
and, once it has seen varying shapes, the symbolic sizes (SymInt) of those tensors. We wrap the
graph in a module that takes only the data tensors: parameters are bound as constants (inference:
the compiled graph keeps the weights it was compiled with) and every SymInt input is read off the
tensor dim it stands for. That module is captured with its symbolic dims kept dynamic and optimized
by :func:`leangraph.optimize`, so new lengths run without recompiling.

Dynamo itself compiles a first time with static shapes and recompiles once when a dim changes
(automatic dynamic shapes); ``torch.compile(..., dynamic=True)`` makes the first compile dynamic.

Graphs that need autograd (inputs requiring grad under grad mode) are not leangraph's business:
they run eagerly, with a warning saying so.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence

import torch

import leangraph
from leangraph.errors import OptionError

OPTIONS = {"backend": "auto", "passes": "default"}
"""What the backend passes to leangraph.optimize; change them to pick a backend or pipeline."""


class _DataOnly(torch.nn.Module):
    """The dynamo graph as a module of its data tensors only (see the module docstring)."""

    def __init__(self, gm: torch.fx.GraphModule, plan: list[tuple], constants: list[torch.Tensor]) -> None:
        super().__init__()
        self.gm = gm
        self.plan = plan
        for index, tensor in enumerate(constants):
            self.register_buffer(f"constant_{index}", tensor.detach(), persistent=False)

    def forward(self, *tensors):
        args = []
        for kind, first, second in self.plan:
            if kind == "data":
                args.append(tensors[first])
            elif kind == "constant":
                args.append(getattr(self, f"constant_{first}"))
            else:  # a symbolic size: dim `second` of data tensor `first`
                args.append(tensors[first].shape[second])
        return self.gm(*args)


def _symbol(value) -> str | None:
    """The symbol of a free symbolic size; None for ints and sizes dynamo's guards pinned to a value."""
    if not isinstance(value, torch.SymInt) or value.node.maybe_as_int() is not None:
        return None
    return str(value.node.expr)


def _is_module_state(node: torch.fx.Node) -> bool:
    """Whether a graph input is the module's own state (parameters, buffers, attributes)."""
    graph_arg = node.meta.get("grapharg")
    return graph_arg is not None and graph_arg.source is not None and graph_arg.source.name.startswith("L['self']")


def _inline_scalar(gm: torch.fx.GraphModule, node: torch.fx.Node, value: torch.Tensor) -> None:
    """Replace ``node.item()`` reads of a 0-d module attribute (dynamo lifts float attributes such as
    a layer norm's eps this way under dynamic=True) by the Python number itself."""
    number = value.item()
    for user in list(node.users):
        if user.op == "call_method" and user.target == "item":
            for reader in list(user.users):
                reader.args = tuple(number if a is user else a for a in reader.args)
                reader.kwargs = {k: (number if v is user else v) for k, v in reader.kwargs.items()}
            gm.graph.erase_node(user)
    gm.recompile()


def _plan(gm: torch.fx.GraphModule, example_inputs: Sequence):
    """(plan, constants, data tensors, dynamic dims per data tensor) for :class:`_DataOnly`."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    plan, constants, data, dynamic = [], [], [], []
    where: dict[str, tuple[int, int]] = {}
    for node, example in zip(placeholders, example_inputs):
        if isinstance(example, torch.Tensor) and (isinstance(example, torch.nn.Parameter) or _is_module_state(node)):
            if example.dim() == 0:
                _inline_scalar(gm, node, example)
            plan.append(("constant", len(constants), None))
            constants.append(example)
        elif isinstance(example, torch.Tensor):
            fake = node.meta.get("example_value")
            dims = {}
            for axis, size in enumerate(getattr(fake, "shape", ())):
                symbol = _symbol(size)
                if symbol is not None:
                    dims[axis] = symbol
                    where.setdefault(symbol, (len(data), axis))
            plan.append(("data", len(data), None))
            data.append(example)
            dynamic.append(dims)
        else:
            plan.append(("size", None, _symbol(node.meta.get("example_value")) or str(example)))
    for index, (kind, first, second) in enumerate(plan):
        if kind == "size":
            if second not in where:
                raise leangraph.errors.CaptureError(
                    f"torch.compile graph input '{placeholders[index].name}' is a size ({second}) that is not the "
                    "dim of any tensor input", hint="compile with dynamic=False, or report the model")
            plan[index] = ("size", *where[second])
    return plan, constants, data, dynamic


def leangraph_backend(gm: torch.fx.GraphModule, example_inputs: Sequence, options: dict | None = None, **extra):
    """The backend dynamo calls: returns a callable with the graph's signature. ``options`` (from
    ``torch.compile(..., options={...})``) override OPTIONS for this model: optimize()'s keyword
    arguments, e.g. {"backend": "onnxruntime", "tolerance": leangraph.Tolerance(...)}."""
    import inspect

    options = {**(options or {}), **extra}
    allowed = set(inspect.signature(leangraph.optimize).parameters) - {"model", "example_inputs", "dynamic_shapes"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise OptionError(f"torch.compile(backend='leangraph') options {unknown} are not leangraph's "
                          f"(it takes {', '.join(sorted(allowed))})",
                          hint="pass options={'backend': 'onnxruntime'} and the like; mode= is for inductor")
    settings = {**OPTIONS, **options}
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(x, torch.Tensor) and x.requires_grad and not isinstance(x, torch.nn.Parameter)
        for x in example_inputs)
    if needs_grad:
        warnings.warn("leangraph compiles inference graphs; this graph needs autograd and runs eagerly "
                      "(call the model under torch.no_grad() or torch.inference_mode())", stacklevel=2)
        return gm.forward
    plan, constants, _, dynamic = _plan(gm, example_inputs)
    module = _DataOnly(gm, plan, constants).eval()
    data_positions = [i for i, (kind, _, _) in enumerate(plan) if kind == "data"]
    compiled: list[leangraph.CompiledModel] = []
    lock = threading.Lock()

    def run(*args):
        data = [args[i] for i in data_positions]
        if not compiled:
            # Captured on the first call, with its real tensors: exporting from inside dynamo's own
            # compile step would trace against dynamo's guards.
            with lock:
                if not compiled:
                    compiled.append(leangraph.optimize(module, tuple(data), dynamic_shapes=(tuple(dynamic),),
                                                       **settings))
                    leangraph_backend.last_compiled = compiled[0]  # the latest graph's report, for debugging
        outputs = compiled[0](*data)
        return outputs if isinstance(outputs, (tuple, list)) else (outputs,)

    return run


def register() -> None:
    from torch._dynamo import list_backends, register_backend

    if "leangraph" not in list_backends(exclude_tags=()):
        register_backend(name="leangraph")(leangraph_backend)
