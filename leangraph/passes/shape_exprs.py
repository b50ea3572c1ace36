"""Reading shape arithmetic: what each element of a 1-D int64 shape tensor is.

The exporters build reshape targets as ``Concat(Slice(Shape(x), i, i+1), [-1], [32], ...)`` (torch.export)
or ``Concat(Unsqueeze(Gather(Shape(x), i)), ...)`` (TorchScript). For a
rule to reason about such a tensor it needs, element by element: a constant, or "dim i of value v"
(with the symbol torch.export gave that dim, when known).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

_MAX = 2**62


@dataclasses.dataclass(frozen=True)
class Dim:
    """Dim ``index`` of ``source`` (a runtime size)."""

    source: ir.Value
    index: int

    @property
    def symbol(self) -> int | str | None:
        """The size or symbol recorded for this dim, if the graph knows it."""
        shape = self.source.shape
        if shape is None or self.index >= len(shape):
            return None
        dim = shape[self.index]
        return dim if isinstance(dim, int) else dim.value


Element = int | Dim


def const_ints(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None or value.is_graph_input():  # an input's default is no constant
        return None
    array = value.const_value.numpy()
    if array.dtype.kind not in "iu":
        return None
    return [int(x) for x in array.reshape(-1)]


def _shape_dims(node: ir.Node) -> list[Dim] | None:
    """The dims a Shape node returns, as Dim elements (needs its input's rank)."""
    source = node.inputs[0]
    if source is None or source.shape is None:
        return None
    rank = len(source.shape)
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", rank)
    start, end = (s + rank if s < 0 else s for s in (start, end))
    return [Dim(source, i) for i in range(max(0, start), min(end, rank))]


def elements(value: ir.Value | None) -> list[Element] | None:
    """The elements of a 1-D shape tensor, or None when they cannot be read off the graph."""
    ints = const_ints(value)
    if ints is not None:
        return list(ints)
    if value is None or value.producer() is None:
        return None
    node = value.producer()
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Shape":
        return _shape_dims(node)
    if node.op_type == "Concat":
        result: list[Element] = []
        for part in node.inputs:
            part_elements = elements(part)
            if part_elements is None:
                return None
            result.extend(part_elements)
        return result
    if node.op_type == "Slice":
        data = elements(node.inputs[0])
        starts, ends = const_ints(node.inputs[1]), const_ints(node.inputs[2])
        axes = const_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else [0]
        steps = const_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
        if data is None or starts is None or ends is None or axes != [0] or steps != [1]:
            return None
        n = len(data)
        start, end = (int(np.clip(s + n if s < 0 else s, 0, n)) for s in (starts[0], ends[0]))
        return data[start:end]
    if node.op_type == "Gather" and node.attributes.get_int("axis", 0) == 0:
        # TorchScript's exporter reads a dim as Gather(Shape(x), i) (a scalar, unsqueezed after)
        data, indices = elements(node.inputs[0]), const_ints(node.inputs[1])
        if data is None or indices is None or not all(-len(data) <= i < len(data) for i in indices):
            return None
        return [data[i] for i in indices]
    if node.op_type in ("Squeeze", "Unsqueeze", "Identity"):
        inner = elements(node.inputs[0])
        return inner if inner is not None and len(inner) == 1 else None
    return None


def same_dim(element: Element, target: ir.Value, index: int) -> bool:
    """Whether ``element`` is certainly the size of dim ``index`` of ``target``."""
    if isinstance(element, Dim):
        if element.source is target and element.index == index:
            return True
        symbol = element.symbol
        return symbol is not None and Dim(target, index).symbol == symbol
    return element >= 0 and Dim(target, index).symbol == element
