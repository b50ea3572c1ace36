"""Loading an untrusted .onnx file or artifact (docs/security.md): nothing they name is imported or
run, every artifact file is the folder's own regular file, checked by hash, and the safetensors
header must agree with the graph; a save never deletes or overwrites what it did not write."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

import leangraph
from leangraph.errors import ArtifactError
from leangraph.runtime.artifact import content_hash
from tests.helpers import add_relu_model

ROOT = Path(__file__).resolve().parents[2]
X = np.array([[-2.0, 0.0, 3.0]], np.float32)
LEAF = {"type": None, "context": None, "children_spec": []}

# Each names the module 'planted' (which creates a marker file when imported) in its own way:
# a container type (the runtime imported its module), a dict key that is an enum (torch's
# treespec_loads imports its module), a defaultdict's factory (torch's reader imports it).
SPECS = {
    "type": [1, {"type": "planted.Outputs", "context": "null", "children_spec": [LEAF]}],
    "enum key": [1, {"type": "builtins.dict", "children_spec": [LEAF],
                     "context": json.dumps([{"__enum__": True, "fqn": "planted:Color", "name": "RED"}])}],
    "defaultdict": [1, {"type": "collections.defaultdict", "children_spec": [LEAF],
                        "context": {"default_factory_module": "planted", "default_factory_name": "factory",
                                    "dict_context": ["y"]}}],
}

PLANTED = textwrap.dedent("""
    import enum, pathlib
    pathlib.Path(__file__).with_name("RAN").write_text("the model file ran code")
    class Color(enum.Enum):
        RED = 1
    factory = list
    class Outputs(tuple):
        pass
""")

CHILD = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np
    import leangraph

    kind, path = sys.argv[1], sys.argv[2]
    x = np.array([[-2.0, 0.0, 3.0]], np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cm = leangraph.optimize(path, (x,), backend="onnxruntime") if kind == "onnx" else leangraph.load(path)
        out = cm(x)
    print(json.dumps({"type": type(out).__name__, "value": np.asarray(out).tolist(),
                      "planted imported": "planted" in sys.modules,
                      "warnings": [str(w.message) for w in caught]}))
""")


def _with_spec(spec) -> onnx.ModelProto:
    model = add_relu_model()
    model.metadata_props.add(key="leangraph.out_spec", value=json.dumps(spec))
    return model


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A folder holding the planted module, the working directory and on sys.path of the children."""
    folder = tmp_path_factory.mktemp("planted")
    (folder / "planted.py").write_text(PLANTED)
    return folder


@pytest.mark.parametrize("kind", ["onnx", "artifact"])
@pytest.mark.parametrize("spec", sorted(SPECS))
def test_a_model_file_naming_a_module_never_imports_it(planted, tmp_path, spec, kind):
    path = tmp_path / "model.onnx"
    onnx.save(_with_spec(SPECS[spec]), path)
    if kind == "artifact":  # an artifact of the ONNX Runtime backend, its graph carrying the spec
        leangraph.optimize(str(path), (X,), backend="onnxruntime").save(tmp_path / "artifact")
        path = tmp_path / "artifact"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(planted)])}
    done = subprocess.run([sys.executable, "-c", CHILD, kind, str(path)], cwd=planted, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not (planted / "RAN").exists() and not result["planted imported"], "code named by the model file ran"
    assert result["type"] == "ndarray" and result["value"] == [[0.0, 0.0, 4.0]]  # the outputs, as a plain result
    assert any("outputs are returned as a tuple" in w for w in result["warnings"]), result["warnings"]
    if spec == "type":
        assert any("planted.Outputs" in w for w in result["warnings"]), result["warnings"]


def test_registered_structures_are_rebuilt_from_a_file(tmp_path):
    # dict and tuple are torch's own: the structure in the metadata is rebuilt without importing anything.
    spec = [1, {"type": "builtins.dict", "context": json.dumps(["y"]),
                "children_spec": [{"type": "builtins.tuple", "context": "null", "children_spec": [LEAF]}]}]
    out = leangraph.optimize(_with_spec(spec), (X,), backend="onnxruntime")(X)
    assert set(out) == {"y"} and isinstance(out["y"], tuple)
    np.testing.assert_array_equal(out["y"][0], [[0.0, 0.0, 4.0]])


@pytest.mark.parametrize(("spec", "why"), [
    ([1, {"type": "builtins.tuple", "context": "null", "children_spec": [LEAF, LEAF]}], "2 leaves for the graph's 1"),
    ([2, LEAF], "protocol 2"),
    ("[" * 50_000 + "]" * 50_000, "not the JSON of a torch pytree spec"),
    ([1, {"type": "builtins.list", "context": "null", "children_spec": [LEAF], "extra": 1}], "not the JSON"),
    ([1, {"type": "builtins.dict", "context": "{not json", "children_spec": [LEAF]}], "context of its builtins.dict"),
])
def test_an_unusable_output_structure_gives_a_tuple_and_a_warning(spec, why):
    model = add_relu_model()
    model.metadata_props.add(key="leangraph.out_spec", value=spec if isinstance(spec, str) else json.dumps(spec))
    cm = leangraph.optimize(model, (X,), backend="onnxruntime")
    with pytest.warns(UserWarning, match=f"outputs are returned as a tuple.*{why}"):
        out = cm(X)
    np.testing.assert_array_equal(out, [[0.0, 0.0, 4.0]])


# ---------------------------------------------------------------------------------------------
# Artifact checks


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A small ONNX Runtime artifact with two weights (so its safetensors header has two tensors)."""
    from onnx import helper

    from tests.helpers import make_model, tensor

    w = onnx.numpy_helper.from_array(np.arange(3, dtype=np.float32) - 1, "w")
    v = onnx.numpy_helper.from_array(np.full(3, 2.0, np.float32), "v")
    model = make_model([helper.make_node("Add", ["x", "w"], ["s"], name="add"),
                        helper.make_node("Mul", ["s", "v"], ["y"], name="mul")],
                       [tensor("x", shape=("batch", 3))], [tensor("y", shape=("batch", 3))], [w, v], name="two_weights")
    folder = tmp_path_factory.mktemp("artifact") / "a"
    leangraph.optimize(model, (X,), backend="onnxruntime", passes="none").save(folder)
    return folder


@pytest.fixture
def copy(artifact, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(artifact, target)
    return target


def rehash(folder: Path, manifest: dict | None = None) -> None:
    """Record the folder's files as they are now: an edit the hashes do not catch."""
    manifest = manifest or json.loads((folder / "manifest.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    manifest["content_hash"] = content_hash(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def header(folder: Path) -> tuple[dict, bytes]:
    data = (folder / "graph.safetensors").read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + length]), data[8 + length:]


def write_weights(folder: Path, head: dict | bytes, body: bytes, length: int | None = None) -> None:
    raw = head if isinstance(head, bytes) else json.dumps(head).encode()
    (folder / "graph.safetensors").write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + body)
    rehash(folder)


def test_the_unedited_artifact_loads(artifact):
    np.testing.assert_array_equal(leangraph.load(artifact)(X), (X + [-1, 0, 1]) * 2)


def test_a_longer_header_with_rehashed_files_is_refused(copy):
    # The data moves by the header's growth while graph.onnx keeps the old offsets: the weights were
    # read from the wrong bytes, silently.
    head, body = header(copy)
    head["__metadata__"] = {"note": "x" * 64}
    write_weights(copy, head, body)
    with pytest.raises(ArtifactError, match=r"initializer '(w|v)' .* is at bytes \d+\+12 in graph.onnx but \d+\+12"):
        leangraph.load(copy)


def test_swapped_tensor_offsets_are_refused(copy):
    head, body = header(copy)
    head["w"]["data_offsets"], head["v"]["data_offsets"] = head["v"]["data_offsets"], head["w"]["data_offsets"]
    write_weights(copy, head, body)
    with pytest.raises(ArtifactError, match=r"initializer '(w|v)' .* is at bytes"):
        leangraph.load(copy)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda h: h["w"].update(dtype="I32"), r"initializer 'w' .* is FLOAT\[3\] in graph.onnx but I32\[3\]"),
    (lambda h: h["w"].update(shape=[1, 3]), r"initializer 'w' .* is FLOAT\[3\] in graph.onnx but F32\[1, 3\]"),
    (lambda h: h["w"].update(data_offsets=[0, 8]), r"tensor 'w' \(F32\[3\]\) does not fill its data_offsets"),
    (lambda h: h["w"].update(dtype="F99"), r"'w' has a wrong dtype, shape or data_offsets"),
    (lambda h: h["w"].update(shape=[-3]), r"'w' has a wrong dtype, shape or data_offsets"),
    (lambda h: h["w"].update(shape=[True, 3]), r"'w' has a wrong dtype, shape or data_offsets"),
    (lambda h: h["w"].update(pickle="x"), r"the entry of tensor 'w' is not \{dtype, shape, data_offsets\}"),
    (lambda h: h.update(__metadata__={"a": 1}), r"__metadata__ is not an object of strings"),
])
def test_an_edited_header_is_refused(copy, edit, message):
    head, body = header(copy)
    edit(head)
    write_weights(copy, head, body)
    with pytest.raises(ArtifactError, match=message):
        leangraph.load(copy)


def test_tensors_the_graph_does_not_read_are_refused(copy):
    # 'v' moved into graph.onnx itself: the header still lists it.
    _, body = header(copy)

    def inline(proto):
        v = next(t for t in proto.graph.initializer if t.name == "v")
        offset = int(next(e.value for e in v.external_data if e.key == "offset"))
        start = (copy / "graph.safetensors").stat().st_size - len(body)
        v.raw_data = body[offset - start:offset - start + 12]
        del v.external_data[:]
        v.data_location = onnx.TensorProto.DEFAULT

    _edit_graph(copy, inline)
    with pytest.raises(ArtifactError, match=r"graph.safetensors holds tensors the graph does not read \('v'\)"):
        leangraph.load(copy)


def test_overlapping_tensors_and_gaps_are_refused(copy):
    head, body = header(copy)
    first, second = sorted(("w", "v"), key=lambda n: head[n]["data_offsets"][0])
    head[second]["data_offsets"] = [8, 20]
    write_weights(copy, head, body)
    with pytest.raises(ArtifactError, match=rf"tensor '{second}' starts at 8, not where the tensor before it ends \(12\)"):
        leangraph.load(copy)
    head[second]["data_offsets"] = [12, 24]
    write_weights(copy, head, body + b"\0" * 4)  # bytes after the last tensor
    with pytest.raises(ArtifactError, match=r"its tensors end at byte \d+ of \d+"):
        leangraph.load(copy)


@pytest.mark.parametrize(("raw", "length", "message"), [
    (b"{}", 1 << 40, r"header length 1099511627776 is beyond the file"),
    (b"[" * 100_000 + b"]" * 100_000, None, r"header is nested too deeply"),
    (b'{"w": 1, "w": 2}', None, r"header is not valid JSON \(the key 'w' appears twice\)"),
    (b"\xff\xfe", None, r"header is not valid JSON"),
    (b"[]", None, r"header is not a JSON object"),
])
def test_a_malformed_header_is_refused(copy, raw, length, message):
    _, body = header(copy)
    write_weights(copy, raw, body, length)
    with pytest.raises(ArtifactError, match=message):
        leangraph.load(copy)


def test_a_truncated_weights_file_is_refused(copy):
    (copy / "graph.safetensors").write_bytes(b"\1\0\0")
    rehash(copy)
    with pytest.raises(ArtifactError, match=r"graph.safetensors is not a valid safetensors file: it is 3 bytes long"):
        leangraph.load(copy)


def _edit_graph(folder: Path, edit) -> None:
    proto = onnx.load(folder / "graph.onnx", load_external_data=False)
    edit(proto)
    (folder / "graph.onnx").write_bytes(proto.SerializeToString())
    rehash(folder)


def test_external_data_outside_the_weights_is_refused(copy):
    def elsewhere(proto):
        entry = next(e for e in proto.graph.initializer[0].external_data if e.key == "location")
        entry.value = "../../etc/hostname"

    _edit_graph(copy, elsewhere)
    with pytest.raises(ArtifactError, match=r"points outside the artifact \('../../etc/hostname'\)"):
        leangraph.load(copy)


def test_external_data_in_a_constant_attribute_is_refused(copy):
    from onnx import TensorProto, helper

    def constant(proto):
        value = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[3])
        value.data_location = TensorProto.EXTERNAL
        value.external_data.add(key="location", value="graph.safetensors")
        value.external_data.add(key="offset", value="0")
        value.external_data.add(key="length", value="12")
        proto.graph.node.append(helper.make_node("Constant", [], ["unused"], value=value, name="planted"))

    _edit_graph(copy, constant)
    with pytest.raises(ArtifactError, match=r"external data outside graph.safetensors's initializers \('planted'\)"):
        leangraph.load(copy)


@pytest.mark.parametrize("name", ["graph.onnx", "graph.safetensors", "manifest.json"])
def test_a_symbolic_link_in_the_artifact_is_refused(copy, tmp_path, name):
    # The link points at an identical file: the hashes would match, but the file is not the artifact's.
    outside = tmp_path / "outside"
    shutil.copy(copy / name, outside)
    (copy / name).unlink()
    (copy / name).symlink_to(outside)
    with pytest.raises(ArtifactError, match=rf"{name} is a symbolic link; an artifact's files must be its own"):
        leangraph.load(copy)


def test_a_folder_or_a_fifo_in_place_of_a_file_is_refused(copy):
    (copy / "graph.safetensors").unlink()
    (copy / "graph.safetensors").mkdir()
    with pytest.raises(ArtifactError, match=r"graph.safetensors is not a regular file"):
        leangraph.load(copy)
    (copy / "graph.safetensors").rmdir()
    os.mkfifo(copy / "graph.safetensors")  # opening it for reading would wait for a writer forever
    with pytest.raises(ArtifactError, match=r"graph.safetensors is not a regular file"):
        leangraph.load(copy)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _write_manifest(folder: Path, manifest: dict, rehashed: bool = True) -> None:
    if rehashed:
        manifest["content_hash"] = content_hash(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("version", "2", r"has format version \"2\"; this leangraph reads version 2"),
    ("version", True, r"has format version true"),
    ("files", [], r"'files' must be an object of file name -> sha256, not list"),
    ("files", {"graph.onnx": 5}, r"'files' must be an object of file name -> sha256, not dict"),
    ("name", 5, r"'name' must be a string, not 5"),
    ("backend", 5, r"'backend' must be a backend name, not 5"),
    ("backend", None, r"'backend' must be a backend name, not null"),
    ("libraries", [], r"'libraries' must be an object"),
    ("libraries", {"x.so": "tvm"}, r"'libraries' must be an object"),
    ("inputs", "x", r"'inputs' must be a list of \{name, dtype, shape\}"),
    ("inputs", [{"name": "x", "dtype": "float32", "shape": [1.5]}], r"'inputs' must be a list of"),
    ("outputs", [1], r"'outputs' must be a list of names"),
    ("quantization", "int8", r"'quantization' must be a list of strings"),
    ("content_hash", None, r"'content_hash' must be a sha256"),
])
def test_a_manifest_of_wrong_types_is_refused(copy, field, value, message):
    manifest = _manifest(copy)
    manifest[field] = value
    _write_manifest(copy, manifest, rehashed=field != "content_hash")
    with pytest.raises(ArtifactError, match=message) as info:
        leangraph.load(copy)
    assert info.value.hint


def test_a_manifest_missing_fields_is_refused(copy):
    manifest = _manifest(copy)
    del manifest["files"], manifest["backend"]
    _write_manifest(copy, manifest)
    with pytest.raises(ArtifactError, match=r"is malformed: 'backend' is missing; 'files' is missing"):
        leangraph.load(copy)


@pytest.mark.parametrize(("text", "message"), [
    ("[" * 100_000 + "]" * 100_000, r"is nested too deeply to be a leangraph manifest"),
    ('{"format": "leangraph-artifact", "format": "x"}', r"is not valid JSON \(the key 'format' appears twice\)"),
    ("[1, 2]", r"is not a leangraph artifact manifest"),
])
def test_a_malformed_manifest_is_refused(copy, text, message):
    (copy / "manifest.json").write_text(text)
    with pytest.raises(ArtifactError, match=message):
        leangraph.load(copy)


def test_a_huge_manifest_is_refused_before_it_is_read(copy):
    with open(copy / "manifest.json", "wb") as f:
        f.truncate(17 << 20)
    with pytest.raises(ArtifactError, match=r"manifest.json is 17825792 bytes, over the 16 MiB"):
        leangraph.load(copy)


@pytest.mark.parametrize("name", ["..", ".hidden.so", "sub/x.so", ""])
def test_library_names_outside_the_folder_are_refused(copy, name):
    manifest = _manifest(copy)
    manifest["libraries"][name] = {"piece": "tvm-0", "backend": "tvm", "target": "llvm"}
    manifest["files"][name] = "0" * 64
    _write_manifest(copy, manifest)
    with pytest.raises(ArtifactError, match=r"lists unexpected files"):
        leangraph.load(copy)


# ---------------------------------------------------------------------------------------------
# Saving


@pytest.fixture(scope="module")
def compiled():
    return leangraph.optimize(add_relu_model(), (X,), backend="onnxruntime", passes="none")


def test_save_refuses_a_folder_that_is_not_an_artifact(compiled, tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "graph.onnx").write_text("a file of the user's that happens to have this name")
    with pytest.raises(ArtifactError, match=rf"refusing to save the artifact of model 'add_relu' into '{tmp_path}': "
                                            r"the folder is not empty and is not a leangraph artifact .*'thesis.tex'"):
        compiled.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.onnx", "thesis.tex"]
    assert (tmp_path / "graph.onnx").read_text().startswith("a file of the user's")


def test_save_over_an_artifact_deletes_only_the_files_it_wrote(compiled, tmp_path):
    folder = tmp_path / "a"
    compiled.save(folder)
    manifest = _manifest(folder)
    # An earlier save's library, unchanged: stale, deleted. One the user rewrote since, and one the
    # manifest names without a hash: not the save's any more, kept.
    for name, content in [("tvm-00000000000000000000.so", b"old"), ("tvm-11111111111111111111.so", b"mine"),
                          ("notes.txt", b"the user's")]:
        (folder / name).write_bytes(content)
        manifest["libraries"][name] = {"piece": name[:-3], "backend": "tvm", "target": "llvm"}
    manifest["files"]["tvm-00000000000000000000.so"] = hashlib.sha256(b"old").hexdigest()
    manifest["files"]["tvm-11111111111111111111.so"] = hashlib.sha256(b"what it was").hexdigest()
    _write_manifest(folder, manifest)
    compiled.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["graph.onnx", "graph.safetensors", "manifest.json", "notes.txt",
                                                       "tvm-11111111111111111111.so"]
    assert (folder / "tvm-11111111111111111111.so").read_bytes() == b"mine"
    np.testing.assert_array_equal(leangraph.load(folder)(X), [[0.0, 0.0, 4.0]])


def test_save_trusts_no_altered_manifest_to_delete(compiled, tmp_path):
    folder = tmp_path / "a"
    compiled.save(folder)
    (folder / "tvm-00000000000000000000.so").write_bytes(b"old")
    manifest = _manifest(folder)
    manifest["libraries"]["tvm-00000000000000000000.so"] = {"piece": "p", "backend": "tvm", "target": "llvm"}
    manifest["files"]["tvm-00000000000000000000.so"] = hashlib.sha256(b"old").hexdigest()
    _write_manifest(folder, manifest, rehashed=False)  # its content hash no longer holds
    compiled.save(folder)
    assert (folder / "tvm-00000000000000000000.so").read_bytes() == b"old"


def test_save_writes_through_no_link(compiled, tmp_path):
    folder, victim = tmp_path / "a", tmp_path / "victim.txt"
    compiled.save(folder)
    victim.write_text("outside the artifact")
    (folder / "graph.onnx").unlink()
    (folder / "graph.onnx").symlink_to(victim)
    compiled.save(folder)  # the link is replaced by the file, its target left alone
    assert victim.read_text() == "outside the artifact" and not (folder / "graph.onnx").is_symlink()
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").symlink_to(victim)
    with pytest.raises(ArtifactError, match="is not a leangraph artifact"):
        compiled.save(folder)
    assert victim.read_text() == "outside the artifact"


def test_a_damaged_artifact_folder_is_saved_over(compiled, tmp_path):
    # A cache entry whose manifest was truncated holds only a save's file names: rebuilt in place.
    folder = tmp_path / "a"
    compiled.save(folder)
    (folder / "manifest.json").write_text("{trunc")
    compiled.save(folder)
    np.testing.assert_array_equal(leangraph.load(folder)(X), [[0.0, 0.0, 4.0]])


def test_weights_of_every_dtype_round_trip(tmp_path):
    import ml_dtypes
    from onnx import helper

    from leangraph.runtime.artifact import read_artifact
    from tests.helpers import make_model, tensor

    arrays = {
        "f16": np.arange(6, dtype=np.float16).reshape(2, 3), "i8": np.array([-128, 0, 127], np.int8),
        "bf16": np.array([1.5, -2.25], ml_dtypes.bfloat16), "flag": np.array([True, False, True]),
        "i64": np.array(7, np.int64), "empty": np.zeros((0, 4), np.float32), "f64": np.array([np.pi]),
        "u16": np.array([1, 65535], np.uint16), "f32": np.array([1.0, 2.0, 3.0], np.float32),
    }
    initializers = [onnx.numpy_helper.from_array(a, n) if n != "bf16" else
                    helper.make_tensor(n, onnx.TensorProto.BFLOAT16, a.shape, a.view(np.uint16).tobytes(), raw=True)
                    for n, a in arrays.items()]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"], name=f"id_{n}") for n in arrays]
    outputs = [helper.make_tensor_value_info(f"{n}_out", init.data_type, a.shape)
               for (n, a), init in zip(arrays.items(), initializers)]
    model = make_model(nodes + [helper.make_node("Relu", ["x"], ["y"], name="relu")], [tensor("x")],
                       outputs + [tensor("y")], initializers)
    leangraph.optimize(model, backend="reference", passes="none").save(tmp_path / "a")
    loaded, _ = read_artifact(tmp_path / "a")
    for name, array in arrays.items():
        got = loaded.graph.initializers[name].const_value.numpy()
        assert got.dtype == array.dtype and got.shape == array.shape, name
        assert got.tobytes() == array.tobytes(), name
