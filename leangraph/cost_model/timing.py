"""How the cost model times a call: warmed up for WARMUP_SECONDS, then ``rounds`` rounds of
``calls`` calls, the median of the per-call averages (this machine is noisy; medians, not means)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

WARMUP_SECONDS = 0.1
"""How long a callable runs before it is timed. One warm-up call is not enough: a fresh ONNX
Runtime session ran its first ~100 calls 2-4x slower than its later ones (int8 [512, 384] x
[384, 384]: 0.45, 0.36, 0.13, 0.11 ms per call in successive rounds of 50), and the kernel table
then had the int8 kernel slower than fp32 at that shape, so six layers stayed fp32."""


def median_seconds(fn: Callable[[], object], *, calls: int = 1, rounds: int = 5,
                   warmup: float = WARMUP_SECONDS) -> float:
    stop = time.perf_counter() + warmup
    fn()
    while time.perf_counter() < stop:
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)
