"""from_onnxruntime_ops: a model ONNX Runtime's transformers optimizer wrote (EmbedLayerNormalization,
Attention, SkipLayerNormalization, BiasGelu) is read back into leangraph ops and computes what ONNX
Runtime computes on the file."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import leangraph
from leangraph.demo import sentence_encoder
from tests.zoo import ZOO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ort_optimized(tmp_path_factory):
    from onnxruntime.transformers.optimizer import optimize_model

    import transformers

    from tests.zoo import _BERTISH

    config = transformers.BertConfig(**_BERTISH)
    config._attn_implementation = "eager"  # the form ONNX Runtime's optimizer fuses into its Attention
    torch.manual_seed(0)
    model = sentence_encoder(transformers.BertModel(config).eval())
    ids, mask = ZOO["bert"].inputs(2, 7)
    folder = tmp_path_factory.mktemp("ortopt")
    exported = folder / "bert.onnx"
    torch.onnx.export(model, (ids, mask), str(exported), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                      dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}})
    optimized = optimize_model(str(exported), model_type="bert", num_heads=4, hidden_size=32)
    path = folder / "bert_ortopt.onnx"
    optimized.save_model_to_file(str(path))
    return path


def test_contrib_ops_are_read_back_and_match_onnxruntime(ort_optimized):
    ops = {(n.domain, n.op_type) for n in onnx.load(ort_optimized).graph.node}
    assert ("com.microsoft", "Attention") in ops and ("com.microsoft", "SkipLayerNormalization") in ops
    ids, mask = (x.numpy() for x in ZOO["bert"].inputs(2, 7))
    other_ids, other_mask = (x.numpy() for x in ZOO["bert"].inputs(3, 11))  # right-padded, other shape
    cm = leangraph.optimize(str(ort_optimized), (ids, mask), backend="onnxruntime")
    (record,) = [r for r in cm.report.records if r.name == "from_onnxruntime_ops"]
    assert {"ms_attention", "ms_embed_layer_norm"} <= set(record.fired) and record.verified, record.fired
    assert not any(n.domain == "com.microsoft" for n in cm.graph.graph)
    assert any(n.op_type == "MultiHeadAttention" for n in cm.graph.graph)
    session = ort.InferenceSession(str(ort_optimized), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input_ids": other_ids, "attention_mask": other_mask})[0]
    np.testing.assert_allclose(cm(other_ids, other_mask), expected, rtol=1e-5, atol=1e-6)


def test_length_masks_are_not_packed_and_the_report_says_why(ort_optimized):
    ids, mask = (x.numpy() for x in ZOO["bert"].inputs(2, 7))
    cm = leangraph.optimize(str(ort_optimized), (ids, mask), backend="onnxruntime")
    (record,) = [r for r in cm.report.records if r.name == "remove_padding"]
    assert not record.changed and "hides keys by position" in record.notes[0], record.notes
