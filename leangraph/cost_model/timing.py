"""How the cost model times a call: once to warm up, then ``rounds`` rounds of ``calls`` calls,
the median of the per-call averages (this machine is noisy; medians, not means)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], *, calls: int = 1, rounds: int = 5) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)
