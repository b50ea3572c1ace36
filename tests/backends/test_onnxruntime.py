"""ONNX Runtime backend: the sessions it opens."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from leangraph.backends.onnxruntime import inference_session, session_options

RESIDUAL_NORM = """<ir_version: 10, opset_import: ["" : 20]>
g (float[1, 7, 16] x, float[1, 7, 16] residual) => (float[1, 7, 16] y) <float[16] gamma, float[16] beta> {
    s = Add(x, residual)
    y = LayerNormalization<axis=-1, epsilon=1e-5>(s, gamma, beta)
}"""


def _fused_ops(tmp_path, open_session) -> set[str]:
    model = onnx.parser.parse_model(RESIDUAL_NORM)
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.ones(16, np.float32), "gamma"),
                                    onnx.numpy_helper.from_array(np.zeros(16, np.float32), "beta")])
    options = session_options(threads=1)
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    open_session(model.SerializeToString(), options)
    return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}


def test_sessions_leave_residual_add_and_layer_norm_unfused(tmp_path):
    # ONNX Runtime's own default fuses them into SkipLayerNormalization, slower on CPU.
    plain = _fused_ops(tmp_path, lambda model, options: ort.InferenceSession(model, options,
                                                                          providers=["CPUExecutionProvider"]))
    assert "SkipLayerNormalization" in plain
    ours = _fused_ops(tmp_path, inference_session)
    assert "SkipLayerNormalization" not in ours and {"Add", "LayerNormalization"} <= ours
