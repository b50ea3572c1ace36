"""TVM backend: every converter against the reference on single-op graphs, and whole models
(partitioned, with ONNX Runtime for what TVM does not take) against eager PyTorch."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import leangraph
from leangraph.backends.reference import ReferenceExecutable
from leangraph.backends.tvm import TVMBackend, TVMExecutable
from tests.frontend.test_zoo import assert_matches_eager
from tests.ir.test_ops import single_op_model
from tests.passes._build import model_from_text
from tests.zoo import ZOO

rng = np.random.default_rng(0)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def check(model, inputs, rtol=1e-4, atol=1e-5):
    assert all(TVMBackend().supports(n) for n in model.graph), "the graph should be all TVM"
    got = TVMExecutable(model)(inputs)
    for g, e in zip(got, ReferenceExecutable(model)(inputs)):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("activation", ["none", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh"])
def test_matmul_bias_act(activation):
    a, b, bias = f32(2, 5, 8), f32(8, 6), f32(6)
    check(single_op_model("MatMulBiasAct", [a, b, bias], {"activation": activation}), [a, b, bias])


@pytest.mark.parametrize(("op", "inputs", "attrs"), [
    ("LayerNorm", lambda: [f32(2, 5, 8), f32(8), f32(8)], {"epsilon": 1e-5}),
    ("RMSNorm", lambda: [f32(2, 5, 8), f32(8)], {"epsilon": 1e-6}),
    ("Gelu", lambda: [f32(2, 5, 8)], {"approximate": "tanh"}),
    ("Attention", lambda: [f32(2, 4, 5, 8), f32(2, 4, 5, 8), f32(2, 4, 5, 8), np.where(rng.random((2, 1, 5, 5)) < .3, -1e9, 0).astype(np.float32)], {}),
    ("Attention", lambda: [f32(1, 2, 6, 4), f32(1, 2, 6, 4), f32(1, 2, 6, 4)], {"causal": 1}),
    ("MultiHeadAttention", lambda: [f32(2, 5, 16), f32(2, 5, 16), f32(2, 5, 16)], {"num_heads": 4}),
])
def test_leangraph_ops(op, inputs, attrs):
    arrays = inputs()
    check(single_op_model(op, arrays, attrs), arrays)


def test_standard_ops_with_symbolic_batch():
    model = model_from_text("""<ir_version: 10, opset_import: ["" : 20]>
    g (float[batch,4] x, float[batch,4] z) => (float[batch,3] y, float[batch,4] s) {
        a = Add(x, z)
        b = Sub(Mul(a, z), Div(x, w2))
        c = MatMul(Tanh(b), w)
        y = Softmax<axis=-1>(Relu(c))
        s = Sigmoid(Neg(Erf(a)))
    }""", {"w": f32(4, 3), "w2": np.full(4, 2.0, np.float32)})
    executable = TVMExecutable(model)
    for batch in (2, 5):
        inputs = [f32(batch, 4), f32(batch, 4)]
        for g, e in zip(executable(inputs), ReferenceExecutable(model)(inputs)):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_onnx_layer_normalization():
    model = model_from_text("""<ir_version: 10, opset_import: ["" : 20]>
    g (float[batch,3,8] x) => (float[batch,3,8] y, float[batch,3,8] z) {
        y = LayerNormalization<epsilon=1e-3>(x, scale, bias)
        z = LayerNormalization<axis=1>(x, scale2)
    }""", {"scale": f32(8), "bias": f32(8), "scale2": f32(3, 8)})
    check(model, [f32(2, 3, 8)])


def test_split_with_constant_sizes_or_parts_of_a_static_dim():
    model = model_from_text("""<ir_version: 10, opset_import: ["" : 20]>
    g (float[batch,3,8] x) => (float[batch,3,3] a, float[batch,3,5] b, float[batch,3,3] c, float[batch,3,3] d,
                               float[batch,3,2] e) {
        a, b = Split<axis=-1>(x, sizes)
        c, d, e = Split<axis=-1, num_outputs=3>(x)
    }""", {"sizes": np.array([3, 5], np.int64)})
    check(model, [f32(2, 3, 8)])
    dynamic = model_from_text("""<ir_version: 10, opset_import: ["" : 20]>
    g (float[batch,3,8] x) => (float[a,3,8] a, float[b,3,8] b) { a, b = Split<axis=0, num_outputs=2>(x) }""")
    assert not TVMBackend().supports(next(iter(dynamic.graph)))


def test_layer_normalization_reading_its_statistics_is_not_taken():
    model = model_from_text("""<ir_version: 10, opset_import: ["" : 20]>
    g (float[2,8] x) => (float[2,8] y, float[2,1] mean) {
        y, mean = LayerNormalization(x, scale)
    }""", {"scale": f32(8)})
    assert not TVMBackend().supports(next(iter(model.graph)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "gpt2", "vit"])
def test_zoo_through_tvm_matches_eager(name):
    entry = ZOO[name]
    model = entry.build()
    cm = leangraph.optimize(model, entry.inputs(*entry.shapes[0]), dynamic_shapes=entry.dynamic_shapes, backend="tvm")
    assert any(backend == "tvm" for backend, _ in cm.report.partitions), cm.report.partitions
    assert_matches_eager(name, model, cm, entry)
    assert "fallback:" in str(cm.report) or len(cm.report.partitions) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "llama"])
def test_unoptimized_graphs_compile_on_tvm(name):
    # The exporter's dims that Relax cannot prove equal ('seq' vs '((batch*seq)//batch)') meet in
    # attention MatMuls; without the fusions they reach the MatMul converter.
    entry = ZOO[name]
    model = entry.build()
    cm = leangraph.optimize(model, entry.inputs(*entry.shapes[0]), dynamic_shapes=entry.dynamic_shapes, backend="tvm",
                            passes="none")
    assert_matches_eager(name, model, cm, entry)


def test_elementwise_schedule_vectorizes_the_inner_loop():
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline

    from leangraph.backends.tvm import host_target
    from leangraph.backends.tvm.schedule import schedule_pass

    bb = relax.BlockBuilder()
    batch = tvm.tirx.Var("batch", "int64")
    x = relax.Var("x", relax.TensorType([batch, 384], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.add(x, relax.const(np.ones(384, np.float32)))))
        bb.emit_func_output(out)
    target = host_target()
    with target:
        module = tvm.transform.Sequential(pipeline.legalize_passes(target) + [schedule_pass()])(bb.get())
    scheduled = [f for _, f in module.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert scheduled and all(f.attrs and f.attrs.get("tirx.is_scheduled") for f in scheduled)
    assert "vectorized" in scheduled[0].script()


def with_constant_weights(model: ir.Model, arrays: list[np.ndarray]) -> ir.Model:
    """``model`` with every graph input after the first turned into a constant holding ``arrays``,
    as the quantization pass writes a layer's weights."""
    constants = list(model.graph.inputs[1:])
    model.graph.inputs[:] = model.graph.inputs[:1]
    for value, array in zip(constants, arrays):
        value.const_value = ir.tensor(array)
        model.graph.register_initializer(value)
    return model


@pytest.mark.parametrize(("activation", "activation_bits"), [("none", 7), ("gelu", 7), ("none", 8), ("gelu", 8)])
def test_dynamic_quant_linear_through_fbgemm(activation, activation_bits):
    a, w, bias = f32(4, 7, 32), f32(32, 16) * 0.1, f32(16)
    levels = 127 if activation_bits == 7 else 63  # the other side gives up a bit (see the op)
    scale = (np.abs(w).max(axis=0) / levels).astype(np.float32)
    weight = np.round(w / scale).astype(np.int8)
    model = with_constant_weights(single_op_model("DynamicQuantLinear", [a, weight, scale, bias],
                                                  {"activation": activation, "activation_bits": activation_bits}),
                                  [weight, scale, bias])
    got = TVMExecutable(model)([a])[0]
    expected = ReferenceExecutable(model)([a])[0]
    # fbgemm picks its activation zero point and scale its own way: a quantization step apart at most
    np.testing.assert_allclose(got, expected, rtol=0.02, atol=0.02 * np.abs(expected).max())


def test_fbgemm_does_not_saturate_at_the_bits_chosen_for_this_cpu():
    # The worst case of u8 x s8 pair sums: every activation at the top of its range, every weight at
    # +-127. Without VNNI 8-bit activations would give 2 * 255 * 127 > 32767 in int16 (INT8_BITS then
    # keeps fbgemm at 7); with VNNI nothing is summed in int16 and 8 bits are exact.
    from leangraph.cost_model.linear_kernels import FBGEMM, INT8_BITS

    x = np.ones((4, 64), np.float32)
    weight = np.full((64, 16), 127, np.int8)
    weight[:, 8:] *= -1
    scale = np.full(16, 0.01, np.float32)
    model = with_constant_weights(single_op_model("DynamicQuantLinear", [x, weight, scale],
                                                  {"activation_bits": INT8_BITS[FBGEMM].activation_bits}),
                                  [weight, scale])
    np.testing.assert_allclose(TVMExecutable(model)([x])[0], ReferenceExecutable(model)([x])[0], rtol=1e-5)


SHAPE_FUNCTION = """
# from tvm.script import ir as I
# from tvm.script import tirx as T

@I.ir_module
class Module:
    @T.prim_func
    def shape_func(H: T.Buffer((T.int64(6),), "int64")):
        T.func_attr({"tirx.is_host_func": True})
        H[T.int64(5)] = H[T.int64(0)] + T.int64(1)
        H[T.int64(2)] = H[T.int64(3)] * T.int64(2)
        H[T.int64(3)] = H[T.int64(0)] * H[T.int64(1)]
"""


def test_shape_function_order_is_canonical_and_keeps_dependencies():
    import tvm.script

    from leangraph.backends.tvm import ordered_shape_functions

    module = tvm.script.from_source(SHAPE_FUNCTION)
    stores = ordered_shape_functions()(module)["shape_func"].body.seq
    assert [int(store.indices[0]) for store in stores] == [3, 2, 5]  # 2 reads 3: after it, else by slot


PADDING = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], np.int64)
LONG = (np.arange(40)[None, :] < np.array([[40], [17], [0]])).astype(np.int32)  # beyond one vector of keys


@pytest.mark.parametrize(("mask", "causal", "value_width"), [
    (PADDING, 0, 32), (PADDING, 1, 32), (PADDING, 0, 64), (LONG, 0, 32), (LONG, 1, 64), (np.zeros((2, 3), np.int64), 0, 32),
])
def test_packed_attention_on_the_varlen_tir_kernel(mask, causal, value_width):
    from leangraph.backends.tvm.converters import _uses_tir_attention

    tokens = int(mask.sum())
    arrays = [f32(tokens, 32), f32(tokens, 32), f32(tokens, value_width), mask]  # 2 heads of 16
    model = single_op_model("PackedMultiHeadAttention", arrays, {"num_heads": 2, "causal": causal})
    assert _uses_tir_attention(next(iter(model.graph)))
    check(model, arrays)


def test_packed_attention_with_heads_of_another_size_takes_the_library_kernel():
    from leangraph.backends.tvm.converters import _uses_tir_attention

    arrays = [f32(int(PADDING.sum()), 12)] * 3 + [PADDING]  # heads of 6
    model = single_op_model("PackedMultiHeadAttention", arrays, {"num_heads": 2})
    assert not _uses_tir_attention(next(iter(model.graph)))
    check(model, arrays)


def test_packed_attention_kernel_takes_any_token_count():
    from leangraph.ir import DOMAIN, TARGET_OPSET

    values = [ir.val(f"in{i}", ir.DataType.FLOAT, ir.Shape(["tokens", 32])) for i in range(3)]
    values.append(ir.val("mask", ir.DataType.INT64, ir.Shape(["batch", "seq"])))
    node = ir.node("PackedMultiHeadAttention", values, {"num_heads": 2}, domain=DOMAIN)
    node.outputs[0].name, node.outputs[0].dtype, node.outputs[0].shape = "out", ir.DataType.FLOAT, ir.Shape(["tokens", 32])
    model = ir.Model(ir.Graph(values, node.outputs, nodes=[node], opset_imports={"": TARGET_OPSET, DOMAIN: 1}),
                     ir_version=10)
    executable = TVMExecutable(model)
    for mask in (PADDING, LONG.astype(np.int64), PADDING[:1]):
        arrays = [f32(int(mask.sum()), 32) for _ in range(3)] + [mask]
        (got,) = executable(arrays)
        np.testing.assert_allclose(got, ReferenceExecutable(model)(arrays)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_bf16_linear_through_torch(activation):
    from leangraph.ir.ops.bf16_linear import to_bfloat16

    a, w, bias = f32(3, 5, 16), f32(16, 24), f32(24)
    model = single_op_model("Bf16Linear", [a, to_bfloat16(w), bias], {"activation": activation})
    weight = model.graph.inputs.pop(1)
    weight.const_value = ir.tensor(to_bfloat16(w))
    model.graph.register_initializer(weight)
    check(model, [a, bias], rtol=1e-2, atol=1e-2)  # float32 sums in another order: one bfloat16 step apart


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("library_name", ["MKL", "oneDNN"])
def test_fp32_linear_libraries_match_a_float64_product(library_name, with_bias):
    # The linear layers call oneDNN (library.fp32_linear) where torch has it, MKL otherwise;
    # both must compute x @ W (+ bias), W read as [K, N].
    import torch

    from leangraph.backends.tvm import library

    if library_name == "oneDNN" and not torch.backends.mkldnn.is_available():
        pytest.skip("torch is built without oneDNN here")
    linear = {"MKL": library._mkl_linear, "oneDNN": library._onednn_linear}[library_name]
    x, weight = torch.from_numpy(f32(37, 48)), torch.from_numpy(f32(48, 24))
    bias = torch.from_numpy(f32(24)) if with_bias else None
    out = linear(x, weight, bias)
    expected = x.double() @ weight.double() + (bias.double() if with_bias else 0)
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-5)
    assert library.fp32_linear()[0] in ("MKL", "oneDNN")


@pytest.mark.slow
def test_a_torchscript_exported_bert_runs_on_tvm(tmp_path):
    # TorchScript's BERT gathers the position embeddings with [1, seq] ids: ONNX's inference leaves
    # that 1 unknown, and Relax took the unknown dim of the embeddings' Add for the batch
    # ("Mismatched shape[0]" at run time). The frontend now knows it is 1.
    import torch

    from leangraph.demo import sentence_encoder

    bert = ZOO["bert"]
    module = sentence_encoder(bert.build())
    path = tmp_path / "bert.onnx"
    torch.onnx.export(module, bert.inputs(2, 7), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                      dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}})
    compiled = leangraph.optimize(str(path), tuple(x.numpy() for x in bert.inputs(2, 7)), backend="tvm")
    assert any(r.name == "remove_padding" and r.changed for r in compiled.report.records)
    ids, mask = bert.inputs(3, 11)
    with torch.no_grad():
        expected = module(ids, mask).numpy()
    np.testing.assert_allclose(compiled(ids.numpy(), mask.numpy()), expected, rtol=1e-4, atol=1e-5)
