"""The newest ONNX opset and IR version leangraph works at: what both the installed onnx and ONNX
Runtime (the baseline and fallback backend every model must be able to run on) read.

The installed onnx writes versions ONNX Runtime does not take yet (onnx 1.23: IR version 14 and the
in-development opset 28, against ONNX Runtime 1.31's 13 and 26), and ONNX Runtime has no API that
says what it takes: each is measured once, with a one-node model tried at each version, newest
first."""

from __future__ import annotations

import functools

import onnx


def _loads(ir_version: int, opset: int) -> bool:
    import onnxruntime as ort

    proto = onnx.helper.make_model(
        onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]),
        opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=ir_version)
    try:
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # "Unsupported model IR version: 14, max supported IR version: 13"
        return False
    return True


@functools.cache
def newest_ir_version() -> int:
    """A model of a newer IR version that uses nothing of it runs unchanged at this one; one that
    does fails to load, as it would have."""
    return next((v for v in range(onnx.IR_VERSION, 7, -1) if _loads(v, 13)), 8)


@functools.cache
def newest_opset() -> int:
    """Models at a newer opset are converted down to this one on import."""
    return next((o for o in range(onnx.defs.onnx_opset_version(), 13, -1) if _loads(newest_ir_version(), o)), 13)
