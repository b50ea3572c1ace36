"""Kernel timings (cost_model.linear_kernels): every backend's fp32 and int8 linear kernel is timed."""

import numpy as np

from leangraph.cost_model.linear_kernels import BACKEND_KERNELS, time_kernels


def test_every_backend_kernel_is_timed():
    weight = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
    seconds = time_kernels(weight, rows=32)
    names = {name for kernels in BACKEND_KERNELS.values() for name in (kernels["fp32"], *kernels["int8"])}
    assert set(seconds) == names
    assert all(0 < s < 1 for s in seconds.values()), seconds
