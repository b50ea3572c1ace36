"""ONNX files into the IR: good files import at the target opset with shapes; bad ones get clear errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from leangraph.backends.reference import run_reference
from leangraph.errors import InvalidGraphError, LeanGraphError, ModelLoadError, UnsupportedOpError
from leangraph.frontend import capture, load_onnx
from leangraph.ir import TARGET_OPSET
from tests.helpers import add_relu_model, make_model, tensor


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "add_relu.onnx"
    onnx.save(add_relu_model(), path)
    return path


def test_file_imports_with_symbolic_dims_and_shapes(model_file):
    model = load_onnx(model_file)
    assert model.opset_imports[""] == TARGET_OPSET
    assert [str(d) for d in model.graph.inputs[0].shape] == ["batch", "3"]
    relu_input = next(n for n in model.graph if n.op_type == "Relu").inputs[0]
    assert relu_input.shape is not None and relu_input.dtype is not None
    x = np.array([[-1.0, 0.5, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(run_reference(model, [x])[0], np.maximum(x + [-1, 0, 1], 0))


def test_old_opset_is_converted(tmp_path):
    proto = add_relu_model(opset=11)
    model = load_onnx(proto)
    assert model.opset_imports[""] == TARGET_OPSET


def test_capture_accepts_path_and_proto(model_file):
    assert capture(str(model_file)).graph.name == "add_relu"
    assert capture(onnx.load(model_file)).graph.name == "add_relu"


def test_nodes_out_of_order_are_sorted():
    proto = make_model(
        [helper.make_node("Relu", ["a"], ["y"], name="second"), helper.make_node("Neg", ["x"], ["a"], name="first")],
        [tensor("x")], [tensor("y")],
    )
    model = load_onnx(proto)
    assert [n.name for n in model.graph] == ["first", "second"]


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model file '.*nothing.onnx' does not exist"):
        load_onnx(tmp_path / "nothing.onnx")


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a file"):
        load_onnx(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is empty"):
        load_onnx(path)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelLoadError, match=r"garbage.onnx' (is not a readable ONNX model|holds no ONNX graph)"):
        load_onnx(path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n" * 20)
    with pytest.raises(ModelLoadError, match="notes.onnx"):
        load_onnx(path)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_file(tmp_path, keep):
    data = add_relu_model().SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(LeanGraphError, match="truncated"):
        load_onnx(path)


def test_cycle_in_file(tmp_path):
    proto = make_model(
        [helper.make_node("Add", ["x", "b"], ["a"], name="add"), helper.make_node("Relu", ["a"], ["b"], name="relu"),
         helper.make_node("Relu", ["b"], ["y"], name="out")],
        [tensor("x")], [tensor("y")], name="loopy",
    )
    with pytest.raises(InvalidGraphError, match="has a cycle"):
        load_onnx(proto)


def test_missing_initializer_in_file():
    proto = make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add_w")], [tensor("x")], [tensor("y")])
    with pytest.raises(InvalidGraphError, match="reads 'w'"):
        load_onnx(proto)


def test_unknown_op_in_file():
    proto = make_model([helper.make_node("Frobnicate", ["x"], ["y"], name="fro")], [tensor("x")], [tensor("y")])
    with pytest.raises(UnsupportedOpError, match=r"node 'fro' \(ai.onnx::Frobnicate\)"):
        load_onnx(proto)


def test_training_op_is_refused_with_its_domain():
    proto = make_model(
        [helper.make_node("Gradient", ["x"], ["y"], name="grad", domain="ai.onnx.preview.training", xs=["x"], y="x")],
        [tensor("x")], [tensor("y")], domains=["ai.onnx.preview.training"],
    )
    with pytest.raises(UnsupportedOpError, match="domain 'ai.onnx.preview.training' is unknown"):
        load_onnx(proto)


def test_shape_mismatch_inside_model():
    proto = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [tensor("x", shape=(2, 3))], [tensor("y", shape=(2, 4))],
        [onnx.numpy_helper.from_array(np.ones((5, 4), np.float32), "w")],
    )
    with pytest.raises(InvalidGraphError, match="inconsistent shapes"):
        load_onnx(proto)


def test_output_nobody_produces():
    proto = make_model([helper.make_node("Relu", ["x"], ["r"], name="relu")], [tensor("x")], [tensor("y")])
    with pytest.raises(InvalidGraphError, match="output 'y' .* is produced by no node"):
        load_onnx(proto)


def test_capture_rejects_other_objects():
    from leangraph.errors import CaptureError

    with pytest.raises(CaptureError, match="cannot capture an object of type builtins.dict"):
        capture({"not": "a model"})


def test_bytes_and_protos_with_external_data_are_refused(tmp_path, monkeypatch):
    # Without a folder, external data was read relative to the working directory: any file there
    # became weights (and its bytes leaked through the outputs).
    import numpy as np
    from onnx import TensorProto

    from tests.helpers import add_relu_model

    model = add_relu_model()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="weights.bin")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.bin").write_bytes(np.array([100, 200, 300], np.float32).tobytes())
    for source in (model, model.SerializeToString()):
        with pytest.raises(ModelLoadError, match="keeps tensor 'w' in external data, but was given as bytes or a"):
            load_onnx(source)
