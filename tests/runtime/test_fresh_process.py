"""A saved artifact, and a compile-cache entry, run in a fresh process on every backend, whatever
op families their pieces hold.

A fresh process has registered nothing: a TVM library whose pieces held only linear layers loaded
fine and then failed every call ("Cannot find ffi::Function leangraph.linear.relu"), because only
importing leangraph.backends.tvm.library registered the linear layers' packed functions. Each TVM
artifact is loaded in a process of its own, the others share one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import leangraph
from leangraph.backends import AVAILABLE
from leangraph.ir.ops.quant_linear import quantize_weight
from tests.passes._build import model_from_text

rng = np.random.default_rng(0)
BACKENDS = [b for b in ("onnxruntime", "torch", "tvm", "reference") if b in AVAILABLE]


def f32(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


HEADER = '<ir_version: 10, opset_import: ["" : 20, "leangraph" : 1]>'


def _mlp():
    model = model_from_text(HEADER + """
    mlp (float[batch,16] x) => (float[batch,8] y) {
        h = Relu(Add(MatMul(x, w1), b1))
        g = Gelu(Add(MatMul(h, w2), b2))
        y = Add(MatMul(g, w3), b3)
    }""", {"w1": f32(16, 32, scale=.3), "b1": f32(32), "w2": f32(32, 32, scale=.2), "b2": f32(32),
           "w3": f32(32, 8, scale=.2), "b3": f32(8)})
    return model, [f32(3, 16)], "MatMulBiasAct"


def _layer_norm():
    model = model_from_text(HEADER + """
    ln (float[batch,5,16] x) => (float[batch,5,16] y) {
        y = leangraph.LayerNorm<axis=-1, epsilon=1e-5>(Add(MatMul(x, w), b), s, t)
    }""", {"w": f32(16, 16, scale=.3), "b": f32(16), "s": f32(16), "t": f32(16)})
    return model, [f32(2, 5, 16)], "LayerNorm"


def _attention():
    model = model_from_text(HEADER + """
    attn (float[batch,seq,32] x, float[batch,1,1,seq] m) => (float[batch,seq,32] y) {
        q = MatMul(x, wq)
        y = leangraph.MultiHeadAttention<num_heads=4, scale=0.0, causal=0>(q, x, x, m)
    }""", {"wq": f32(32, 32, scale=.2)})
    mask = np.zeros((2, 1, 1, 6), np.float32)
    mask[1, ..., 4:] = -1e9
    return model, [f32(2, 6, 32), mask], "MultiHeadAttention"


PADDING = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int64)


def _packed_attention():
    # Heads of 16 take the TIR varlen kernel on TVM, heads of 6 the library one: both are in here.
    model = model_from_text(HEADER + """
    packed (float[tokens,32] x, float[tokens,12] z, int64[batch,seq] mask) => (float[tokens,32] y,
                                                                               float[tokens,12] u) {
        y = leangraph.PackedMultiHeadAttention<num_heads=2, scale=0.0, causal=0>(MatMul(x, wq), x, x, mask)
        u = leangraph.PackedMultiHeadAttention<num_heads=2, scale=0.0, causal=1>(z, z, z, mask)
    }""", {"wq": f32(32, 32, scale=.2)})
    tokens = int(PADDING.sum())
    return model, [f32(tokens, 32), f32(tokens, 12), PADDING], "PackedMultiHeadAttention"


def _int8_linear():
    # 8-bit activations run on fbgemm on TVM; 7-bit ones with weights within 7 bits on our TIR
    # GEMM, whose activation is a packed function of its own.
    weight8, scale8 = quantize_weight(f32(32, 16, scale=.2), bits=8)
    weight7, scale7 = quantize_weight(f32(16, 32, scale=.2), bits=7)
    model = model_from_text(HEADER + """
    int8 (float[batch,32] x) => (float[batch,32] y) {
        h = leangraph.DynamicQuantLinear<activation="relu", activation_bits=8>(x, w8, s8, b8)
        y = leangraph.DynamicQuantLinear<activation="gelu", activation_bits=7>(h, w7, s7, b7)
    }""", {"w8": weight8, "s8": scale8, "b8": f32(16), "w7": weight7, "s7": scale7, "b7": f32(32)})
    return model, [f32(4, 32)], "DynamicQuantLinear"


def _cnn():
    model = model_from_text(HEADER + """
    cnn (float[batch,3,8,8] x) => (float[batch,4] y) {
        c = Relu(Conv<pads=[1,1,1,1]>(x, k, kb))
        p = Flatten(GlobalAveragePool(c))
        y = Add(MatMul(p, w), b)
    }""", {"k": f32(6, 3, 3, 3, scale=.3), "kb": f32(6), "w": f32(6, 4), "b": f32(4)})
    return model, [f32(2, 3, 8, 8)], "Conv"


def _elementwise():
    model = model_from_text(HEADER + """
    elementwise (float[batch,6] x, float[batch,6] z) => (float[batch,6] y) {
        y = Div(Sub(Mul(Tanh(Add(x, z)), c), Sigmoid(z)), d)
    }""", {"c": f32(6), "d": np.full(6, 2.0, np.float32)})
    return model, [f32(3, 6), f32(3, 6)], "Tanh"


FAMILIES = {"mlp": _mlp, "layer_norm": _layer_norm, "attention": _attention, "packed_attention": _packed_attention,
            "int8_linear": _int8_linear, "cnn": _cnn, "elementwise": _elementwise}

CHILD = """
import json, sys, traceback
import numpy as np
import leangraph

results = {}
for job in json.load(open(sys.argv[1])):
    inputs = [np.load(f) for f in job["inputs"]]
    try:
        if job["kind"] == "artifact":
            cm = leangraph.load(job["path"])
        else:  # the same optimize() call as the parent's: a compile-cache hit
            cm = leangraph.optimize(job["path"], inputs, backend=job["backend"], cache_dir=job["cache"])
        np.savez(job["out"], *cm.run_flat(inputs))
        results[job["name"]] = {"report": str(cm.report)}
    except Exception:  # each job's failure is its own test's
        results[job["name"]] = {"error": traceback.format_exc()[-3000:]}
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def fresh_runs(tmp_path_factory):
    """(expected outputs by job, the child's result by job: its report and outputs, or its error)."""
    root = tmp_path_factory.mktemp("fresh")
    jobs, expected = [], {}
    for family, build in FAMILIES.items():
        model, inputs, op = build()
        for index, node in enumerate(model.graph):
            # As exporters name them. (Unnamed leangraph nodes lowered for ONNX Runtime get the same
            # names as each other, which ONNX Runtime refuses: ir/lowering.py, not the runtime's.)
            node.name = node.name or f"{family}_{index}_{node.op_type}"
        files = []
        for index, array in enumerate(inputs):
            np.save(root / f"{family}-in{index}.npy", array)
            files.append(str(root / f"{family}-in{index}.npy"))
        for backend in BACKENDS:
            name = f"{family}-{backend}"
            cm = leangraph.optimize(model, inputs, backend=backend)
            assert any(node.op_type == op for node in cm.graph.graph), (name, [n.op_type for n in cm.graph.graph])
            cm.save(root / name)
            expected[name] = cm.run_flat(inputs)
            jobs.append({"kind": "artifact", "name": name, "path": str(root / name), "inputs": files,
                         "out": str(root / f"{name}.npz")})
        if "tvm" in BACKENDS:  # a compile-cache entry is an artifact too, found by optimize()
            path = root / f"{family}.onnx"
            ir.save(model, path)
            cm = leangraph.optimize(str(path), inputs, backend="tvm", cache_dir=str(root / "cache"))
            assert not cm.report.cache_hit
            name = f"{family}-tvm-cache"
            expected[name] = cm.run_flat(inputs)
            jobs.append({"kind": "cache", "name": name, "path": str(path), "inputs": files, "backend": "tvm",
                         "cache": str(root / "cache"), "out": str(root / f"{name}.npz")})
    # Each TVM job in a process of its own: what one job's load registers would hide what another's
    # misses. The others share one process.
    batches = [[job for job in jobs if "tvm" not in job["name"]]] + [[job] for job in jobs if "tvm" in job["name"]]
    results = {}
    for index, batch in enumerate(batches):
        (root / f"jobs{index}.json").write_text(json.dumps(batch))
        done = subprocess.run([sys.executable, "-c", CHILD, str(root / f"jobs{index}.json"), str(root / f"results{index}.json")],
                              capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
        assert done.returncode == 0, done.stderr[-5000:]
        results.update(json.loads((root / f"results{index}.json").read_text()))
    for job in jobs:
        if "error" not in results[job["name"]]:
            results[job["name"]]["outputs"] = np.load(job["out"])
    return expected, results


def _check(fresh_runs, name):
    """The child's report of job ``name``, after comparing its outputs to this process's."""
    expected, results = fresh_runs
    result = results[name]
    assert "error" not in result, result["error"]
    outputs = result["outputs"]
    assert len(outputs.files) == len(expected[name])
    for index, array in enumerate(expected[name]):
        # int8 too: the activations are quantized per call, the same way in both processes
        np.testing.assert_allclose(outputs[f"arr_{index}"], array, rtol=1e-5, atol=1e-6, err_msg=name)
    return result["report"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_artifact_runs_in_a_fresh_process(fresh_runs, family, backend):
    report = _check(fresh_runs, f"{family}-{backend}")
    if backend == "tvm":  # the stored libraries ran, not a recompile
        assert "loaded, not rebuilt" in report, report


@pytest.mark.skipif("tvm" not in BACKENDS, reason="TVM is not installed")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_compile_cache_hit_runs_in_a_fresh_process(fresh_runs, family):
    report = _check(fresh_runs, f"{family}-tvm-cache")
    assert "cache hit" in report, report
