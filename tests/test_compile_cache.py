"""The compile cache (leangraph/compile_cache.py): its folder, and a key that holds every budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import leangraph
from leangraph import compile_cache
from leangraph.compile_cache import fingerprint, resolve_cache_dir
from leangraph.errors import OptionError
from tests.helpers import add_relu_model
from tests.passes.test_quantization import INPUTS, MLP, fixed_timings

THRESHOLD = 0.5


def _scale():
    return 2.0


def test_two_lambdas_of_one_name_have_two_fingerprints():
    first, second = (lambda cm: 1.0), (lambda cm: 2.0)
    assert first.__qualname__ == second.__qualname__
    assert fingerprint(first)[0] != fingerprint(second)[0]
    again = lambda cm: 1.0  # noqa: E731 - the same code and data: the same key
    assert fingerprint(first)[0] == fingerprint(again)[0]


def test_closures_defaults_and_globals_enter_the_fingerprint(monkeypatch):
    def make(limit, data):
        return lambda cm: float(limit) + len(data)

    assert fingerprint(make(1, [1, 2]))[0] != fingerprint(make(2, [1, 2]))[0]
    assert fingerprint(make(1, np.zeros(3)))[0] != fingerprint(make(1, np.ones(3)))[0]
    assert fingerprint(make(1, torch.zeros(3)))[0] != fingerprint(make(1, torch.ones(3)))[0]

    def with_default(cm, scale=1.0):
        return scale

    def with_other_default(cm, scale=2.0):
        return scale

    assert fingerprint(with_default)[0] != fingerprint(with_other_default)[0]

    def reads_global(cm):
        return THRESHOLD * _scale()

    before = fingerprint(reads_global)[0]
    monkeypatch.setattr(f"{__name__}.THRESHOLD", 0.7)
    assert fingerprint(reads_global)[0] != before
    monkeypatch.undo()
    assert fingerprint(reads_global)[0] == before
    monkeypatch.setattr(f"{__name__}._scale", lambda: 3.0)  # a function it calls changed
    assert fingerprint(reads_global)[0] != before


def test_callable_objects_partials_and_recursion():
    import functools

    class Metric:
        def __init__(self, limit):
            self.limit = limit

        def __call__(self, cm):
            return self.limit

    assert fingerprint(Metric(1))[0] != fingerprint(Metric(2))[0]

    def score(cm, weight):
        return weight

    assert fingerprint(functools.partial(score, weight=1))[0] != fingerprint(functools.partial(score, weight=2))[0]

    def recursive(n):
        return 0 if n == 0 else recursive(n - 1)

    assert fingerprint(recursive)[0] is not None
    cyclic = []
    cyclic.append(cyclic)
    assert fingerprint(lambda cm: cyclic)[0] is not None


def test_opaque_state_has_no_fingerprint_and_names_it():
    class Tokenizer:
        __slots__ = ("vocab",)

    tokenizer = Tokenizer()
    digest, why = fingerprint(lambda cm: len(str(tokenizer)))
    assert digest is None and "'tokenizer'" in why and "Tokenizer" in why
    with open(__file__) as handle:
        assert fingerprint(lambda cm: handle.read())[0] is None


def test_cache_folder_expands_home_and_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LEANGRAPH_TEST_CACHE", str(tmp_path / "from_env"))
    monkeypatch.chdir(tmp_path)
    assert resolve_cache_dir("~/cache") == tmp_path / "home" / "cache"
    assert (tmp_path / "home" / "cache").is_dir() and not (tmp_path / "~").exists()
    assert resolve_cache_dir("$LEANGRAPH_TEST_CACHE/x") == tmp_path / "from_env" / "x"
    cm = leangraph.optimize(add_relu_model(), (np.ones((2, 3), np.float32),), cache_dir="~/.cache/leangraph")
    assert "cache miss" in str(cm.report) and not (tmp_path / "~").exists()
    assert len(list((tmp_path / "home" / ".cache" / "leangraph").iterdir())) == 1
    (tmp_path / "plain").write_text("x")
    with pytest.raises(OptionError, match="is a file, not a folder"):
        resolve_cache_dir(tmp_path / "plain")


def test_the_machine_is_part_of_the_key(monkeypatch):
    graph = leangraph.capture(add_relu_model())
    here = compile_cache.cache_key(graph, [], "onnxruntime", leangraph.Tolerance(), [])
    other = {**compile_cache.machine_fingerprint(), "features": ["avx2"]}
    monkeypatch.setattr(compile_cache, "machine_fingerprint", lambda: other)
    assert compile_cache.cache_key(graph, [], "onnxruntime", leangraph.Tolerance(), []) != here


@pytest.fixture
def int8_twice_as_fast(monkeypatch):
    from leangraph.cost_model import linear_kernels

    monkeypatch.setattr(linear_kernels, "time_kernels",
                        fixed_timings(2e-3, 1e-3, **{linear_kernels.TORCH_BF16: 4e-3}))


def test_two_budgets_never_share_an_entry(tmp_path, int8_twice_as_fast):
    # The bug: the key held evaluate.__qualname__, so a strict metric got the lenient metric's int8
    # model from the cache. Both metrics here are lambdas of one name.
    model = MLP()
    with torch.no_grad():
        reference = [model(*inputs) for inputs in INPUTS]

    def worst_error(cm):
        return max(float((cm(*inputs) - ref).abs().max()) for inputs, ref in zip(INPUTS, reference))

    metrics = {"lenient": lambda cm: 0.0, "strict": lambda cm: -100 * worst_error(cm)}
    assert metrics["lenient"].__qualname__ == metrics["strict"].__qualname__
    options = dict(backend="onnxruntime", calibration=INPUTS, max_drop=0.5, cache_dir=tmp_path)
    lenient = leangraph.optimize(model, INPUTS[0], evaluate=metrics["lenient"], **options)
    strict = leangraph.optimize(model, INPUTS[0], evaluate=metrics["strict"], **options)
    assert not strict.report.cache_hit and len(list(tmp_path.iterdir())) == 2
    assert sum("int8" in row for row in lenient.report.quantization) == 3
    assert -100 * worst_error(strict) >= -0.5  # the strict budget holds
    again = leangraph.optimize(model, INPUTS[0], evaluate=metrics["strict"], **options)
    assert again.report.cache_hit and again.report.quantization == strict.report.quantization


def test_an_unfingerprintable_evaluate_is_not_cached_and_the_report_says_why(tmp_path, int8_twice_as_fast):
    class Opaque:
        __slots__ = ()

    state = Opaque()
    cm = leangraph.optimize(MLP(), INPUTS[0], backend="onnxruntime", calibration=INPUTS,
                            evaluate=lambda cm: float(state is not None), max_drop=0.5, cache_dir=tmp_path)
    assert "cache not used: evaluate() reads 'state'" in str(cm.report)
    assert list(tmp_path.iterdir()) == []



def test_an_entry_replaced_by_another_model_or_backend_is_rebuilt(tmp_path):
    import shutil

    from tests.helpers import make_model, tensor
    from onnx import helper

    x = np.ones((2, 3), np.float32)
    leangraph.optimize(add_relu_model(), (x,), cache_dir=tmp_path, backend="onnxruntime")
    (entry,) = tmp_path.iterdir()
    other = make_model([helper.make_node("Neg", ["q"], ["z"], name="neg")], [tensor("q", shape=(4,))],
                       [tensor("z", shape=(4,))])
    shutil.rmtree(entry)
    leangraph.optimize(other, (np.ones(4, np.float32),), backend="onnxruntime", passes="none").save(entry)
    with pytest.warns(UserWarning, match="damaged and will be rebuilt: its inputs are not the captured model's"):
        rebuilt = leangraph.optimize(add_relu_model(), (x,), cache_dir=tmp_path, backend="onnxruntime")
    assert not rebuilt.report.cache_hit and rebuilt.name == "add_relu"
    assert leangraph.optimize(add_relu_model(), (x,), cache_dir=tmp_path, backend="onnxruntime").report.cache_hit
    # a link in the cache is not followed: its libraries never load, the link is replaced
    target = tmp_path.parent / "elsewhere"
    shutil.move(entry, target)
    entry.symlink_to(target)
    with pytest.warns(UserWarning, match="it is a link"):
        again = leangraph.optimize(add_relu_model(), (x,), cache_dir=tmp_path, backend="onnxruntime")
    assert not again.report.cache_hit and not entry.is_symlink() and entry.is_dir()


def test_cache_dir_that_is_empty_or_names_an_unset_variable_is_refused(monkeypatch):
    monkeypatch.delenv("LEANGRAPH_SURELY_UNSET", raising=False)
    for bad in ("", "  ", "$LEANGRAPH_SURELY_UNSET/cache", "${LEANGRAPH_SURELY_UNSET}", "a\0b"):
        with pytest.raises(OptionError):
            resolve_cache_dir(bad)
