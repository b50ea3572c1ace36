"""Artifacts of TVM-compiled models keep the compiled libraries: loaded instead of rebuilt, byte-identical
across compiles, refused when tampered with, rebuilt when built for another CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np

import pytest
import torch

import leangraph
from leangraph.errors import ArtifactError
from leangraph.runtime.artifact import content_hash
from tests.runtime.test_artifact import assert_eight_threads_match_serial_calls
from tests.zoo import ZOO


def _compile():
    entry = ZOO["bert"]
    model = entry.build()
    return entry, leangraph.optimize(model, entry.inputs(*entry.shapes[0]), dynamic_shapes=entry.dynamic_shapes,
                                     backend="tvm")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    entry, cm = _compile()
    directory = tmp_path_factory.mktemp("tvm-artifact") / "bert"
    cm.save(directory)
    return entry, cm, directory


def libraries(directory):
    return sorted(p.name for p in directory.glob("*.so"))


def test_libraries_are_saved_and_loaded_not_rebuilt(saved, monkeypatch):
    entry, cm, directory = saved
    manifest = json.loads((directory / "manifest.json").read_text())
    tvm_pieces = [p for p in cm._executable.pieces if p.backend == "tvm"]
    assert libraries(directory) == sorted(f"{p.key}.so" for p in tvm_pieces) and tvm_pieces
    assert set(manifest["libraries"]) <= set(manifest["files"])

    from leangraph.backends import tvm as tvm_backend

    monkeypatch.setattr(tvm_backend, "_build", lambda model: pytest.fail("a stored piece was compiled again"))
    loaded = leangraph.load(directory)
    assert f"{len(tvm_pieces)} compiled" in str(loaded.report)
    inputs = entry.inputs(*entry.shapes[1])
    torch.testing.assert_close(loaded(*inputs).last_hidden_state, cm(*inputs).last_hidden_state, rtol=0, atol=0)


def test_a_fresh_process_loads_and_runs_the_libraries(saved, tmp_path):
    # A new process has none of the packed functions the libraries call registered; they are
    # registered from the saved graph, whose float attributes are float32 (a layer norm's epsilon
    # named after its float64 value was not found: the artifact and the compile cache failed there).
    entry, cm, directory = saved
    arrays = [x.numpy() for x in entry.inputs(*entry.shapes[1])]
    np.savez(tmp_path / "inputs.npz", *arrays)
    script = (
        "import sys, numpy as np, leangraph\n"
        "cm = leangraph.load(sys.argv[1])\n"
        "assert 'compiled librar' in str(cm.report), cm.report\n"
        "inputs = np.load(sys.argv[2])\n"
        "np.savez(sys.argv[3], *cm.run_flat([inputs[f'arr_{i}'] for i in range(len(inputs.files))]))\n"
    )
    subprocess.run([sys.executable, "-c", script, str(directory), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
                   check=True, capture_output=True, timeout=600)
    loaded = np.load(tmp_path / "out.npz")
    expected = cm.run_flat(arrays)
    assert len(loaded.files) == len(expected)
    for index, array in enumerate(expected):
        np.testing.assert_array_equal(loaded[f"arr_{index}"], array)


def test_compiling_twice_gives_byte_identical_libraries(saved, tmp_path):
    _, _, first = saved
    for attempt in range(2):  # TVM orders its shape functions by pointer: a lucky compile can match by chance
        _, cm = _compile()
        cm.save(tmp_path / str(attempt))
        for name in ["manifest.json", "graph.onnx", "graph.safetensors"] + libraries(first):
            assert (first / name).read_bytes() == (tmp_path / str(attempt) / name).read_bytes(), name


def test_tampered_library_is_refused(saved, tmp_path):
    _, _, directory = saved
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    library = copy / libraries(copy)[0]
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{library.name} does not match the artifact's manifest"):
        leangraph.load(copy)


def test_library_outside_the_artifact_is_refused(saved, tmp_path):
    _, _, directory = saved
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    name = libraries(copy)[0]
    manifest["libraries"]["../elsewhere.so"] = manifest["libraries"].pop(name)
    manifest["files"]["../elsewhere.so"] = manifest["files"].pop(name)
    manifest["content_hash"] = content_hash(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="lists unexpected files"):
        leangraph.load(copy)


def test_library_built_for_another_cpu_is_rebuilt(saved, monkeypatch):
    entry, cm, directory = saved
    from leangraph.backends import tvm as tvm_backend

    monkeypatch.setattr(tvm_backend.TVMBackend, "library_target", lambda self: "llvm -mcpu=another-cpu")
    loaded = leangraph.load(directory)
    assert "not this machine (llvm -mcpu=another-cpu): compiled again" in str(loaded.report)
    inputs = entry.inputs(*entry.shapes[0])
    torch.testing.assert_close(loaded(*inputs).last_hidden_state, cm(*inputs).last_hidden_state, rtol=0, atol=0)


def test_eight_threads_match_serial_calls_on_a_loaded_tvm_artifact(saved):
    # One Relax VM per thread: concurrent calls on one VM crash the process.
    entry, _, directory = saved
    assert_eight_threads_match_serial_calls(leangraph.load(directory), entry)


def test_library_that_cannot_be_loaded_is_a_clear_error(saved, tmp_path):
    # Hashes recomputed after the damage: the manifest check passes, the loader must still fail cleanly.
    from leangraph.runtime.artifact import sha256_file

    _, _, directory = saved
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    name = libraries(copy)[0]
    (copy / name).write_bytes(b"not a shared library")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(copy / name)
    manifest["content_hash"] = content_hash(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"cannot load the TVM library .*{name}"):
        leangraph.load(copy)


def test_a_loaded_model_saves_its_libraries_again(saved, tmp_path):
    # A library loaded back cannot export itself (TVM: "Module[library] does not support
    # SaveToBytes"): the bytes it was loaded from are written, and load again without a rebuild.
    entry, cm, directory = saved
    leangraph.load(directory).save(tmp_path / "again")
    for name in ["manifest.json", "graph.onnx", "graph.safetensors"] + libraries(directory):
        assert (directory / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    again = leangraph.load(tmp_path / "again")
    assert "loaded, not rebuilt" in str(again.report)
    inputs = entry.inputs(*entry.shapes[0])
    torch.testing.assert_close(again(*inputs).last_hidden_state, cm(*inputs).last_hidden_state, rtol=0, atol=0)


def test_a_linked_library_is_refused(saved, tmp_path):
    # Native code is loaded only from the artifact's own regular files, never through a link.
    _, _, directory = saved
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    name = libraries(copy)[0]
    shutil.move(copy / name, tmp_path / name)
    (copy / name).symlink_to(tmp_path / name)
    with pytest.raises(ArtifactError, match=f"{name} is a symbolic link"):
        leangraph.load(copy)
