"""The measurement store: every timing leangraph takes, in one sqlite database per user.

Rows are keyed by the machine fingerprint (cost_model.machine: CPU model and features, threads,
library versions), a kind (``kernel``: the linear-kernel table; ``piece``: a backend's time on one
piece of the auto partition; ``knob``: a lossy setting's saving on the whole model), and a key that
identifies what was timed by its structure and shapes, not its weights' values (timings do not
depend on them). A measurement found for this machine is reused instead of taken again, so the
second ``optimize()`` of a similar model measures less; the rows are also what the learned cost
model trains on (``features`` holds what it reads).

The database lives in ``$LEANGRAPH_CACHE`` (default ``$XDG_CACHE_HOME/leangraph``, else
``~/.cache/leangraph``) as ``measurements.sqlite``. sqlite's own locking makes it safe for
several processes (parallel tests, Ray workers on one node). Where the folder cannot be written,
the store says so once (a warning) and keeps its rows in memory for the process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from leangraph.cost_model.machine import machine_fingerprint
from leangraph.errors import OptionError

FILE_NAME = "measurements.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    machine TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    features TEXT,
    recorded REAL NOT NULL,
    PRIMARY KEY (machine, kind, key)
);
CREATE TABLE IF NOT EXISTS machines (
    machine TEXT PRIMARY KEY,
    description TEXT NOT NULL
);
"""


def cache_folder() -> Path:
    """``$LEANGRAPH_CACHE``, else ``$XDG_CACHE_HOME/leangraph``, else ``~/.cache/leangraph``."""
    configured = os.environ.get("LEANGRAPH_CACHE", "").strip()
    if configured:
        return Path(os.path.expandvars(os.path.expanduser(configured)))
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "leangraph"


def machine_key(fingerprint: dict | None = None) -> str:
    """A short stable digest of the machine fingerprint."""
    fingerprint = fingerprint if fingerprint is not None else machine_fingerprint()
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def structure_key(model: ir.Model, input_shapes: Any = ()) -> str:
    """Digest of what a model's timing depends on: every node's op, attributes and value types and
    shapes, and the shapes it is called with; not its weights' values."""
    digest = hashlib.sha256(repr(input_shapes).encode())

    def describe(value: ir.Value | None) -> str:
        if value is None:
            return "-"
        return f"{value.dtype}{list(value.shape) if value.shape is not None else '?'}"

    for node in model.graph:
        attributes = sorted((name, repr(attr.value) if not isinstance(attr.value, (ir.Graph, ir.TensorProtocol))
                             else type(attr.value).__name__) for name, attr in node.attributes.items())
        digest.update(repr((node.domain, node.op_type, attributes, [describe(v) for v in node.inputs],
                            [describe(v) for v in node.outputs])).encode())
    return digest.hexdigest()[:32]


def inputs_key(input_sets) -> str:
    """Digest of the arrays a timing ran on (values too: a padding mask decides what packed graphs do)."""
    digest = hashlib.sha256()
    for arrays in input_sets:
        for array in arrays:
            digest.update(repr((array.dtype.str, array.shape)).encode() + np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


class MeasurementStore:
    """Measurements of this machine: ``get(kind, key)`` or None, ``put(kind, key, value, features)``,
    ``rows(kind)`` for training. Values and features are JSON (numbers, lists, dicts)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.machine = machine_key()
        self._lock = threading.Lock()
        self.path = Path(path) if path is not None else cache_folder() / FILE_NAME
        self.hits = self.misses = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = self._open(str(self.path))
        except (OSError, sqlite3.Error) as exc:
            warnings.warn(f"leangraph: the measurement store {self.path} cannot be opened ({exc}); measurements are "
                          "kept in memory for this process only. Set LEANGRAPH_CACHE to a folder you can write to",
                          stacklevel=2)
            self.path = None
            self._connection = self._open(":memory:")
        self._connection.execute("INSERT OR REPLACE INTO machines VALUES (?, ?)",
                                 (self.machine, json.dumps(machine_fingerprint(), sort_keys=True)))
        self._connection.commit()

    @staticmethod
    def _open(where: str) -> sqlite3.Connection:
        connection = sqlite3.connect(where, timeout=30.0, check_same_thread=False)
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            tables = connection.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        except sqlite3.DatabaseError as exc:
            connection.close()
            raise sqlite3.DatabaseError(f"not a leangraph measurement store: {exc}") from None
        if tables and version != SCHEMA_VERSION:
            connection.close()
            raise sqlite3.DatabaseError(f"store format {version}, this leangraph reads {SCHEMA_VERSION}")
        connection.executescript(_SCHEMA)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return connection

    def get(self, kind: str, key: str) -> Any:
        with self._lock:
            row = self._connection.execute("SELECT value FROM measurements WHERE machine=? AND kind=? AND key=?",
                                           (self.machine, kind, key)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def put(self, kind: str, key: str, value: Any, features: Any = None) -> None:
        record = (self.machine, kind, key, json.dumps(value, allow_nan=True),
                  json.dumps(features) if features is not None else None, time.time())
        with self._lock, contextlib.suppress(sqlite3.OperationalError):  # a locked database loses one row, no run
            self._connection.execute("INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?, ?)", record)
            self._connection.commit()

    def rows(self, kind: str | None = None, *, all_machines: bool = False) -> Iterator[dict]:
        """Every row (of this machine unless ``all_machines``) as a dict with decoded value and features."""
        query = "SELECT machine, kind, key, value, features, recorded FROM measurements WHERE 1=1"
        parameters: list[str] = []
        if not all_machines:
            query, parameters = query + " AND machine=?", [self.machine]
        if kind is not None:
            query, parameters = query + " AND kind=?", [*parameters, kind]
        with self._lock:
            fetched = self._connection.execute(query + " ORDER BY recorded", parameters).fetchall()
        for machine, kind_, key, value, features, recorded in fetched:
            yield {"machine": machine, "kind": kind_, "key": key, "value": json.loads(value),
                   "features": json.loads(features) if features else None, "recorded": recorded}

    def merge(self, rows) -> int:
        """Rows measured elsewhere (another process, a Ray node with its own machine key) into this
        store; returns how many."""
        count = 0
        with self._lock:
            for row in rows:
                self._connection.execute(
                    "INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?, ?)",
                    (row["machine"], row["kind"], row["key"], json.dumps(row["value"], allow_nan=True),
                     json.dumps(row["features"]) if row.get("features") is not None else None, row["recorded"]))
                count += 1
            self._connection.commit()
        return count

    def close(self) -> None:
        with self._lock:
            self._connection.close()


_default: MeasurementStore | None = None
_default_path: Path | None = None


def default_store() -> MeasurementStore:
    """The store at ``cache_folder()``, opened once per process (again if LEANGRAPH_CACHE changed)."""
    global _default, _default_path
    path = cache_folder() / FILE_NAME
    if _default is None or _default_path != path:
        if path.parent.exists() and not path.parent.is_dir():
            raise OptionError(f"LEANGRAPH_CACHE '{path.parent}' is a file, not a folder",
                              hint="point LEANGRAPH_CACHE at a folder for the measurement store")
        _default, _default_path = MeasurementStore(path), path
    return _default
