"""Artifacts: round trip, byte-identical recompiles, refusal of tampered/truncated/incomplete ones,
and thread safety of a loaded model."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import leangraph
from leangraph.errors import ArtifactError
from tests.zoo import ZOO


def _compile():
    entry = ZOO["bert"]
    model = entry.build()
    return entry, model, leangraph.optimize(model, entry.inputs(*entry.shapes[0]), dynamic_shapes=entry.dynamic_shapes,
                                            backend="onnxruntime")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    entry, model, cm = _compile()
    directory = tmp_path_factory.mktemp("artifact") / "bert"
    cm.save(directory)
    return entry, model, cm, directory


def test_round_trip_keeps_outputs_and_structure(saved):
    entry, model, cm, directory = saved
    loaded = leangraph.load(directory)
    inputs = entry.inputs(*entry.shapes[1])
    out = loaded(*inputs)
    assert type(out).__name__ == type(model(*inputs)).__name__
    torch.testing.assert_close(out.last_hidden_state, cm(*inputs).last_hidden_state, rtol=0, atol=0)
    assert loaded.report.nodes_after == cm.report.nodes_after
    assert "loaded from artifact" in str(loaded.report)


def test_load_on_another_backend(saved):
    entry, _, cm, directory = saved
    loaded = leangraph.load(directory, backend="reference")
    inputs = entry.inputs(*entry.shapes[0])
    torch.testing.assert_close(loaded(*inputs).last_hidden_state, cm(*inputs).last_hidden_state, rtol=1e-4, atol=1e-5)


def test_compiling_twice_gives_byte_identical_artifacts(saved, tmp_path):
    _, _, _, first = saved
    _, _, cm = _compile()
    cm.save(tmp_path / "again")
    for name in ("manifest.json", "graph.onnx", "graph.safetensors"):
        assert (first / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


@pytest.fixture
def copy(saved, tmp_path):
    import shutil

    _, _, _, directory = saved
    target = tmp_path / "copy"
    shutil.copytree(directory, target)
    return target


def test_flipped_weight_byte_is_refused(copy):
    weights = copy / "graph.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"graph.safetensors does not match the artifact's manifest"):
        leangraph.load(copy)


def test_truncated_graph_is_refused(copy):
    graph = copy / "graph.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="modified, truncated or replaced"):
        leangraph.load(copy)


def test_edited_manifest_is_refused(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["backend"] = "reference"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="manifest of artifact .* was altered"):
        leangraph.load(copy)


def test_missing_file_and_bad_manifest(copy, tmp_path):
    (copy / "graph.safetensors").unlink()
    with pytest.raises(ArtifactError, match="incomplete: graph.safetensors is missing"):
        leangraph.load(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="is not valid JSON"):
        leangraph.load(copy)
    with pytest.raises(ArtifactError, match="does not exist"):
        leangraph.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="holds no manifest.json"):
        leangraph.load(tmp_path / "empty")


def test_other_format_version_is_refused(copy):
    from leangraph.runtime.artifact import content_hash

    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["version"] = 99
    manifest["content_hash"] = content_hash(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format version 99"):
        leangraph.load(copy)


@pytest.mark.parametrize("backend", ["onnxruntime", "reference"])
def test_eight_threads_match_serial_calls(saved, backend):
    entry, _, _, directory = saved
    assert_eight_threads_match_serial_calls(leangraph.load(directory, backend=backend), entry)


def assert_eight_threads_match_serial_calls(cm, entry):
    inputs = [entry.inputs(b, s) for b, s in [(1, 5), (2, 7), (3, 9), (4, 6)] * 4]
    serial = [cm(*x).last_hidden_state for x in inputs]
    barrier = threading.Barrier(8)

    def work(index):
        if index < 8:
            barrier.wait()  # all eight threads call at once
        return cm(*inputs[index]).last_hidden_state

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(len(inputs))))
    for i, expected in enumerate(serial):
        assert np.array_equal(results[i].numpy(), expected.numpy()), i


FRESH = """
import json, sys, warnings
import numpy as np
if sys.argv[3] == "imported":
    import transformers.modeling_outputs  # the user's import: it registers the ModelOutput classes
import leangraph

inputs = np.load(sys.argv[2])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = leangraph.load(sys.argv[1])(*[inputs[f"arr_{i}"] for i in range(len(inputs.files))])
print(json.dumps({"type": type(out).__name__, "warnings": [str(w.message) for w in caught],
                  "transformers": "transformers" in sys.modules}))
"""


@pytest.mark.parametrize("imported", [False, True])
def test_a_fresh_process_rebuilds_transformers_outputs(saved, tmp_path, imported):
    # The manifest's graph names transformers' output class; loading imports nothing the file names,
    # but transformers.modeling_outputs is on leangraph's own list of modules it may import
    # (compiled.TRUSTED_OUTPUT_MODULES): with or without the user's import, the class comes back.
    import subprocess
    import sys

    entry, model, cm, directory = saved
    inputs = entry.inputs(*entry.shapes[0])
    np.savez(tmp_path / "in.npz", *[x.numpy() for x in inputs])
    done = subprocess.run([sys.executable, "-c", FRESH, str(directory), str(tmp_path / "in.npz"),
                           "imported" if imported else "not"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = type(model(*inputs)).__name__
    assert result["type"] == expected and not result["warnings"], result


def test_only_the_trusted_list_is_imported(monkeypatch):
    # A name that only looks like a trusted module's is not imported.
    import sys

    from leangraph.runtime import compiled

    monkeypatch.setattr(compiled, "TRUSTED_OUTPUT_MODULES", ("colorsys",))
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    assert not compiled._import_trusted_output_modules({"colorsysx.Type", "colorsys_evil.Type", "os.Type"})
    assert "colorsys" not in sys.modules
    assert compiled._import_trusted_output_modules({"colorsys.Type"}) and "colorsys" in sys.modules


def test_a_graph_swapped_in_with_its_hashes_recomputed_is_refused(tmp_path):
    # Hashes are integrity, not authenticity; but a graph that is not the one the manifest describes
    # (another model's inputs and outputs) must not run under the manifest's name and signature.
    import hashlib

    from onnx import helper

    from leangraph.errors import ArtifactError
    from leangraph.runtime.artifact import content_hash
    from tests.helpers import add_relu_model, make_model, tensor

    x = np.ones((2, 3), np.float32)
    leangraph.optimize(add_relu_model(), (x,), backend="onnxruntime").save(tmp_path / "a")
    other = make_model([helper.make_node("Neg", ["q"], ["z"], name="neg")], [tensor("q", shape=(4,))],
                       [tensor("z", shape=(4,))])
    leangraph.optimize(other, (np.ones(4, np.float32),), backend="onnxruntime", passes="none").save(tmp_path / "b")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    graph = (tmp_path / "b" / "graph.onnx").read_bytes()
    (tmp_path / "a" / "graph.onnx").write_bytes(graph)
    manifest["files"] = {"graph.onnx": hashlib.sha256(graph).hexdigest()}
    (tmp_path / "a" / "graph.safetensors").unlink(missing_ok=True)
    if (tmp_path / "b" / "graph.safetensors").exists():
        data = (tmp_path / "b" / "graph.safetensors").read_bytes()
        (tmp_path / "a" / "graph.safetensors").write_bytes(data)
        manifest["files"]["graph.safetensors"] = hashlib.sha256(data).hexdigest()
    manifest["content_hash"] = content_hash(manifest)
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="inputs or outputs are not those its manifest lists"):
        leangraph.load(tmp_path / "a")


def test_scalar_inputs_round_trip_through_an_artifact(tmp_path):
    from onnx import helper

    from tests.helpers import make_model, tensor

    model = make_model([helper.make_node("Mul", ["x", "s"], ["y"], name="mul")],
                       [tensor("x", shape=(2, 3)), tensor("s", shape=())], [tensor("y", shape=(2, 3))])
    x, s = np.ones((2, 3), np.float32), np.array(2.0, np.float32)
    leangraph.optimize(model, (x, s), backend="onnxruntime").save(tmp_path / "a")
    np.testing.assert_array_equal(leangraph.load(tmp_path / "a")(x, s), 2 * x)
