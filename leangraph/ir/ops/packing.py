"""leangraph::PackTokens and leangraph::UnpackTokens: between padded [batch, seq, ...] tensors and
the valid tokens packed together, [tokens, ...].

``PackTokens(x, mask)`` keeps the rows ``x[b, s]`` where ``mask[b, s]`` is non-zero, in row-major
order (sequence by sequence, each in its own order); ``x`` may have batch 1, which broadcasts (as
position embeddings do). ``UnpackTokens(packed, mask)`` puts them back and fills the padded
positions with zeros. ``tokens`` names the packed dim, whose size is only known at run time (the
number of non-zeros of the mask). The padding-removal pass inserts them around the token-wise part
of a model (passes/redundancy/padding_removal.py).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from leangraph.ir.ops._util import const
from leangraph.ir.registry import OpDef, TensorInfo, register


def _valid(mask: np.ndarray) -> np.ndarray:
    if mask.ndim != 2:
        raise ValueError(f"the padding mask must be [batch, seq], got shape {list(mask.shape)}")
    return mask != 0


def _pack_reference(x, mask, tokens="tokens"):
    valid = _valid(mask)
    if x.ndim < 2 or x.shape[1] != valid.shape[1] or x.shape[0] not in (1, valid.shape[0]):
        raise ValueError(f"cannot pack shape {list(x.shape)} with a mask of shape {list(mask.shape)}")
    return (np.broadcast_to(x, valid.shape + x.shape[2:])[valid],)


def _unpack_reference(packed, mask, tokens="tokens"):
    valid = _valid(mask)
    if packed.shape[0] != int(valid.sum()):
        raise ValueError(f"{packed.shape[0]} packed tokens, but the mask has {int(valid.sum())} valid positions")
    out = np.zeros(valid.shape + packed.shape[1:], dtype=packed.dtype)
    out[valid] = packed
    return (out,)


def _pack_shape(inputs, attrs):
    x = inputs[0]
    return [TensorInfo(x.dtype, None if x.shape is None else (attrs["tokens"], *x.shape[2:]))]


def _unpack_shape(inputs, attrs):
    packed, mask = inputs[0], inputs[1]
    if packed.shape is None or mask.shape is None:
        return [TensorInfo(packed.dtype, None)]
    return [TensorInfo(packed.dtype, (*mask.shape, *packed.shape[1:]))]


def valid_indices(tape: ir.tape.Tape, mask: ir.Value) -> ir.Value:
    """[tokens] int64: the flat positions (b * seq + s) of the valid tokens, in order."""
    flat = tape.op("Reshape", [mask, const(tape, [-1], np.int64)])
    return tape.op("Reshape", [tape.op("NonZero", [flat]), const(tape, [-1], np.int64)])


def packed_rows(tape: ir.tape.Tape, mask: ir.Value) -> ir.Value:
    """[batch * seq] int64: each valid position's row in the packed order (the count of valid
    positions before it); a padded position gets its predecessor's row, -1 before the first."""
    flat = tape.op("Cast", [tape.op("Cast", [tape.op("Reshape", [mask, const(tape, [-1], np.int64)])],
                                    {"to": int(ir.DataType.BOOL)})], {"to": int(ir.DataType.INT64)})
    return tape.op("Sub", [tape.op("CumSum", [flat, const(tape, 0, np.int64)]), const(tape, 1, np.int64)])


def pack(tape: ir.tape.Tape, x: ir.Value, mask: ir.Value) -> ir.Value:
    """The valid rows of ``x`` (x may have batch 1, expanded to the mask's batch first)."""
    trailing = tape.op("Shape", [x], {"start": 2})
    padded = tape.op("Expand", [x, tape.op("Concat", [tape.op("Shape", [mask]), trailing], {"axis": 0})])
    rows = tape.op("Reshape", [padded, tape.op("Concat", [const(tape, [-1], np.int64), trailing], {"axis": 0})])
    return tape.op("Gather", [rows, valid_indices(tape, mask)], {"axis": 0})


def unpack(tape: ir.tape.Tape, packed: ir.Value, mask: ir.Value) -> ir.Value:
    """One Gather over the packed rows and a zero row: every padded position reads the zero row.
    (A zero buffer and ScatterND write the padded size twice and scatter per element.)"""
    if packed.dtype is None:
        raise ValueError("decomposing leangraph::UnpackTokens needs the dtype of its packed input")
    width = tape.op("Shape", [packed], {"start": 1})
    tokens = tape.op("Shape", [packed], {"start": 0, "end": 1})
    zero_row = tape.op("ConstantOfShape", [tape.op("Concat", [const(tape, [1], np.int64), width], {"axis": 0})],
                       {"value": ir.tensor(np.zeros(1, dtype=packed.dtype.numpy()))})
    rows = tape.op("Concat", [packed, zero_row], {"axis": 0})
    valid = tape.op("Cast", [tape.op("Reshape", [mask, const(tape, [-1], np.int64)])], {"to": int(ir.DataType.BOOL)})
    source = tape.op("Where", [valid, packed_rows(tape, mask), tokens])
    gathered = tape.op("Gather", [rows, source], {"axis": 0})
    return tape.op("Reshape", [gathered, tape.op("Concat", [tape.op("Shape", [mask]), width], {"axis": 0})])


PACK_TOKENS = register(
    OpDef(
        name="PackTokens",
        doc=__doc__,
        inputs=("x", "mask"),
        outputs=("packed",),
        attributes={"tokens": "tokens"},
        shape_rule=_pack_shape,
        reference=_pack_reference,
        decompose=lambda tape, inputs, attrs: [pack(tape, inputs[0], inputs[1])],
    )
)

UNPACK_TOKENS = register(
    OpDef(
        name="UnpackTokens",
        doc=__doc__,
        inputs=("packed", "mask"),
        outputs=("x",),
        attributes={"tokens": "tokens"},
        shape_rule=_unpack_shape,
        reference=_unpack_reference,
        decompose=lambda tape, inputs, attrs: [unpack(tape, inputs[0], inputs[1])],
    )
)
