"""ONNX's backend model suites shipped in the onnx wheel: light, pytorch-converted,
pytorch-operator, simple. Every model is imported through our frontend, round-tripped IR -> ONNX,
run on the reference interpreter and on ONNX Runtime, and compared with its stored outputs.

Exclusions live in ``exclusions.toml`` beside this file, each with its reason; an excluded case
that starts passing fails the run so that the list stays true.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnx.backend.test
import onnx.numpy_helper
import onnx_ir as ir
import pytest

from leangraph.backends.onnxruntime import OrtExecutable
from leangraph.backends.reference import ReferenceExecutable
from leangraph.frontend import load_onnx

DATA = Path(onnx.backend.test.__file__).parent / "data"
SUITES = ("light", "pytorch-converted", "pytorch-operator", "simple")
EXCLUSIONS = tomllib.loads((Path(__file__).parent / "exclusions.toml").read_text())


def _read_tensor(path: Path):
    """Stored inputs/outputs are TensorProtos, or SequenceProtos for sequence-typed values."""
    data = path.read_bytes()
    tensor = onnx.TensorProto()
    tensor.ParseFromString(data)
    if tensor.data_type or tensor.dims:
        return onnx.numpy_helper.to_array(tensor)
    sequence = onnx.SequenceProto()
    sequence.ParseFromString(data)
    return onnx.numpy_helper.to_list(sequence)


def _light_inputs(model: onnx.ModelProto, name: str) -> list[np.ndarray]:
    """The inputs ONNX's own runner feeds the light models (they ship outputs only)."""
    from onnx.backend.test.runner import Runner

    initializers = {init.name for init in model.graph.initializer}
    return [
        Runner.generate_dummy_data(x, seed=0, name=name, random=False)
        for x in model.graph.input
        if x.name not in initializers
    ]


def _cases():
    for suite in SUITES:
        root = DATA / suite
        if suite == "light":
            for path in sorted(root.glob("*.onnx")):
                yield pytest.param(suite, path, id=f"{suite}/{path.stem}")
        else:
            for case in sorted(p for p in root.iterdir() if (p / "model.onnx").exists()):
                yield pytest.param(suite, case, id=f"{suite}/{case.name}")


def _datasets(suite: str, path: Path, model: onnx.ModelProto):
    if suite == "light":
        expected = [_read_tensor(p) for p in sorted(path.parent.glob(f"{path.stem}_output_*.pb"))]
        yield _light_inputs(model, path.stem), expected, 1e-3, 1e-7
        return
    for dataset in sorted(path.glob("test_data_set_*")):
        inputs = [_read_tensor(p) for p in sorted(dataset.glob("input_*.pb"), key=_index)]
        outputs = [_read_tensor(p) for p in sorted(dataset.glob("output_*.pb"), key=_index)]
        yield inputs, outputs, 1e-3, 1e-7


def _index(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


def _assert_close(got, expected, rtol, atol, message):
    got = np.asarray(got)
    if expected.dtype.kind in "OSU":
        np.testing.assert_array_equal(got.astype(str), expected.astype(str), err_msg=message)
    else:
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=message)


def _compare(name, got, expected, rtol, atol):
    assert len(got) == len(expected), f"{name}: {len(got)} outputs, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        if isinstance(e, list):
            assert len(g) == len(e)
            for gi, ei in zip(g, e):
                _assert_close(gi, ei, rtol, atol, f"{name} output {i}")
        else:
            _assert_close(g, e, rtol, atol, f"{name} output {i}")


def run_case(suite: str, path: Path, backends=("reference", "onnxruntime")) -> None:
    model_file = path if suite == "light" else path / "model.onnx"
    original = onnx.load(model_file)
    model = load_onnx(model_file)
    roundtrip = ir.from_proto(onnx.ModelProto.FromString(ir.to_proto(model).SerializeToString()))
    onnx.checker.check_model(ir.to_proto(roundtrip))
    executables = {
        name: {"reference": ReferenceExecutable, "onnxruntime": OrtExecutable}[name](roundtrip)
        for name in backends
    }
    for inputs, expected, rtol, atol in _datasets(suite, path, original):
        for name, run in executables.items():
            _compare(name, run(inputs), expected, rtol, atol)


@pytest.mark.parametrize(("suite", "path"), list(_cases()))
def test_model(suite: str, path: Path) -> None:
    case_id = f"{suite}/{path.stem if suite == 'light' else path.name}"
    exclusion = EXCLUSIONS.get(case_id)
    if exclusion is None:
        run_case(suite, path)
        return
    excluded = tuple(exclusion["backends"])
    kept = tuple(b for b in ("reference", "onnxruntime") if b not in excluded)
    if kept and "import" not in excluded:
        run_case(suite, path, kept)
    try:
        run_case(suite, path, excluded if "import" not in excluded else ())
    except Exception:
        pytest.xfail(f"excluded on {', '.join(excluded)}: {exclusion['reason']}")
    pytest.fail(f"{case_id} is excluded ({exclusion['reason']}) but passes now: update exclusions.toml")
