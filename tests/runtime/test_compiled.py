"""CompiledModel: input checks at call time, torch/numpy round trip, output structure, to_onnx."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import leangraph
from leangraph.errors import InputMismatchError
from tests.helpers import add_relu_model


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x, ids):
        return {"hidden": self.proj(x), "stats": (x.sum(-1), ids * 2)}


@pytest.fixture(scope="module")
def compiled():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    x, ids = torch.randn(2, 3, 4), torch.arange(6).reshape(2, 3)
    dyn = {"x": {0: "batch", 1: "seq"}, "ids": {0: "batch", 1: "seq"}}
    return model, leangraph.optimize(model, (x, ids), dynamic_shapes=dyn, backend="reference", passes="none")


def test_torch_in_torch_out_in_module_structure(compiled):
    model, cm = compiled
    x, ids = torch.randn(3, 5, 4), torch.arange(15).reshape(3, 5)
    out = cm(x, ids)
    expected = model(x, ids)
    assert set(out) == {"hidden", "stats"} and isinstance(out["stats"], tuple)
    torch.testing.assert_close(out["hidden"], expected["hidden"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["stats"][1], expected["stats"][1])


def test_numpy_in_numpy_out(compiled):
    _, cm = compiled
    out = cm(np.ones((1, 2, 4), np.float32), np.zeros((1, 2), np.int64))
    assert isinstance(out["hidden"], np.ndarray)


def test_wrong_number_of_inputs(compiled):
    _, cm = compiled
    with pytest.raises(InputMismatchError, match=r"takes 2 inputs \(x: float32\[batch, seq, 4\], ids: int64\[batch, seq\]\); got 1"):
        cm(torch.randn(2, 3, 4))


def test_wrong_dtype(compiled):
    _, cm = compiled
    with pytest.raises(InputMismatchError, match=r"input 'ids' of model 'TwoInputs' must be int64; got int32"):
        cm(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.int32))


def test_wrong_rank(compiled):
    _, cm = compiled
    with pytest.raises(InputMismatchError, match=r"input 'x' .* must have rank 3 .*got shape \[2, 4\]"):
        cm(torch.randn(2, 4), torch.zeros(2, 3, dtype=torch.int64))


def test_wrong_static_dim(compiled):
    _, cm = compiled
    with pytest.raises(InputMismatchError, match=r"input 'x' .* must have size 4 on axis 2"):
        cm(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.int64))


def test_symbolic_dims_must_agree(compiled):
    _, cm = compiled
    with pytest.raises(InputMismatchError, match=r"dim 'seq' of model 'TwoInputs' is 3 in input 'x' axis 1 but 7"):
        cm(torch.randn(2, 3, 4), torch.zeros(2, 7, dtype=torch.int64))


def test_onnx_model_single_output_and_to_onnx(tmp_path):
    cm = leangraph.optimize(add_relu_model(), backend="onnxruntime", passes="none")
    x = np.array([[-2.0, 0.0, 3.0], [1.0, 1.0, 1.0]], np.float32)
    y = cm(x)
    assert isinstance(y, np.ndarray)
    np.testing.assert_allclose(y, np.maximum(x + [-1, 0, 1], 0))
    cm.to_onnx(tmp_path / "out.onnx")
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"))


# Misuse at call time: each is a leangraph error naming the input and saying what to do, not a
# numpy or torch traceback.


def test_keyword_inputs_are_placed_by_the_graph_input_names(compiled):
    _, cm = compiled
    x, ids = torch.randn(2, 3, 4), torch.arange(6).reshape(2, 3)
    expected = cm(x, ids)
    for out in (cm(x=x, ids=ids), cm(ids=ids, x=x), cm(x, ids=ids)):
        torch.testing.assert_close(out["hidden"], expected["hidden"], rtol=0, atol=0)


@pytest.mark.parametrize(("call", "message"), [
    (lambda cm, x, ids: cm(input_ids=ids), r"model 'TwoInputs' has no input named 'input_ids'; its inputs are x: "),
    (lambda cm, x, ids: cm(x, x=x), r"input 'x' of model 'TwoInputs' was given both positionally and by name"),
    (lambda cm, x, ids: cm(x=x), r"model 'TwoInputs' takes 2 inputs .*'ids' not given"),
])
def test_wrong_keyword_inputs(compiled, call, message):
    _, cm = compiled
    with pytest.raises(InputMismatchError, match=message) as info:
        call(cm, torch.randn(2, 3, 4), torch.arange(6).reshape(2, 3))
    assert info.value.hint


@pytest.mark.parametrize(("x", "message"), [
    (torch.ones(2, 3, 4, device="meta"), r"input 'x' of model 'TwoInputs' is a tensor on torch's meta device"),
    (torch.ones(2, 3, 4, dtype=torch.bfloat16), r"input 'x' of model 'TwoInputs' must be float32; got bfloat16"),
    (torch.ones(2, 3, 4, dtype=torch.float8_e4m3fn), r"input 'x' .* must be float32; got float8_e4m3fn"),
    (torch.ones(2, 3, 4, dtype=torch.complex32), r"input 'x' of model 'TwoInputs' is a torch tensor .*complex32"),
    (torch.ones(2, 3, 4).to_sparse(), r"input 'x' of model 'TwoInputs' is a torch.sparse_coo tensor"),
    ("hello", r"input 'x' of model 'TwoInputs' must be an array .*; got str 'hello'"),
    (None, r"input 'x' of model 'TwoInputs' must be an array .*; got NoneType"),
    ([[1.0, 2.0], [3.0]], r"input 'x' of model 'TwoInputs' cannot be read as an array \(list\)"),
    ([object()], r"input 'x' of model 'TwoInputs' is not numeric"),
    (np.array(["a", "b"]), r"input 'x' of model 'TwoInputs' is not numeric"),
])
def test_inputs_that_are_not_arrays_of_the_right_kind(compiled, x, message):
    _, cm = compiled
    with pytest.raises(InputMismatchError, match=message) as info:
        cm(x, torch.zeros(2, 3, dtype=torch.int64))
    assert info.value.hint
    with pytest.raises(InputMismatchError, match=message):
        cm.run_flat([x, np.zeros((2, 3), np.int64)])


def test_bfloat16_tensors_reach_a_bfloat16_input(tmp_path):
    # numpy has no bfloat16: such tensors are read as ml_dtypes' bfloat16, which the graph's input is.
    import ml_dtypes
    from onnx import TensorProto, helper

    from tests.helpers import make_model, tensor

    model = make_model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT, name="cast")],
                       [tensor("x", TensorProto.BFLOAT16, ("batch", 3))], [tensor("y", shape=("batch", 3))])
    cm = leangraph.optimize(model, backend="reference", passes="none")
    x = torch.tensor([[1.5, -2.0, 3.25]], dtype=torch.bfloat16)
    torch.testing.assert_close(cm(x), x.float())
    np.testing.assert_array_equal(cm.run_flat([x.float().numpy().astype(ml_dtypes.bfloat16)])[0], x.float().numpy())


@pytest.fixture
def relu_model():
    return leangraph.optimize(add_relu_model(), backend="onnxruntime", passes="none")


def test_to_onnx_onto_a_folder_or_an_unwritable_path(relu_model, tmp_path):
    from leangraph.errors import OptionError

    with pytest.raises(OptionError, match=rf"cannot write the ONNX file of model 'add_relu' to '{tmp_path}': it is a folder"):
        relu_model.to_onnx(tmp_path)
    (tmp_path / "a_file").write_text("keep")
    with pytest.raises(OptionError, match=r"cannot write the ONNX file of model 'add_relu' to '.*a_file/m.onnx'"):
        relu_model.to_onnx(tmp_path / "a_file" / "m.onnx")
    with pytest.raises(OptionError, match=r"cannot write the ONNX file .*'/proc/leangraph-test/m.onnx'"):
        relu_model.to_onnx("/proc/leangraph-test/m.onnx")
    with pytest.raises(OptionError, match=r"must be a str or os.PathLike, got int"):
        relu_model.to_onnx(5)
    assert (tmp_path / "a_file").read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_to_onnx_replaces_a_file_whole(relu_model, tmp_path):
    target = tmp_path / "m.onnx"
    target.write_text("an older file")
    relu_model.to_onnx(target)
    onnx.checker.check_model(onnx.load(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no staging file left behind


def test_save_onto_a_file_under_a_file_or_an_unwritable_place(relu_model, tmp_path):
    from leangraph.errors import ArtifactError, OptionError

    (tmp_path / "a_file").write_text("keep")
    with pytest.raises(ArtifactError, match=r"cannot save the artifact of model 'add_relu' to '.*a_file': it is a file"):
        relu_model.save(tmp_path / "a_file")
    with pytest.raises(ArtifactError, match=r"cannot create the folder '.*a_file/sub' for the artifact of model 'add_relu'"):
        relu_model.save(tmp_path / "a_file" / "sub")
    with pytest.raises(ArtifactError, match=r"cannot create the folder '/proc/leangraph-test'"):
        relu_model.save("/proc/leangraph-test")
    with pytest.raises(OptionError, match=r"must be a str or os.PathLike, got NoneType"):
        relu_model.save(None)
    assert (tmp_path / "a_file").read_text() == "keep"


def test_load_of_a_file_or_a_non_path(relu_model, tmp_path):
    from leangraph.errors import ArtifactError, OptionError

    relu_model.to_onnx(tmp_path / "m.onnx")
    with pytest.raises(ArtifactError, match=r"'.*m.onnx' is a file, not an artifact directory") as info:
        leangraph.load(tmp_path / "m.onnx")
    assert "leangraph.optimize(path)" in info.value.hint
    with pytest.raises(OptionError, match=r"load\(\) takes the path of an artifact folder, got int"):
        leangraph.load(5)


@pytest.mark.parametrize("name", ["bert", "roberta", "gpt2"])
def test_inputs_past_the_position_table_name_the_limit(name, tmp_path):
    # Before: "invalid expand shape" (BERT) or an out-of-bounds Gather from inside ONNX Runtime.
    from tests.zoo import ZOO

    entry = ZOO[name]
    model = entry.build()
    cm = leangraph.optimize(model, tuple(entry.inputs(*entry.shapes[0])), dynamic_shapes=entry.dynamic_shapes,
                            backend="onnxruntime")
    table = next(m for n, m in model.named_modules() if n.endswith(("position_embeddings", "wpe")))
    longest = table.num_embeddings - (table.padding_idx + 1 if table.padding_idx is not None else 0)
    cm(*entry.inputs(1, longest))  # the limit itself runs
    cm.save(tmp_path / "artifact")
    for compiled in (cm, leangraph.load(tmp_path / "artifact")):
        with pytest.raises(InputMismatchError, match=rf"has {longest + 1} on axis 1 .* at most {longest}: the "
                                                     "position table"):
            compiled(*entry.inputs(1, longest + 1))


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path):
    # ONNX's Gather wraps a negative id (a silent wrong result; eager torch raised IndexError) and
    # fails inside the backend on one past the table.
    from tests.zoo import ZOO

    entry = ZOO["bert"]
    model = entry.build()
    cm = leangraph.optimize(model, tuple(entry.inputs(*entry.shapes[0])), dynamic_shapes=entry.dynamic_shapes,
                            backend="onnxruntime")
    ids, mask = entry.inputs(1, 5)
    vocabulary = model.get_input_embeddings().num_embeddings
    ids[0, 0] = vocabulary - 1
    cm(ids, mask)  # the last id is fine
    cm.save(tmp_path / "artifact")
    for compiled in (cm, leangraph.load(tmp_path / "artifact")):
        for bad in (-5, vocabulary):
            wrong = ids.clone()
            wrong[0, 1] = bad
            with pytest.raises(InputMismatchError, match=rf"it takes 0..{vocabulary - 1}: the token embedding table"):
                compiled(wrong, mask)


def test_none_among_the_outputs_keeps_the_structure(tmp_path):
    # The output structure counts a returned None as a leaf, the ONNX graph has no output for it: the
    # structure was lost (a bare tensor came back, with a warning blaming the metadata).
    import warnings

    class WithNone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.linear(x), None, {"a": x + 1, "b": None}

    model = WithNone().eval()
    x = torch.randn(2, 3)
    cm = leangraph.optimize(model, (x,), backend="onnxruntime")
    cm.save(tmp_path / "artifact")
    with torch.no_grad():
        expected = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for compiled in (cm, leangraph.load(tmp_path / "artifact")):
            got = compiled(x)
            assert got[1] is None and got[2]["b"] is None
            torch.testing.assert_close(got[0], expected[0])
            torch.testing.assert_close(got[2]["a"], expected[2]["a"])
