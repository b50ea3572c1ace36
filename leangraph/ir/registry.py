"""The `leangraph` op domain: one :class:`OpDef` per op, each with a schema, a shape rule, a numpy
reference implementation and a decomposition into standard ONNX.

The reference implementation is what the reference interpreter runs (the oracle of every
verification); the decomposition is how a backend without a native kernel runs the op (ONNX Runtime
gets the op lowered back to ONNX). The two are tested against each other for every op.

A new op is one module under ``leangraph/ir/ops/`` that calls :func:`register`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from leangraph.errors import UnsupportedOpError

DOMAIN = "leangraph"
DOMAIN_VERSION = 1

Dim = int | str | None
"""A dimension in a shape rule: a size, a symbol, or unknown."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """What a shape rule knows of a value: its dtype and its shape (None = unknown rank)."""

    dtype: ir.DataType | None
    shape: tuple[Dim, ...] | None

    @classmethod
    def of(cls, value: ir.Value | None) -> TensorInfo | None:
        if value is None:
            return None
        shape = None
        if value.shape is not None:
            shape = tuple(
                d if isinstance(d, int) else (d.value if d.value is not None else None)
                for d in value.shape
            )
        return cls(value.dtype, shape)


ShapeRule = Callable[[Sequence["TensorInfo | None"], Mapping[str, Any]], list[TensorInfo]]
Reference = Callable[..., tuple[np.ndarray, ...]]
Decomposition = Callable[[ir.tape.Tape, Sequence["ir.Value | None"], Mapping[str, Any]], list[ir.Value]]


@dataclasses.dataclass(frozen=True)
class OpDef:
    """Schema and semantics of one `leangraph` op.

    ``inputs`` names the inputs in order; a trailing ``?`` marks an optional one. ``attributes``
    maps each attribute to its default, whose Python type is the attribute's type.
    """

    name: str
    doc: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: Mapping[str, Any]
    shape_rule: ShapeRule
    reference: Reference
    decompose: Decomposition

    @property
    def min_inputs(self) -> int:
        return sum(1 for name in self.inputs if not name.endswith("?"))

    def attrs_of(self, node: ir.Node) -> dict[str, Any]:
        """The node's attributes with defaults filled in, as plain Python values."""
        values = dict(self.attributes)
        for name, attr in node.attributes.items():
            if name not in self.attributes:
                raise UnsupportedOpError(
                    f"node '{node.name}' (leangraph::{self.name}) has attribute '{name}', "
                    f"which leangraph::{self.name} does not define "
                    f"(it takes {sorted(self.attributes) or 'no attributes'})",
                    hint="remove the attribute or check the op's documentation in docs/ops.md",
                )
            values[name] = attr.value
        return values

    def check_arity(self, node: ir.Node) -> None:
        n = len(node.inputs)
        if not self.min_inputs <= n <= len(self.inputs):
            raise UnsupportedOpError(
                f"node '{node.name}' (leangraph::{self.name}) has {n} inputs; "
                f"leangraph::{self.name} takes {self.min_inputs} to {len(self.inputs)} "
                f"({', '.join(self.inputs)})",
                hint="fix the node's inputs",
            )
        if len(node.outputs) != len(self.outputs):
            raise UnsupportedOpError(
                f"node '{node.name}' (leangraph::{self.name}) has {len(node.outputs)} outputs; "
                f"leangraph::{self.name} produces {len(self.outputs)} ({', '.join(self.outputs)})",
                hint="fix the node's outputs",
            )


_REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    if op.name in _REGISTRY:
        raise ValueError(f"leangraph::{op.name} is registered twice")
    _REGISTRY[op.name] = op
    return op


def lookup(op_type: str) -> OpDef:
    """The definition of ``leangraph::op_type``; raises :class:`UnsupportedOpError` if unknown."""
    try:
        return _REGISTRY[op_type]
    except KeyError:
        raise UnsupportedOpError(
            f"leangraph::{op_type} is not a leangraph op (known: {', '.join(sorted(_REGISTRY))})",
            hint="check the op name, or register the op with leangraph.ir.register",
        ) from None


def attributes_of(node: ir.Node) -> dict[str, Any]:
    """A node's attributes as plain Python values; for a leangraph op with its defaults filled in."""
    if node.domain == DOMAIN:
        return lookup(node.op_type).attrs_of(node)
    return {name: attr.value for name, attr in node.attributes.items()}


def is_registered(op_type: str) -> bool:
    return op_type in _REGISTRY


def all_ops() -> list[OpDef]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]
