"""find_kv_cache (passes/kv_reuse/existing_kv_cache.py): a decoder's own cache inputs and outputs
read off their names and shapes, or why they cannot be driven; no past inputs -> None."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from leangraph.passes.kv_reuse.existing_kv_cache import find_kv_cache

B, S, P, T = (ir.SymbolicDim(n) for n in ("batch", "seq", "past", "total"))


def _value(name, dims, dtype=ir.DataType.FLOAT):
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(dims))


def _model(inputs, outputs) -> ir.Model:
    nodes = [ir.Node("", "Identity", [inputs[0]], outputs=[out], name=f"make_{out.name}") for out in outputs]
    return ir.Model(ir.Graph(inputs, outputs, nodes=nodes, opset_imports={"": 20}), ir_version=10)


def _decoder(past_names, present_names, extra=()):
    inputs = [_value("input_ids", [B, S], ir.DataType.INT64), _value("attention_mask", [B, T], ir.DataType.INT64),
              *extra, *[_value(n, [B, 2, P, 8]) for n in past_names]]
    outputs = [_value("logits", [B, S, 100]), *[_value(n, [B, 2, T, 8]) for n in present_names]]
    return _model(inputs, outputs)


@pytest.mark.parametrize("past, present", [
    (["past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"],
     ["present.0.key", "present.0.value", "present.1.key", "present.1.value"]),  # optimum, onnxruntime-genai
    (["past_key_values_0_0", "past_key_values_0_1", "past_key_values_1_0", "past_key_values_1_1"],
     ["present_0_0", "present_0_1", "present_1_0", "present_1_1"]),
    (["past_key_0", "past_value_0", "past_key_1", "past_value_1"],
     ["present_key_0", "present_value_0", "present_key_1", "present_value_1"]),
])
def test_cache_tensors_are_paired_by_layer_and_role(past, present):
    extra = [_value("position_ids", [B, S], ir.DataType.INT64), _value("use_cache_branch", [1], ir.DataType.BOOL)]
    layout = find_kv_cache(_decoder(past[::-1], present, extra))  # order does not matter
    assert layout.past == [(past[0], past[1]), (past[2], past[3])]
    assert layout.present == [(present[0], present[1]), (present[2], present[3])]
    assert layout.seq_axis == [2, 2] and layout.logits == "logits"
    assert layout.other_inputs == ["position_ids"] and layout.positions_new_only
    assert layout.flags == ["use_cache_branch"]


def test_a_decoder_without_past_inputs_gets_none():
    assert find_kv_cache(_decoder([], [])) is None


def test_caches_that_cannot_be_driven_say_why():
    found = find_kv_cache(_decoder(["past_key_values.0.key"], ["present.0.key"]))
    assert "layer 0 has a key but no value" in found
    found = find_kv_cache(_decoder(["past_key_values.0.key", "past_key_values.0.value"],
                                   ["present.0.key", "present.0.value", "present.1.key", "present.1.value"]))
    assert "past layers [0] and present layers [0, 1] differ" in found
    found = find_kv_cache(_decoder(["past_key_values.0.key", "past_key_values.0.value"],
                                   ["present.0.key", "present.0.value"], [_value("pixel_values", [B, 3, 8, 8])]))
    assert "input 'pixel_values'" in found
