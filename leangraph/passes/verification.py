"""Output-level comparison of a candidate graph against the reference: the error budget and the
check every pass goes through."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import math

import numpy as np
import onnx_ir as ir

from leangraph.errors import OptionError


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """An output-level error budget: every output within rtol/atol of the reference, and (when
    set) the cosine similarity of each output to the reference at least ``min_cosine``."""

    rtol: float = 1e-4
    atol: float = 1e-5
    min_cosine: float | None = None

    def __post_init__(self) -> None:
        # A NaN bound compares False everywhere, so it would pass every candidate; a negative one
        # fails every candidate, so it would revert every pass without saying the budget is impossible.
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if not is_real_number(value) or not math.isfinite(value) or value < 0:
                raise OptionError(f"Tolerance({name}={value!r}): {name} must be a finite number >= 0",
                                  hint="e.g. Tolerance(rtol=1e-3, atol=1e-4); 0 allows no error")
        if self.min_cosine is not None and (not is_real_number(self.min_cosine) or not -1.0 <= self.min_cosine <= 1.0):
            raise OptionError(f"Tolerance(min_cosine={self.min_cosine!r}): a cosine similarity lies in [-1, 1]",
                              hint="e.g. Tolerance(rtol=1e-2, atol=1e-3, min_cosine=0.999), or leave it None")

    @property
    def is_exact(self) -> bool:
        """Whether this budget allows no more than fp32 round-off (no lossy passes)."""
        return self.rtol <= EXACT.rtol and self.atol <= EXACT.atol and self.min_cosine in (None, 1.0)


def is_real_number(value) -> bool:
    """A Python or numpy int or float, not a bool (True is an int to Python, not a bound to us)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


EXACT = Tolerance()


VALID_WHERE = "leangraph.valid_where"
"""Metadata of a graph output whose padded positions hold zeros instead of the original's unused
values (set by padding removal): the name of the padding-mask input."""


def valid_positions(model: ir.Model, inputs: dict[str, np.ndarray]) -> list[np.ndarray | None]:
    """Per graph output, the [batch, seq] positions to compare (None: all of them)."""
    masks = []
    for value in model.graph.outputs:
        mask_name = value.metadata_props.get(VALID_WHERE)
        masks.append(None if mask_name is None or mask_name not in inputs else np.asarray(inputs[mask_name]) != 0)
    return masks


def compare_outputs(
    got: Sequence[np.ndarray], expected: Sequence[np.ndarray], names: Sequence[str], tolerance: Tolerance,
    valid: Sequence[np.ndarray | None] | None = None,
) -> str | None:
    """None when ``got`` is within ``tolerance`` of ``expected``, else why not (for the report).
    ``valid`` (per output, [batch, seq] booleans or None) restricts the comparison to those positions."""
    if len(got) != len(expected):
        return f"{len(got)} outputs, expected {len(expected)}"
    for name, g, e, keep in zip(names, got, expected, valid or [None] * len(got)):
        if isinstance(e, (list, tuple)) or e is None:  # a sequence or optional output
            if e is None or g is None:
                if (e is None) != (g is None):
                    return f"output '{name}' is {'empty' if g is None else 'present'}, expected otherwise"
                continue
            if not isinstance(g, (list, tuple)) or len(g) != len(e):
                return f"output '{name}' is not a sequence of {len(e)} tensors"
            inner = compare_outputs(g, e, [f"{name}[{i}]" for i in range(len(e))], tolerance)
            if inner:
                return inner
            continue
        g, e = np.asarray(g), np.asarray(e)
        if g.shape != e.shape:
            return f"output '{name}' has shape {list(g.shape)}, expected {list(e.shape)}"
        if keep is not None and g.shape[:2] == keep.shape:
            g, e = g[keep], e[keep]
        if e.dtype.kind not in "fc":
            if not np.array_equal(g, e):
                return f"output '{name}' differs in {int(np.sum(g != e))} of {e.size} elements"
            continue
        g64, e64 = g.astype(np.float64), e.astype(np.float64)
        same_nan = np.isnan(g64) == np.isnan(e64)
        if not same_nan.all():
            return f"output '{name}' has NaN in different places ({int((~same_nan).sum())} elements)"
        finite = ~np.isnan(e64)
        error = np.abs(g64 - e64)[finite]
        allowed = tolerance.atol + tolerance.rtol * np.abs(e64)[finite]
        if error.size and (error > allowed).any():
            worst = int(np.argmax(error - allowed))
            return (f"output '{name}': max |diff| {error.max():.3g} exceeds atol {tolerance.atol:g} + "
                    f"rtol {tolerance.rtol:g}*|ref| ({int((error > allowed).sum())} of {error.size} elements; "
                    f"worst {error[worst]:.3g} vs allowed {allowed[worst]:.3g})")
        if tolerance.min_cosine is not None:
            a, b = g64.reshape(-1), e64.reshape(-1)
            cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
            if cosine < tolerance.min_cosine:
                return f"output '{name}': cosine {cosine:.6f} below {tolerance.min_cosine}"
    return None


def verification_sample(input_sets: Sequence[Sequence[np.ndarray]], count: int) -> list[int]:
    """Indices of up to ``count`` input sets that every pass is verified on: the first, the one
    with the largest part of zeros in its integer inputs (the most padding), the smallest, then the
    rest in order. Small sets because the reference interpreter's time grows with them: ~0.5 s per
    MiniLM batch of 32, and 12 changed passes verified on 20 STS-B calibration batches took 118 s of
    a 267 s budgeted optimize(); the model the passes produce is then checked on every set at once
    (optimize.py)."""
    if len(input_sets) <= count:
        return list(range(len(input_sets)))

    def size(i):
        return sum(int(np.size(a)) for a in input_sets[i])

    def padding(i):
        integers = [a for a in input_sets[i] if isinstance(a, np.ndarray) and a.dtype.kind in "iub" and a.size]
        return sum(int(np.count_nonzero(a == 0)) / a.size for a in integers)

    indices = range(len(input_sets))
    picked = list(dict.fromkeys([0, max(indices, key=padding), min(indices, key=size), *indices]))
    return sorted(picked[:count])
