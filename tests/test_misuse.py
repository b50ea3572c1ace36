"""A table of misuses, each walked through the API (a LeanGraphError naming what is wrong) and the
CLI subcommands (a non-zero exit, one paragraph on stderr, no traceback).

Each case is what a user can get wrong: options, inputs, paths, model files. A case passes only when
leangraph itself refuses it; a traceback from Python or a dependency is a failure of this test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import leangraph
from leangraph.errors import LeanGraphError
from tests.helpers import add_relu_model, make_model, tensor

ROOT = Path(__file__).resolve().parents[1]
X = np.ones((2, 3), np.float32)


class TinyMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)

    def forward(self, x):
        return torch.relu(self.linear(x))


def _two_writers(tmp_path):
    return make_model([helper.make_node("Relu", ["x"], ["y"], name="a"), helper.make_node("Neg", ["x"], ["y"], name="b")],
                      [tensor("x")], [tensor("y")])


def _no_outputs(tmp_path):
    return make_model([helper.make_node("Relu", ["x"], ["y"], name="a")], [tensor("x")], [])


def _duplicate_outputs(tmp_path):
    return make_model([helper.make_node("Relu", ["x"], ["y"], name="a")], [tensor("x")], [tensor("y"), tensor("y")])


def _duplicate_inputs(tmp_path):
    return make_model([helper.make_node("Add", ["x", "x"], ["y"], name="a")], [tensor("x"), tensor("x")], [tensor("y")])


def _missing_external_data(tmp_path):
    model = add_relu_model()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="weights.bin")
    path = tmp_path / "external.onnx"
    onnx.save(model, path)
    return str(path)


def _saved(tmp_path, factory):
    path = tmp_path / "model.onnx"
    onnx.save(factory(tmp_path), path)
    return str(path)


def _a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def _nested_manifest(tmp_path):
    folder = tmp_path / "nested"
    folder.mkdir()
    (folder / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    return folder


def _wrong_typed_manifest(tmp_path):
    folder = tmp_path / "typed"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format": "leangraph-artifact", "version": "2", "files": [],
                                                      "name": 5, "content_hash": None}))
    return folder


def _compiled(tmp_path):
    return leangraph.optimize(add_relu_model(), (X,), backend="onnxruntime")


nan = float("nan")

# name -> callable(tmp_path) that must raise a LeanGraphError
API_MISUSES = {
    # options
    "passes=None": lambda t: leangraph.optimize(add_relu_model(), (X,), passes=None),
    "passes=5": lambda t: leangraph.optimize(add_relu_model(), (X,), passes=5),
    "passes=',,'": lambda t: leangraph.optimize(add_relu_model(), (X,), passes=",,"),
    "passes='cse,,dce'": lambda t: leangraph.optimize(add_relu_model(), (X,), passes="cse,,dce"),
    "passes=['cse', 5]": lambda t: leangraph.optimize(add_relu_model(), (X,), passes=["cse", 5]),
    "passes=[] string list unknown": lambda t: leangraph.optimize(add_relu_model(), (X,), passes=["nope"]),
    "backend=5": lambda t: leangraph.optimize(add_relu_model(), (X,), backend=5),
    "backend='nope'": lambda t: leangraph.optimize(add_relu_model(), (X,), backend="nope"),
    "tolerance='tight'": lambda t: leangraph.optimize(add_relu_model(), (X,), tolerance="tight"),
    "tolerance as a dict": lambda t: leangraph.optimize(add_relu_model(), (X,), tolerance={"atol": 1e-3}),
    "torch module with too many inputs": lambda t: leangraph.optimize(TinyMLP(), (torch.ones(2, 3), torch.ones(2, 3))),
    "capture a missing file": lambda t: leangraph.capture(str(t / "missing.onnx")),
    "tolerance=0.1": lambda t: leangraph.optimize(add_relu_model(), (X,), tolerance=0.1),
    "Tolerance(atol=nan)": lambda t: leangraph.Tolerance(atol=nan),
    "Tolerance(rtol=nan)": lambda t: leangraph.Tolerance(rtol=nan),
    "Tolerance(rtol=-1)": lambda t: leangraph.Tolerance(rtol=-1.0),
    "Tolerance(atol=-1e-3)": lambda t: leangraph.Tolerance(atol=-1e-3),
    "Tolerance(atol=inf)": lambda t: leangraph.Tolerance(atol=math.inf),
    "Tolerance(min_cosine=2)": lambda t: leangraph.Tolerance(min_cosine=2),
    "Tolerance(min_cosine=nan)": lambda t: leangraph.Tolerance(min_cosine=nan),
    "Tolerance(rtol='1e-3')": lambda t: leangraph.Tolerance(rtol="1e-3"),
    "Tolerance(atol=True)": lambda t: leangraph.Tolerance(atol=True),
    "max_drop=nan": lambda t: leangraph.optimize(add_relu_model(), (X,), evaluate=lambda cm: 1.0, max_drop=nan),
    "max_drop='0.1'": lambda t: leangraph.optimize(add_relu_model(), (X,), evaluate=lambda cm: 1.0, max_drop="0.1"),
    "max_drop=inf": lambda t: leangraph.optimize(add_relu_model(), (X,), evaluate=lambda cm: 1.0, max_drop=math.inf),
    "max_drop=True": lambda t: leangraph.optimize(add_relu_model(), (X,), evaluate=lambda cm: 1.0, max_drop=True),
    "evaluate returns an array": lambda t: leangraph.optimize(TinyMLP(), (torch.ones(2, 3),),
                                                              evaluate=lambda cm: np.ones(2), max_drop=0.1),
    "evaluate returns True": lambda t: leangraph.optimize(TinyMLP(), (torch.ones(2, 3),),
                                                          evaluate=lambda cm: True, max_drop=0.1),
    "max_drop=-1": lambda t: leangraph.optimize(add_relu_model(), (X,), evaluate=lambda cm: 1.0, max_drop=-1),
    "max_drop without evaluate": lambda t: leangraph.optimize(add_relu_model(), (X,), max_drop=0.1),
    "evaluate=5": lambda t: leangraph.optimize(add_relu_model(), (X,), evaluate=5, max_drop=0.1),
    "evaluate returns nan": lambda t: leangraph.optimize(TinyMLP(), (torch.ones(2, 3),), evaluate=lambda cm: nan,
                                                         max_drop=0.1),
    "evaluate returns a string": lambda t: leangraph.optimize(TinyMLP(), (torch.ones(2, 3),),
                                                              evaluate=lambda cm: "good", max_drop=0.1),
    "evaluate returns None": lambda t: leangraph.optimize(TinyMLP(), (torch.ones(2, 3),),
                                                          evaluate=lambda cm: None, max_drop=0.1),
    "evaluate raises": lambda t: leangraph.optimize(TinyMLP(), (torch.ones(2, 3),),
                                                    evaluate=lambda cm: 1 / 0, max_drop=0.1),
    "calibration holding NaN under a budget": lambda t: leangraph.optimize(
        TinyMLP(), (torch.ones(2, 3),), calibration=[(torch.full((2, 3), float("nan")),)],
        tolerance=leangraph.Tolerance(rtol=1e-2, atol=1e-2)),
    "calibration=5": lambda t: leangraph.optimize(add_relu_model(), (X,), calibration=5),
    "calibration=[]": lambda t: leangraph.optimize(add_relu_model(), calibration=[]),
    "calibration of arrays, not input tuples": lambda t: leangraph.optimize(add_relu_model(), calibration=[X, X]),
    "calibration with two inputs for one": lambda t: leangraph.optimize(add_relu_model(), calibration=[(X, X)]),
    "calibration in the wrong dtype": lambda t: leangraph.optimize(add_relu_model(), calibration=[(X.astype(np.int64),)]),
    "calibration of the wrong rank": lambda t: leangraph.optimize(add_relu_model(), calibration=[(X[0],)]),
    "calibration with a wrong static dim": lambda t: leangraph.optimize(add_relu_model(),
                                                                        calibration=[(np.ones((2, 5), np.float32),)]),
    "example_inputs=5": lambda t: leangraph.optimize(add_relu_model(), 5),
    "more example inputs than the ONNX model has": lambda t: leangraph.optimize(add_relu_model(), (X, X)),
    "fewer example inputs than the ONNX model has": lambda t: leangraph.optimize(add_relu_model(), ()),
    "example input in the wrong dtype": lambda t: leangraph.optimize(add_relu_model(), (X.astype(np.float64),)),
    "example input that is a string": lambda t: leangraph.optimize(add_relu_model(), ("hello",)),
    "dynamic_shapes naming no input": lambda t: leangraph.optimize(TinyMLP(), (torch.ones(2, 3),),
                                                                   dynamic_shapes={"inputs": {0: "batch"}}),
    "dynamic_shapes not a mapping": lambda t: leangraph.optimize(TinyMLP(), (torch.ones(2, 3),),
                                                                 dynamic_shapes=["batch"]),
    "dynamic_shapes with an axis past the rank": lambda t: leangraph.optimize(TinyMLP(), (torch.ones(2, 3),),
                                                                              dynamic_shapes={"x": {5: "batch"}}),
    "dynamic_shapes for an ONNX model": lambda t: leangraph.optimize(add_relu_model(), (X,),
                                                                     dynamic_shapes={"x": {0: "batch"}}),
    "torch module with a string input": lambda t: leangraph.optimize(TinyMLP(), ("hello",)),
    "cache_dir onto a file": lambda t: leangraph.optimize(add_relu_model(), (X,), cache_dir=_a_file(t)),
    "cache_dir under a file": lambda t: leangraph.optimize(add_relu_model(), (X,), cache_dir=_a_file(t) / "sub"),
    "cache_dir=5": lambda t: leangraph.optimize(add_relu_model(), (X,), cache_dir=5),
    # models
    "model=None": lambda t: leangraph.optimize(None, (X,)),
    "model=42": lambda t: leangraph.optimize(42, (X,)),
    "model is a folder": lambda t: leangraph.optimize(str(t), (X,)),
    "ONNX external data missing": lambda t: leangraph.optimize(_missing_external_data(t), (X,)),
    "ONNX two nodes writing one value": lambda t: leangraph.optimize(_two_writers(t), (X,)),
    "ONNX file two nodes writing one value": lambda t: leangraph.optimize(_saved(t, _two_writers), (X,)),
    "ONNX graph without outputs": lambda t: leangraph.optimize(_no_outputs(t), (X,)),
    "ONNX duplicate output names": lambda t: leangraph.optimize(_duplicate_outputs(t), (X,)),
    "ONNX duplicate input names": lambda t: leangraph.optimize(_duplicate_inputs(t), (X, X)),
    # the compiled model and its artifacts
    "call with too many inputs": lambda t: _compiled(t)(X, X),
    "call with a meta tensor": lambda t: _compiled(t)(torch.ones(2, 3, device="meta")),
    "call with a bfloat16 tensor": lambda t: _compiled(t)(torch.ones(2, 3, dtype=torch.bfloat16)),
    "call with a string": lambda t: _compiled(t)("hello"),
    "call with None": lambda t: _compiled(t)(None),
    "call with a ragged list": lambda t: _compiled(t)([[1.0, 2.0], [3.0]]),
    "call with an unknown keyword": lambda t: _compiled(t)(nope=X),
    "save onto a file": lambda t: _compiled(t).save(_a_file(t)),
    "save under a file": lambda t: _compiled(t).save(_a_file(t) / "sub"),
    "save over a folder that is not an artifact": lambda t: (_a_file(t), _compiled(t).save(t))[1],
    "to_onnx onto a folder": lambda t: _compiled(t).to_onnx(t),
    "to_onnx under a file": lambda t: _compiled(t).to_onnx(_a_file(t) / "m.onnx"),
    "load ''": lambda t: leangraph.load(""),
    "save to ''": lambda t: _compiled(t).save(""),
    "to_onnx with a NUL byte": lambda t: _compiled(t).to_onnx(str(t / "a\0b.onnx")),
    "to_html(None)": lambda t: _compiled(t).report.to_html(None),
    "to_html with a NUL byte": lambda t: _compiled(t).report.to_html(str(t / "a\0b.html")),
    "run_flat of one array, not a list": lambda t: _compiled(t).run_flat(X),
    "run_flat(None)": lambda t: _compiled(t).run_flat(None),
    "load None": lambda t: leangraph.load(None),
    "save to None": lambda t: _compiled(t).save(None),
    "to_onnx to None": lambda t: _compiled(t).to_onnx(None),
    "optimize garbage bytes": lambda t: leangraph.optimize(b"\x00garbage" * 10, (X,)),
    "optimize an empty bytes": lambda t: leangraph.optimize(b"", (X,)),
    "call with a keyword given twice": lambda t: _compiled(t)(X, x=X),
    "load a file": lambda t: leangraph.load(_a_file(t)),
    "load a missing folder": lambda t: leangraph.load(t / "missing"),
    "load a deeply nested manifest": lambda t: leangraph.load(_nested_manifest(t)),
    "load a manifest of wrong types": lambda t: leangraph.load(_wrong_typed_manifest(t)),
    "load with backend=5": lambda t: (_compiled(t).save(t / "a"), leangraph.load(t / "a", backend=5))[1],
    "load with an unknown backend": lambda t: (_compiled(t).save(t / "a"), leangraph.load(t / "a", backend="nope"))[1],
}


@pytest.mark.parametrize("case", sorted(API_MISUSES))
def test_api_misuse_is_a_leangraph_error(case, tmp_path):
    try:
        API_MISUSES[case](tmp_path)
    except LeanGraphError as exc:
        assert exc.message and exc.hint, f"{case}: the error says what is wrong but not what to do: {exc}"
    else:
        pytest.fail(f"{case}: accepted without an error")


def _cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "leangraph", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An ONNX model, its artifact, matching and mismatched npz files, a plain file, a bad npz."""
    root = tmp_path_factory.mktemp("cli")
    model = root / "m.onnx"
    onnx.save(add_relu_model(), model)
    artifact = root / "artifact"
    leangraph.optimize(add_relu_model(), (X,), backend="onnxruntime").save(artifact)
    np.savez(root / "in.npz", x=X)
    np.savez(root / "other.npz", y=X)
    (root / "bad.npz").write_bytes(b"PK\x03\x04 this is no zip")
    (root / "plain").write_text("a file")
    return {"model": str(model), "artifact": str(artifact), "npz": str(root / "in.npz"), "npz_other": str(root / "other.npz"),
            "bad_npz": str(root / "bad.npz"), "file": str(root / "plain"), "root": root}


def _compile(f, output: str, *flags: str) -> list[str]:
    """`leangraph compile` of the ONNX model into a fresh folder, with ``flags``."""
    return ["compile", f["model"], "-o", str(f["root"] / output), *flags]


CLI_MISUSES = {
    "compile --passes ,,": lambda f: _compile(f, "o1", "--passes", ",,", "--example-shapes", "x=2x3"),
    "compile --passes ''": lambda f: _compile(f, "o1", "--passes", ""),
    "compile --example-shapes with no shapes": lambda f: _compile(f, "o2", "--example-shapes"),
    "compile --example-shapes repeated": lambda f: _compile(f, "o3", "--example-shapes", "x=2x3", "x=4x3"),
    "compile --example-shapes X=2x-1": lambda f: _compile(f, "o4", "--example-shapes", "x=2x-1"),
    "compile --example-shapes X=2x0x": lambda f: _compile(f, "o4", "--example-shapes", "x=2x"),
    "compile --example-shapes huge": lambda f: _compile(f, "o5", "--example-shapes", "x=100000000000x3"),
    "compile --example-shapes unknown input": lambda f: _compile(f, "o6", "--example-shapes", "x=2x3", "z=2x3"),
    "compile --example-shapes wrong static dim": lambda f: _compile(f, "o6", "--example-shapes", "x=2x5"),
    "compile --example-shapes wrong rank": lambda f: _compile(f, "o6", "--example-shapes", "x=2"),
    "compile -o onto a file": lambda f: ["compile", f["model"], "-o", f["file"], "--example-shapes", "x=2x3"],
    "compile -o under a file": lambda f: ["compile", f["model"], "-o", f["file"] + "/sub", "--example-shapes", "x=2x3"],
    "compile --backend nope": lambda f: _compile(f, "o7", "--backend", "nope"),
    "compile a factory that raises": lambda f: ["compile", "tests.test_misuse:factory_that_raises", "-o",
                                                str(f["root"] / "o8")],
    "compile a factory that is missing": lambda f: ["compile", "tests.test_misuse:no_such_factory", "-o",
                                                    str(f["root"] / "o8")],
    "compile a module without a colon": lambda f: ["compile", "tests.test_misuse", "-o", str(f["root"] / "o8")],
    "compile a missing file": lambda f: ["compile", str(f["root"] / "missing.onnx"), "-o", str(f["root"] / "o9")],
    "inspect --html onto a folder": lambda f: ["inspect", f["model"], "--html", str(f["root"]),
                                               "--example-shapes", "x=2x3"],
    "inspect --html under a file": lambda f: ["inspect", f["model"], "--html", f["file"] + "/r.html",
                                              "--example-shapes", "x=2x3"],
    "inspect --passes ,,": lambda f: ["inspect", f["model"], "--passes", ",,"],
    "inspect --example-shapes repeated": lambda f: ["inspect", f["model"], "--example-shapes", "x=2x3", "x=2x3"],
    "run a bad npz": lambda f: ["run", f["artifact"], "--inputs", f["bad_npz"]],
    "run a missing npz": lambda f: ["run", f["artifact"], "--inputs", str(f["root"] / "missing.npz")],
    "run a plain file as npz": lambda f: ["run", f["artifact"], "--inputs", f["file"]],
    "run --output onto a folder": lambda f: ["run", f["artifact"], "--inputs", f["npz"], "--output", str(f["root"])],
    "run --output under a file": lambda f: ["run", f["artifact"], "--inputs", f["npz"], "--output",
                                            f["file"] + "/o.npz"],
    "run a file as the artifact": lambda f: ["run", f["file"], "--inputs", f["npz"]],
    "run a missing artifact": lambda f: ["run", str(f["root"] / "missing"), "--inputs", f["npz"]],
    "compile -o onto a folder that is not an artifact": lambda f: ["compile", f["model"], "-o", str(f["root"]),
                                                                   "--example-shapes", "x=2x3"],
    "compile a factory with --example-shapes": lambda f: ["compile", "tests.models_for_cli:tiny_bert", "-o",
                                                          str(f["root"] / "o10"), "--example-shapes", "x=2x3"],
    "run an npz missing an input": lambda f: ["run", f["artifact"], "--inputs", f["npz_other"]],
    "bench --backend nope": lambda f: ["bench", f["model"], "--backend", "nope", "--example-shapes", "x=2x3"],
    "inspect garbage bytes": lambda f: ["inspect", f["file"]],
    "run --output ''": lambda f: ["run", f["artifact"], "--inputs", f["npz"], "--output", ""],
    "run --output onto its --inputs": lambda f: ["run", f["artifact"], "--inputs", f["npz"], "--output", f["npz"]],
    "bench an artifact with --backend": lambda f: ["bench", f["artifact"], "--inputs", f["npz"], "--backend", "nope"],
    "bench an artifact with --example-shapes": lambda f: ["bench", f["artifact"], "--inputs", f["npz"],
                                                          "--example-shapes", "x=9x9"],
    "compile a relative module name": lambda f: ["compile", ".facts:model", "-o", str(f["root"] / "o11")],
    "compile a factory that exits": lambda f: ["compile", "tests.test_misuse:factory_that_exits", "-o",
                                               str(f["root"] / "o12")],
    "bench --rounds 0": lambda f: ["bench", f["artifact"], "--inputs", f["npz"], "--rounds", "0"],
    "bench --rounds -3": lambda f: ["bench", f["artifact"], "--inputs", f["npz"], "--rounds", "-3"],
    "bench without inputs": lambda f: ["bench", f["artifact"]],
    "bench a bad npz": lambda f: ["bench", f["artifact"], "--inputs", f["bad_npz"]],
    "bench a factory that raises": lambda f: ["bench", "tests.test_misuse:factory_that_raises"],
}


def factory_that_raises():
    raise RuntimeError("the user's factory failed")


def factory_that_exits():
    raise SystemExit(0)


@pytest.mark.parametrize("case", sorted(CLI_MISUSES))
def test_cli_misuse_is_one_paragraph_and_a_nonzero_exit(case, files):
    result = _cli(*CLI_MISUSES[case](files))
    assert result.returncode != 0, f"{case}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, f"{case}:\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and (lines[0].startswith("leangraph: error:") or lines[0].startswith("usage:")), \
        f"{case}:\n{result.stderr}"
    assert not any("internal error" in line for line in lines), f"{case} is not a user error:\n{result.stderr}"


def test_scores_that_are_numbers_in_any_spelling_are_taken():
    import sys

    as_score = sys.modules["leangraph.optimize"]._as_score
    assert as_score(0.5) == as_score(np.float32(0.5)) == as_score(torch.tensor(0.5)) == as_score(np.array(0.5)) == 0.5
    assert as_score(3) == 3.0
    assert all(as_score(bad) is None for bad in (None, True, "0.5", b"1", np.ones(2), torch.ones(2), [0.5]))
