"""Kernels that replace onnx.reference's own for standard ops where it is wrong.

Each override says what is wrong upstream; each has a test against ONNX Runtime in
tests/backends/test_reference_kernels.py.
"""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun


class GatherElements(OpRun):
    """onnx 1.23's GatherElements requires ``indices`` to match ``data`` on every axis but ``axis``
    (it raises on BERT's position-id gather, where indices are smaller). ONNX only asks for equal
    rank: the output has the shape of ``indices``."""

    def _run(self, data, indices, axis=0):
        axis = axis % data.ndim
        indices = np.where(indices < 0, indices + data.shape[axis], indices).astype(np.int64)
        window = tuple(slice(0, n) if d != axis else slice(None) for d, n in enumerate(indices.shape))
        return (np.take_along_axis(data[window], indices, axis=axis),)


OVERRIDES = [GatherElements]
