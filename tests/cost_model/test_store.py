"""The measurement store: rows per machine, reuse across processes, bad files, what optimize() reuses."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys

import numpy as np
import onnx_ir as ir
import pytest

from leangraph.cost_model import store as store_module
from leangraph.cost_model.store import MeasurementStore, cache_folder, default_store, machine_key, structure_key
from leangraph.errors import OptionError


def _linear_model(k: int, n: int, weight_seed: int = 0) -> ir.Model:
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["b", k]))
    weight = ir.Value(name="w", const_value=ir.tensor(np.random.default_rng(weight_seed).standard_normal(
        (k, n)).astype(np.float32)))
    node = ir.node("MatMul", [x, weight], name="mm")
    node.outputs[0].name, node.outputs[0].dtype, node.outputs[0].shape = "y", ir.DataType.FLOAT, ir.Shape(["b", n])
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=[weight], opset_imports={"": 18}, name="linear")
    return ir.Model(graph, ir_version=10)


def test_rows_round_trip_and_survive_reopening(tmp_path):
    path = tmp_path / "m.sqlite"
    store = MeasurementStore(path)
    store.put("kernel", "384x384@512", {"a": 1e-4, "b": math.inf}, {"k": 384})
    assert store.get("kernel", "384x384@512") == {"a": 1e-4, "b": math.inf}
    assert store.get("kernel", "other") is None
    assert (store.hits, store.misses) == (1, 1)
    store.close()
    reopened = MeasurementStore(path)
    rows = list(reopened.rows("kernel"))
    assert [(r["key"], r["features"]) for r in rows] == [("384x384@512", {"k": 384})]
    assert rows[0]["machine"] == machine_key()


def test_another_machine_does_not_see_this_machines_rows(tmp_path):
    store = MeasurementStore(tmp_path / "m.sqlite")
    store.put("piece", "p", [1.0, 2.0])
    other = dict(store_module.machine_fingerprint(), cpu="some other CPU")
    assert machine_key(other) != store.machine
    store.machine = machine_key(other)
    assert store.get("piece", "p") is None
    assert len(list(store.rows(all_machines=True))) == 1


def test_merge_keeps_the_machine_of_each_row(tmp_path):
    source, target = MeasurementStore(tmp_path / "a.sqlite"), MeasurementStore(tmp_path / "b.sqlite")
    source.machine = "remote-node"
    source.put("kernel", "k", {"x": 1.0})
    assert target.merge(source.rows()) == 1
    assert target.get("kernel", "k") is None  # measured on another machine
    assert [r["machine"] for r in target.rows(all_machines=True)] == ["remote-node"]


def test_two_processes_write_one_store(tmp_path):
    path = tmp_path / "m.sqlite"
    script = ("import sys; from leangraph.cost_model.store import MeasurementStore\n"
              "s = MeasurementStore(sys.argv[1])\n"
              "[s.put('kernel', f'{sys.argv[2]}-{i}', i) for i in range(50)]\n")
    processes = [subprocess.Popen([sys.executable, "-c", script, str(path), tag]) for tag in "ab"]
    assert [p.wait(timeout=120) for p in processes] == [0, 0]
    assert len(list(MeasurementStore(path).rows("kernel"))) == 100


def test_a_file_that_is_not_a_store_falls_back_to_memory_with_a_warning(tmp_path):
    bad = tmp_path / "m.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.warns(UserWarning, match="cannot be opened.*LEANGRAPH_CACHE"):
        store = MeasurementStore(bad)
    assert store.path is None
    store.put("kernel", "k", 1.0)
    assert store.get("kernel", "k") == 1.0


def test_a_store_of_another_format_version_is_not_read(tmp_path):
    path = tmp_path / "m.sqlite"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE measurements (x)")
    connection.execute("PRAGMA user_version = 99")
    connection.commit()
    connection.close()
    with pytest.warns(UserWarning, match="store format 99"):
        MeasurementStore(path)


def test_cache_folder_follows_leangraph_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LEANGRAPH_CACHE", str(tmp_path / "here"))
    assert cache_folder() == tmp_path / "here"
    assert default_store().path == tmp_path / "here" / "measurements.sqlite"
    monkeypatch.delenv("LEANGRAPH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder() == tmp_path / "xdg" / "leangraph"


def test_leangraph_cache_naming_a_file_is_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("LEANGRAPH_CACHE", str(tmp_path / "file"))
    with pytest.raises(OptionError, match="is a file, not a folder"):
        default_store()


def test_structure_key_reads_shapes_not_weight_values():
    assert structure_key(_linear_model(8, 4, 0)) == structure_key(_linear_model(8, 4, 1))
    assert structure_key(_linear_model(8, 4)) != structure_key(_linear_model(8, 5))
    assert structure_key(_linear_model(8, 4), [(2, 8)]) != structure_key(_linear_model(8, 4), [(3, 8)])


def test_kernel_table_is_measured_once_per_machine(tmp_path, monkeypatch):
    import importlib

    optimize_module = importlib.import_module("leangraph.optimize")
    from leangraph.cost_model import linear_kernels

    monkeypatch.setenv("LEANGRAPH_CACHE", str(tmp_path))
    calls = []

    def fake_time_kernels(weight):
        calls.append(weight.shape)
        return {name: 1e-4 for name in linear_kernels.kernel_names()}

    monkeypatch.setattr(linear_kernels, "time_kernels", fake_time_kernels)
    weight = np.zeros((16, 8), np.float32)
    assert optimize_module._kernel_timer()(weight) == optimize_module._kernel_timer()(weight)
    assert calls == [(16, 8)]  # the second timer (a later optimize() call) read the store
    row, = default_store().rows("kernel")
    assert row["key"] == "16x8@512" and json.dumps(row["features"]) == '{"k": 16, "n": 8, "rows": 512}'
