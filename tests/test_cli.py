"""`leangraph inspect`: the table, --diff, --html, --explain; user errors exit non-zero without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from tests.helpers import add_relu_model

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "leangraph", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_inspect_torch_factory_with_html_and_diff(tmp_path):
    html = tmp_path / "report.html"
    result = run_cli("inspect", "tests.models_for_cli:tiny_bert", "--html", str(html), "--diff")
    assert result.returncode == 0, result.stderr
    assert "fuse_attention" in result.stdout and "verified" in result.stdout
    assert "=== algebraic cleanup#1 ===" in result.stdout
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "encoder.layer.0.attention" in page
    assert "src=" not in page and "href=\"http" not in page  # self-contained


def test_inspect_onnx_file_with_named_passes(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(add_relu_model(), path)
    result = run_cli("inspect", str(path), "--passes", "cse,dce", "--example-shapes", "x=4x3")
    assert result.returncode == 0, result.stderr
    assert "cse" in result.stdout and "fuse_attention" not in result.stdout


def test_inspect_explains_why_rules_did_or_did_not_match():
    result = run_cli("inspect", "tests.models_for_cli:tiny_bert", "--explain", "fuse_attention")
    assert result.returncode == 0, result.stderr
    assert "=== why fuse_attention's rules did or did not match (run 1 of 2) ===" in result.stdout
    assert ": matched" in result.stdout  # the attention the pass fuses
    assert "then failed: " in result.stdout  # and a candidate where a rule stopped, with the reason


@pytest.mark.parametrize(("name", "message"), [("nope", "no pass named 'nope'"),
                                               ("fuse_gelu", "--explain fuse_gelu: the pass is not in the pipeline")])
def test_inspect_explain_of_an_unknown_or_absent_pass_is_a_clean_error(name, message):
    result = run_cli("inspect", "tests.models_for_cli:tiny_bert", "--passes", "cse,dce,fuse_attention", "--explain", name)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_missing_file_is_a_clean_error(tmp_path):
    result = run_cli("inspect", str(tmp_path / "missing.onnx"))
    assert result.returncode == 2
    assert "leangraph: error: model file" in result.stderr and "Traceback" not in result.stderr


def test_garbage_file_is_a_clean_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x00\x01garbage" * 100)
    result = run_cli("inspect", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "bad.onnx" in result.stderr


def test_unknown_pass_and_bad_factory(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(add_relu_model(), path)
    result = run_cli("inspect", str(path), "--passes", "nope")
    assert result.returncode == 2 and "no pass named 'nope'" in result.stderr
    result = run_cli("inspect", "tests.models_for_cli:not_a_pair")
    assert result.returncode == 2 and "must return (module, example_inputs)" in result.stderr
    result = run_cli("inspect", "tests.nowhere:model")
    assert result.returncode == 2 and "cannot load model factory" in result.stderr


def test_console_script_finds_factories_in_the_working_directory():
    # `leangraph` (the installed script, not `python -m`) imports package.module:attribute from the cwd.
    script = Path(sys.executable).parent / "leangraph"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(script), "inspect", "tests.models_for_cli:not_a_pair"], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 2 and "must return (module, example_inputs)" in result.stderr, result.stderr


def test_verbose_shows_traceback(tmp_path):
    result = run_cli("-v", "inspect", str(tmp_path / "missing.onnx"))
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_compile_then_run_from_npz(tmp_path):
    import json

    import numpy as np

    out = tmp_path / "artifact"
    result = run_cli("compile", "tests.models_for_cli:tiny_bert", "-o", str(out), "--backend", "onnxruntime", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["nodes_after"] < summary["nodes_before"] and summary["passes_reverted"] == []
    assert summary["verified"] is True and (out / "manifest.json").is_file()
    assert summary["partitions"] == [["onnxruntime", summary["nodes_after"]]]
    ids = np.array([[5, 6, 7, 8], [9, 10, 11, 12]], np.int64)
    np.savez(tmp_path / "in.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    result = run_cli("run", str(out), "--inputs", str(tmp_path / "in.npz"), "--output", str(tmp_path / "out.npz"))
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "out.npz") as outputs:
        assert outputs[outputs.files[0]].shape == (2, 4, 32)
    result = run_cli("run", str(out), "--inputs", str(tmp_path / "in.npz"), "--json")
    assert result.returncode == 0 and json.loads(result.stdout)


def test_compile_is_quiet_and_run_refuses_bad_inputs(tmp_path):
    import numpy as np

    path = tmp_path / "m.onnx"
    onnx.save(add_relu_model(), path)
    out = tmp_path / "artifact"
    result = run_cli("compile", str(path), "-o", str(out), "--example-shapes", "x=2x3")
    assert result.returncode == 0 and result.stdout == result.stderr == "", result.stdout + result.stderr
    result = run_cli("compile", str(path), "-o", str(tmp_path / "unverified"))
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    assert "not verified" in result.stderr and "--example-shapes" in result.stderr
    np.savez(tmp_path / "wrong.npz", y=np.ones((2, 3), np.float32))
    result = run_cli("run", str(out), "--inputs", str(tmp_path / "wrong.npz"))
    assert result.returncode == 2 and "holds ['y']; the model takes ['x']" in result.stderr
    np.savez(tmp_path / "int.npz", x=np.ones((2, 3), np.int64))
    result = run_cli("run", str(out), "--inputs", str(tmp_path / "int.npz"))
    assert result.returncode == 5 and "must be float32; got int64" in result.stderr
    (out / "graph.safetensors").write_bytes(b"tampered")
    result = run_cli("run", str(out), "--inputs", str(tmp_path / "int.npz"))
    assert result.returncode == 7 and "does not match the artifact's manifest" in result.stderr


def test_bench_factory_against_eager_and_artifact_against_onnxruntime(tmp_path):
    import json

    import numpy as np

    result = run_cli("bench", "tests.models_for_cli:tiny_bert", "--baseline", "eager", "--rounds", "3", "--json")
    assert result.returncode == 0, result.stderr
    table = json.loads(result.stdout)
    assert set(table) == {"leangraph (auto)", "baseline (eager)"}
    assert all(row["median_ms"] > 0 for row in table.values())
    out = tmp_path / "artifact"
    assert run_cli("compile", "tests.models_for_cli:tiny_bert", "-o", str(out)).returncode == 0
    ids = np.array([[5, 6, 7, 8]], np.int64)
    np.savez(tmp_path / "in.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    result = run_cli("bench", str(out), "--inputs", str(tmp_path / "in.npz"), "--rounds", "3")
    assert result.returncode == 0, result.stderr
    assert "baseline (onnxruntime)" in result.stdout and "vs baseline" in result.stdout
    result = run_cli("bench", str(out), "--baseline", "torch", "--inputs", str(tmp_path / "in.npz"))
    assert result.returncode == 2 and "needs a torch model factory" in result.stderr


def test_run_writes_exactly_the_output_path(tmp_path):
    import numpy as np

    path = tmp_path / "m.onnx"
    onnx.save(add_relu_model(), path)
    assert run_cli("compile", str(path), "-o", str(tmp_path / "a"), "--example-shapes", "x=2x3").returncode == 0
    np.savez(tmp_path / "in.npz", x=np.ones((2, 3), np.float32))
    result = run_cli("run", str(tmp_path / "a"), "--inputs", str(tmp_path / "in.npz"), "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").is_file() and not (tmp_path / "out.npz").exists()  # np.savez added '.npz'
    with np.load(tmp_path / "out") as outputs:
        assert outputs["y"].shape == (2, 3)


def test_generate_prints_the_new_tokens_of_each_prompt(tmp_path):
    from tests.runtime.test_generation import causal_lm, hf_greedy

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("5 17 3 88\n\n1, 2, 3\n")
    result = run_cli("generate", "tests.models_for_cli:tiny_gpt2_lm", "--prompts", str(prompts),
                     "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr
    lm = causal_lm("gpt2")
    expected = [hf_greedy(lm, [5, 17, 3, 88], 5), hf_greedy(lm, [1, 2, 3], 5)]
    assert [list(map(int, line.split())) for line in result.stdout.splitlines()] == expected


def test_generate_refuses_a_prompt_file_that_is_not_token_ids(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello world\n")
    result = run_cli("generate", "tests.models_for_cli:tiny_gpt2_lm", "--prompts", str(prompts))
    assert result.returncode == 2 and "line 1 is not token ids" in result.stderr
    assert "Traceback" not in result.stderr
