"""Every leangraph op: its numpy reference against its unfused ONNX form (the decomposition), run on
ONNX's reference evaluator and on ONNX Runtime, and its shape rule against the actual output."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from leangraph.backends.reference import run_reference
from leangraph.ir import DOMAIN, TARGET_OPSET, all_ops, infer_leangraph_shapes, lookup, lower_to_onnx


def single_op_model(op_type: str, inputs: list[np.ndarray | None], attrs: dict) -> ir.Model:
    """A model with one leangraph node over graph inputs shaped like ``inputs``."""
    values = []
    for i, array in enumerate(inputs):
        if array is None:
            values.append(None)
            continue
        values.append(ir.val(f"in{i}", ir.DataType.from_numpy(array.dtype), ir.Shape(array.shape)))
    node = ir.node(op_type, values, attrs, domain=DOMAIN, name=f"{op_type.lower()}_0",
                   num_outputs=len(lookup(op_type).outputs))
    graph = ir.Graph(
        [v for v in values if v is not None], node.outputs, nodes=[node],
        opset_imports={"": TARGET_OPSET, DOMAIN: 1}, name=op_type,
    )
    node.outputs[0].name = "out"
    model = ir.Model(graph, ir_version=10)
    infer_leangraph_shapes(model)
    return model


def lowered_proto(model: ir.Model):
    lowered = lower_to_onnx(ir.from_proto(ir.to_proto(model)))
    # A value given a shape but no dtype is dropped from the proto with a warning to the user.
    untyped = [v.name for node in lowered.graph for v in node.outputs if v.shape is not None and v.type is None]
    assert not untyped, f"decomposition left values shaped but untyped: {untyped}"
    return ir.to_proto(lowered)


def check_op(op_type, inputs, attrs, rtol=1e-5, atol=1e-6, packed=False):
    model = single_op_model(op_type, inputs, attrs)
    feeds = [x for x in inputs if x is not None]
    fused = run_reference(model, feeds)[0]
    proto = lowered_proto(model)
    assert all(n.domain != DOMAIN for n in proto.graph.node), "lowering left a leangraph op"
    names = [i.name for i in proto.graph.input]
    unfused_ref = ReferenceEvaluator(proto).run(None, dict(zip(names, feeds)))[0]
    unfused_ort = ort.InferenceSession(proto.SerializeToString()).run(None, dict(zip(names, feeds)))[0]
    np.testing.assert_allclose(fused, unfused_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(fused, unfused_ort, rtol=rtol, atol=atol)
    out = model.graph.outputs[0]
    assert out.dtype == ir.DataType.from_numpy(fused.dtype)
    if packed:  # the packed dim is a symbol: its size is the mask's count of valid tokens
        assert out.shape[0] == ir.SymbolicDim("tokens") and tuple(out.shape[1:]) == fused.shape[1:], out.shape
    else:
        assert tuple(out.shape) == fused.shape, (out.shape, fused.shape)
    return fused


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_every_registered_op_is_covered_here():
    assert {op.name for op in all_ops()} == {"Attention", "Bf16Linear", "DynamicQuantLinear", "Gelu", "LayerNorm", "MatMulBiasAct", "MultiHeadAttention",
                                                 "PackTokens", "PackedMultiHeadAttention", "RMSNorm", "SharedPrefixAttention",
                                                 "StaticQuantLinear", "UnpackTokens", "MergeTokens", "PruneTokens"}


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(rng, approximate):
    x = f32(rng, 3, 7, 16) * 3
    y = check_op("Gelu", [x], {"approximate": approximate})
    expected = torch.nn.functional.gelu(torch.from_numpy(x), approximate=approximate).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("axis", [-1, -2, 1])
def test_layer_norm(rng, with_bias, axis):
    x = f32(rng, 2, 5, 8)
    norm_shape = x.shape[axis:] if axis < 0 else x.shape[axis:]
    scale, bias = f32(rng, *norm_shape), f32(rng, *norm_shape)
    y = check_op("LayerNorm", [x, scale, bias if with_bias else None], {"axis": axis, "epsilon": 1e-5})
    expected = torch.nn.functional.layer_norm(
        torch.from_numpy(x), norm_shape, torch.from_numpy(scale),
        torch.from_numpy(bias) if with_bias else None, eps=1e-5,
    ).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_rms_norm(rng):
    x, scale = f32(rng, 2, 5, 8), f32(rng, 8)
    y = check_op("RMSNorm", [x, scale], {"epsilon": 1e-6})
    expected = torch.nn.functional.rms_norm(torch.from_numpy(x), (8,), torch.from_numpy(scale), eps=1e-6).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["none", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matmul_bias_act(rng, activation, with_bias):
    a, b, bias = f32(rng, 2, 6, 16), f32(rng, 16, 12), f32(rng, 12)
    check_op("MatMulBiasAct", [a, b, bias if with_bias else None], {"activation": activation}, rtol=1e-4, atol=1e-5)


def _sdpa(q, k, v, mask=None, causal=False, scale=None):
    return torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
        attn_mask=None if mask is None else torch.from_numpy(mask), is_causal=causal, scale=scale,
    ).numpy()


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
@pytest.mark.parametrize("causal", [0, 1])
def test_attention(rng, mask_kind, causal):
    q, k, v = f32(rng, 2, 4, 6, 8), f32(rng, 2, 4, 6, 8), f32(rng, 2, 4, 6, 8)
    mask = None
    if mask_kind == "bool":
        mask = np.ones((2, 1, 6, 6), dtype=bool)
        mask[0, :, :, 4:] = False  # padding of the first sequence; column 0 stays visible for causal rows
    elif mask_kind == "additive":
        mask = np.where(rng.random((2, 1, 1, 6)) < 0.3, -1e4, 0.0).astype(np.float32)
        mask[..., 0] = 0.0
    y = check_op("Attention", [q, k, v, mask], {"causal": causal}, rtol=1e-4, atol=1e-5)
    expected = _sdpa(q, k, v, mask if mask_kind == "bool" or mask is None else mask, causal=bool(causal) and mask is None)
    if causal and mask is not None:
        tril = np.tril(np.ones((6, 6), dtype=bool))
        combined = (tril & mask) if mask.dtype == bool else np.where(tril, mask, -np.inf).astype(np.float32)
        expected = _sdpa(q, k, v, combined)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_attention_explicit_scale_and_cross_lengths(rng):
    q, k, v = f32(rng, 1, 2, 3, 8), f32(rng, 1, 2, 5, 8), f32(rng, 1, 2, 5, 4)
    y = check_op("Attention", [q, k, v, None], {"scale": 0.5}, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, _sdpa(q, k, v, scale=0.5), rtol=1e-4, atol=1e-5)
    assert y.shape == (1, 2, 3, 4)


def test_attention_shape_rule_keeps_symbols():
    q = ir.val("q", ir.DataType.FLOAT, ir.Shape(["batch", 4, "seq", 8]))
    k = ir.val("k", ir.DataType.FLOAT, ir.Shape(["batch", 4, "seq", 8]))
    v = ir.val("v", ir.DataType.FLOAT, ir.Shape(["batch", 4, "seq", 16]))
    from leangraph.ir.registry import TensorInfo

    (out,) = lookup("Attention").shape_rule([TensorInfo.of(x) for x in (q, k, v)], {"scale": 0.0, "causal": 0})
    assert out.shape == ("batch", 4, "seq", 16) and out.dtype == ir.DataType.FLOAT


def test_default_scale_is_inverse_sqrt_head_size(rng):
    q, k, v = f32(rng, 1, 1, 2, 9), f32(rng, 1, 1, 2, 9), f32(rng, 1, 1, 2, 9)
    model = single_op_model("Attention", [q, k, v], {})
    explicit = single_op_model("Attention", [q, k, v], {"scale": 1 / math.sqrt(9)})
    np.testing.assert_allclose(run_reference(model, [q, k, v])[0], run_reference(explicit, [q, k, v])[0], rtol=1e-6)


def test_attention_row_with_no_visible_key_is_zero(rng):
    q, k, v = f32(rng, 1, 1, 3, 4), f32(rng, 1, 1, 3, 4), f32(rng, 1, 1, 3, 4)
    mask = np.ones((1, 1, 3, 3), dtype=bool)
    mask[0, 0, 1, :] = False
    y = check_op("Attention", [q, k, v, mask], {})
    np.testing.assert_array_equal(y[0, 0, 1], 0.0)
    np.testing.assert_allclose(y, _sdpa(q, k, v, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_mask", [False, True])
def test_multi_head_attention(rng, with_mask):
    q, k, v = f32(rng, 2, 5, 16), f32(rng, 2, 7, 16), f32(rng, 2, 7, 8)
    mask = np.where(rng.random((2, 1, 1, 7)) < 0.3, -1e9, 0.0).astype(np.float32) if with_mask else None
    y = check_op("MultiHeadAttention", [q, k, v, mask], {"num_heads": 4}, rtol=1e-4, atol=1e-5)
    split = lambda x: x.reshape(2, x.shape[1], 4, -1).transpose(0, 2, 1, 3)  # noqa: E731
    expected = _sdpa(split(q), split(k), split(v), mask).transpose(0, 2, 1, 3).reshape(2, 5, 8)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_lowered_node_names_are_unique():
    q = np.zeros((1, 3, 8), np.float32)
    model = single_op_model("MultiHeadAttention", [q, q, q], {"num_heads": 2})
    proto = lowered_proto(model)
    names = [n.name for n in proto.graph.node]
    assert len(names) == len(set(names)) and all(n.startswith("multiheadattention_0/") for n in names)


PADDING = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 1, 1, 1]], np.int64)


@pytest.mark.parametrize("batch", [4, 1])
@pytest.mark.parametrize("mask_dtype", [np.int64, np.bool_])
def test_pack_tokens(rng, batch, mask_dtype):
    x = f32(rng, batch, 5, 3, 2)
    packed = check_op("PackTokens", [x, PADDING.astype(mask_dtype)], {}, packed=True)
    expected = [np.broadcast_to(x, (4, 5, 3, 2))[b, s] for b in range(4) for s in range(5) if PADDING[b, s]]
    np.testing.assert_array_equal(packed, np.stack(expected))


def test_unpack_tokens_fills_padding_with_zeros(rng):
    packed = f32(rng, int(PADDING.sum()), 6)
    x = check_op("UnpackTokens", [packed, PADDING], {})
    np.testing.assert_array_equal(x[PADDING == 0], 0)
    np.testing.assert_array_equal(x[PADDING != 0], packed)


@pytest.mark.parametrize("causal", [0, 1])
def test_packed_multi_head_attention_is_masked_attention_on_valid_rows(rng, causal):
    tokens = int(PADDING.sum())
    q, k, v = f32(rng, tokens, 16), f32(rng, tokens, 16), f32(rng, tokens, 8)
    y = check_op("PackedMultiHeadAttention", [q, k, v, PADDING], {"num_heads": 4, "causal": causal},
                 rtol=1e-4, atol=1e-5)
    padded = []
    for x in (q, k, v):
        out = np.zeros((4, 5, x.shape[1]), np.float32)
        out[PADDING != 0] = x
        padded.append(torch.from_numpy(out).reshape(4, 5, 4, -1).transpose(1, 2))
    visible = torch.from_numpy(PADDING != 0)[:, None, None, :]
    if causal:
        visible = visible & torch.ones(5, 5, dtype=torch.bool).tril()
    expected = torch.nn.functional.scaled_dot_product_attention(*padded, attn_mask=visible)
    expected = expected.transpose(1, 2).reshape(4, 5, 8).numpy()[PADDING != 0]
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tokens", [int(PADDING.sum()), 0])
def test_packed_attention_over_one_split_reads_the_split_input(rng, tokens):
    # fuse_sibling_linears' Q, K, V: heads gathered from the fused projection, the Split removed.
    mask = PADDING if tokens else np.zeros_like(PADDING)
    x = ir.val("x", ir.DataType.FLOAT, ir.Shape(["tokens", 48]))
    m = ir.val("mask", ir.DataType.INT64, ir.Shape(list(mask.shape)))
    sizes = ir.Value(name="sizes", const_value=ir.tensor(np.array([16, 16, 16], np.int64)))
    split = ir.node("Split", [x, sizes], {"axis": -1}, num_outputs=3)
    for v in split.outputs:
        v.dtype, v.shape = ir.DataType.FLOAT, ir.Shape(["tokens", 16])
    attention = ir.node("PackedMultiHeadAttention", [*split.outputs, m], {"num_heads": 4}, domain=DOMAIN)
    graph = ir.Graph([x, m], attention.outputs, nodes=[split, attention], initializers=[sizes],
                     opset_imports={"": TARGET_OPSET, DOMAIN: 1}, name="qkv")
    model = ir.Model(graph, ir_version=10)
    feeds = [f32(rng, tokens, 48), mask]
    expected = run_reference(model, feeds)[0]
    proto = lowered_proto(model)
    assert "Split" not in {n.op_type for n in proto.graph.node}
    got = ort.InferenceSession(proto.SerializeToString()).run(None, dict(zip(["x", "mask"], feeds)))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got.shape == (tokens, 16)


def test_packed_multi_head_attention_of_a_batch_without_tokens_is_empty(rng):
    # Its decomposition gathers token rows; with no token its per-sequence layout has length 0, so
    # every gather is empty and no row is read (no If needed).
    y = check_op("PackedMultiHeadAttention", [f32(rng, 0, 16), f32(rng, 0, 16), f32(rng, 0, 8), np.zeros((3, 5), np.int64)],
                 {"num_heads": 4})
    assert y.shape == (0, 8)


def test_packed_attention_decomposition_spans_the_longest_sequence_not_the_mask(rng):
    # A batch padded to a fixed width attends over its longest sentence only: [batch, heads, 3, 3]
    # scores for a mask 16 wide whose sequences hold at most 3 tokens; and no If in the graph.
    mask = np.zeros((2, 16), np.int64)
    mask[0, :3], mask[1, 5:7] = 1, 1
    q, k, v = f32(rng, 5, 16), f32(rng, 5, 16), f32(rng, 5, 8)
    model = single_op_model("PackedMultiHeadAttention", [q, k, v, mask], {"num_heads": 4})
    proto = lowered_proto(model)
    assert "If" not in {n.op_type for n in proto.graph.node}
    softmax = next(n for n in proto.graph.node if n.op_type == "Softmax")
    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(softmax.output[0]))
    names = [i.name for i in proto.graph.input]
    outputs = ort.InferenceSession(proto.SerializeToString()).run(None, dict(zip(names, [q, k, v, mask])))
    assert outputs[-1].shape == (2, 4, 3, 3)
    np.testing.assert_allclose(outputs[0], run_reference(model, [q, k, v, mask])[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["none", "gelu"])
@pytest.mark.parametrize(("activation_bits", "weight_bits"), [(7, 8), (8, 7)])  # fbgemm's, ONNX Runtime's
def test_dynamic_quant_linear(rng, activation, activation_bits, weight_bits):
    from leangraph.ir.ops.quant_linear import quantize_weight

    a, w, bias = f32(rng, 2, 5, 16), f32(rng, 16, 6) * 0.1, f32(rng, 6)
    weight, scale = quantize_weight(w, weight_bits)
    # The decomposition computes the same integers: equal up to the float scaling.
    y = check_op("DynamicQuantLinear", [a, weight, scale, bias],
                 {"activation": activation, "activation_bits": activation_bits}, rtol=1e-5, atol=1e-5)
    exact = lookup("MatMulBiasAct").reference(a, w, bias, activation=activation)[0]
    assert np.abs(y - exact).max() / np.abs(exact).max() < 0.03


def test_dynamic_quant_linear_8_bit_activations(rng):
    # Checked on ONNX's evaluator only: ONNX Runtime's u8 x s8 MatMulInteger on AVX2 without VNNI
    # saturates int16 pair sums with 8-bit activations (hence activation_bits=7 by default).
    a, w = f32(rng, 3, 16), f32(rng, 16, 6) * 0.1
    scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    inputs = [a, np.round(w / scale).astype(np.int8), scale]
    model = single_op_model("DynamicQuantLinear", inputs, {"activation_bits": 8})
    proto = lowered_proto(model)
    unfused = ReferenceEvaluator(proto).run(None, dict(zip([i.name for i in proto.graph.input], inputs)))[0]
    np.testing.assert_allclose(run_reference(model, inputs)[0], unfused, rtol=1e-5, atol=1e-5)
    assert np.abs(unfused - a @ w).max() / np.abs(a @ w).max() < 0.015


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_static_quant_linear(rng, activation):
    from leangraph.ir.ops.quant_linear import quantize_weight
    from leangraph.ir.ops.static_quant_linear import calibrated_scale

    a, w, bias = f32(rng, 2, 5, 16), f32(rng, 16, 6) * 0.1, f32(rng, 6)
    weight, scale = quantize_weight(w, 7)
    a_scale, a_zero = calibrated_scale(a.min() * 0.8, a.max() * 0.8)  # the extremes saturate
    y = check_op("StaticQuantLinear", [a, np.array(a_scale), np.array(a_zero), weight, scale, bias],
                 {"activation": activation}, rtol=1e-5, atol=1e-5)
    exact = lookup("MatMulBiasAct").reference(a, w, bias, activation=activation)[0]
    assert np.abs(y - exact).max() / np.abs(exact).max() < 0.05


def test_static_quant_linear_saturates_outside_the_calibrated_range():
    a = np.array([[-4.0, -1.0, 0.0, 1.0, 4.0]], np.float32)
    weight, weight_scale = np.eye(5, dtype=np.int8), np.ones(5, np.float32)
    a_scale = np.float32(2.0 / 255)
    (y,) = lookup("StaticQuantLinear").reference(a, a_scale, np.uint8(128), weight, weight_scale)
    np.testing.assert_allclose(y[0], [-128 * a_scale, -1.0, 0.0, 1.0, 127 * a_scale], atol=a_scale / 2)


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_bf16_linear(rng, activation):
    from leangraph.ir.ops.bf16_linear import to_bfloat16

    a, w, bias = f32(rng, 2, 5, 16), f32(rng, 16, 6), f32(rng, 6)
    model = single_op_model("Bf16Linear", [a, to_bfloat16(w), bias], {"activation": activation})
    weight = model.graph.inputs.pop(1)  # a constant: ONNX Runtime takes no bfloat16 numpy input
    weight.const_value = ir.tensor(to_bfloat16(w))
    model.graph.register_initializer(weight)
    y = run_reference(model, [a, bias])[0]
    proto = lowered_proto(model)
    # float32 sums in another order may round to the neighbouring bfloat16 (2^-8 apart)
    for unfused in (ReferenceEvaluator(proto).run(None, {"in0": a, "in2": bias})[0],
                    ort.InferenceSession(proto.SerializeToString()).run(None, {"in0": a, "in2": bias})[0]):
        np.testing.assert_allclose(y, unfused, rtol=1e-2, atol=1e-2)
    exact = lookup("MatMulBiasAct").reference(a, w, bias, activation=activation)[0]
    assert 0 < np.abs(y - exact).max() / np.abs(exact).max() < 0.02


@pytest.mark.parametrize("mask_kind", ["bool", "additive", None])
@pytest.mark.parametrize("num_heads", [0, 4])
def test_shared_prefix_attention_equals_attention_over_prefix_then_own_keys(rng, mask_kind, num_heads):
    batch, heads, size, new, own, shared = 3, 4, 8, 2, 5, 6
    layout = (lambda n: (batch, n, heads * size)) if num_heads else (lambda n: (batch, heads, n, size))
    q, k, v = f32(rng, *layout(new)), f32(rng, *layout(own)), f32(rng, *layout(own))
    pk, pv = f32(rng, 1, heads, shared, size), f32(rng, 1, heads, shared, size)  # heads-first in either layout
    keep = rng.random((batch, 1, new, own)) < 0.6
    keep[1, 0, :, :] = False  # a sequence with no visible own key: the prefix is still seen
    mask = {"bool": keep, "additive": np.where(keep, 0.0, -1e9).astype(np.float32), None: None}[mask_kind]
    out = check_op("SharedPrefixAttention", [q, k, v, pk, pv, mask], {"num_heads": num_heads, "scale": 0.0},
                   rtol=1e-4, atol=1e-5)
    # the definition: attention over the prefix (broadcast) followed by the own keys
    def heads_first(x):
        return x.reshape(x.shape[0], x.shape[1], heads, size).transpose(0, 2, 1, 3) if num_heads else x
    keys = np.concatenate([np.broadcast_to(pk, (batch, heads, shared, size)), heads_first(k)], axis=2)
    values = np.concatenate([np.broadcast_to(pv, (batch, heads, shared, size)), heads_first(v)], axis=2)
    full = None if mask is None else np.concatenate([np.ones((batch, 1, new, shared), bool), keep], axis=-1)
    expected = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(heads_first(q)), torch.from_numpy(keys), torch.from_numpy(values),
        attn_mask=None if full is None else torch.from_numpy(full)).numpy()
    if num_heads:
        expected = expected.transpose(0, 2, 1, 3).reshape(batch, new, heads * size)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def check_multi_output_op(op_type, inputs, attrs, rtol=1e-5, atol=1e-6):
    """check_op for an op with several outputs: every output, reference against both decompositions."""
    model = single_op_model(op_type, inputs, attrs)
    fused = run_reference(model, inputs)
    proto = lowered_proto(model)
    names = [i.name for i in proto.graph.input]
    for unfused in (ReferenceEvaluator(proto).run(None, dict(zip(names, inputs))),
                    ort.InferenceSession(proto.SerializeToString()).run(None, dict(zip(names, inputs)))):
        for want, got in zip(fused, unfused):
            np.testing.assert_allclose(want, got, rtol=rtol, atol=atol)
    for value, array in zip(model.graph.outputs, fused):
        assert value.dtype == ir.DataType.from_numpy(array.dtype)
        assert len(value.shape) == array.ndim and value.shape[0] == array.shape[0]
    return fused


MERGE_SIZES = np.array([[1] * 9, [1] * 6 + [0] * 3, [1, 1] + [0] * 7, [0] * 9], np.float32)


@pytest.mark.parametrize("attrs", [{"ratio": 0.3, "protect": 1, "num_heads": 2}, {"r": 2, "protect": 0},
                                   {"ratio": 0.5, "r": 1, "protect": 1, "num_heads": 4}, {"ratio": 0.0}])
def test_merge_tokens(rng, attrs):
    x, metric = f32(rng, 4, 9, 8), f32(rng, 4, 9, 8)
    sizes = MERGE_SIZES.copy()
    sizes[0, 3] = 2  # a token merged before stands for two
    merged, merged_sizes = check_multi_output_op("MergeTokens", [x, metric, sizes], attrs)
    # sizes are token counts: each sequence's total, and its size-weighted sum, are kept
    np.testing.assert_array_equal(merged_sizes.sum(1), sizes.sum(1))
    np.testing.assert_allclose((merged * merged_sizes[..., None]).sum(1), (x * sizes[..., None]).sum(1),
                               rtol=1e-5, atol=1e-5)
    protect = attrs.get("protect", 1)
    np.testing.assert_array_equal(merged[:3, :protect], x[:3, :protect])  # CLS is never merged
    for b in range(4):  # kept tokens left-aligned, zeros after
        kept = int((merged_sizes[b] > 0).sum())
        assert (merged_sizes[b, kept:] == 0).all() and (merged[b, kept:] == 0).all()
    if not attrs.get("ratio") and not attrs.get("r"):  # nothing to merge: the real tokens as they were
        real = sizes[:, :merged.shape[1]] > 0
        np.testing.assert_array_equal(merged[real], x[:, :merged.shape[1]][real])


def test_merge_tokens_padding_is_never_merged_into_real_tokens(rng):
    """A padded position's metric and values are garbage; the merged output does not depend on them."""
    x, metric = f32(rng, 4, 9, 8), f32(rng, 4, 9, 8)
    attrs = {"ratio": 0.5, "num_heads": 2}
    first = check_multi_output_op("MergeTokens", [x, metric, MERGE_SIZES], attrs)
    padded = MERGE_SIZES == 0
    x[padded], metric[padded] = 1e3, -7.0
    second = check_multi_output_op("MergeTokens", [x, metric, MERGE_SIZES], attrs)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seq", [0, 1])
def test_merge_tokens_of_empty_and_single_token_sequences(rng, seq):
    x, metric = f32(rng, 2, seq, 4), f32(rng, 2, seq, 4)
    merged, sizes = check_multi_output_op("MergeTokens", [x, metric, np.ones((2, seq), np.float32)], {"ratio": 0.5})
    np.testing.assert_array_equal(merged, x)


def test_packed_attention_size_bias_is_proportional_attention(rng):
    """size_bias: the mask holds token sizes; a key of size s counts as s copies of itself."""
    sizes = np.array([[1, 3, 1, 0, 0], [2, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 1, 1, 4]], np.float32)
    tokens = int((sizes != 0).sum())
    q, k, v = f32(rng, tokens, 16), f32(rng, tokens, 16), f32(rng, tokens, 8)
    y = check_op("PackedMultiHeadAttention", [q, k, v, sizes], {"num_heads": 4, "size_bias": 1}, rtol=1e-4, atol=1e-5)
    start = 0
    for row in sizes:  # each sequence with its keys repeated size times, plain attention
        real = row[row != 0].astype(int)
        stop = start + len(real)
        if len(real):
            split = [torch.from_numpy(x[start:stop]).reshape(len(real), 4, -1).transpose(0, 1) for x in (q, k, v)]
            repeat = torch.from_numpy(np.repeat(np.arange(len(real)), real))
            expected = torch.nn.functional.scaled_dot_product_attention(split[0], split[1][:, repeat], split[2][:, repeat])
            np.testing.assert_allclose(y[start:stop], expected.transpose(0, 1).reshape(len(real), 8).numpy(),
                                       rtol=1e-4, atol=1e-5)
        start = stop


@pytest.mark.parametrize("attrs", [{"keep_rate": 0.5, "num_heads": 2}, {"keep_rate": 0.7, "protect": 2},
                                   {"keep_rate": 1.0}, {"keep_rate": 0.0, "num_heads": 4, "scale": 0.5}])
def test_prune_tokens(rng, attrs):
    x, q, k = f32(rng, 4, 9, 8), f32(rng, 4, 9, 8), f32(rng, 4, 9, 8)
    sizes = MERGE_SIZES.copy()
    sizes[0, 4] = 3
    kept, kept_sizes = check_multi_output_op("PruneTokens", [x, q, k, sizes], attrs)
    np.testing.assert_array_equal(kept_sizes.sum(1), sizes.sum(1))  # the fused token holds the rest
    protect = attrs.get("protect", 1)
    np.testing.assert_array_equal(kept[:3, :protect], x[:3, :protect])
    if attrs["keep_rate"] == 1.0:  # nothing pruned: the real tokens as they were
        for b in range(4):
            real = sizes[b] > 0
            np.testing.assert_array_equal(kept[b, :real.sum()], x[b, real])


@pytest.mark.parametrize("seq", [0, 1])
def test_prune_tokens_of_empty_and_single_token_sequences(rng, seq):
    x, q, k = f32(rng, 2, seq, 4), f32(rng, 2, seq, 4), f32(rng, 2, seq, 4)
    kept, _ = check_multi_output_op("PruneTokens", [x, q, k, np.ones((2, seq), np.float32)], {"keep_rate": 0.5})
    np.testing.assert_array_equal(kept, x)
