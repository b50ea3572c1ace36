"""leangraph.load(): a compiled model back from its artifact directory."""

from __future__ import annotations

import os
import time

from leangraph.backends import chain_for
from leangraph.backends.partition import compile_partitioned
from leangraph.errors import OptionError
from leangraph.ir import node_count, verify_model
from leangraph.passes import Report
from leangraph.runtime import CompiledModel
from leangraph.runtime.artifact import read_artifact


def load(directory: str | os.PathLike, *, backend: str | None = None) -> CompiledModel:
    """Load the artifact that ``cm.save(directory)`` or ``leangraph compile -o directory`` wrote.

    Every file is checked against the manifest's hashes first; ``backend`` overrides the backend
    the artifact was compiled for."""
    start = time.perf_counter()
    model, manifest = read_artifact(directory)
    verify_model(model)
    chosen = backend or manifest["backend"]
    if not isinstance(chosen, str):
        raise OptionError(f"backend must be a name, got {chosen!r}", hint="pass e.g. backend='onnxruntime'")
    # The backend and its fallback, each node where a measurement (backend="auto") put it.
    executable = compile_partitioned(model, chain_for(chosen))[0]
    nodes = node_count(model)
    report = Report(model_name=manifest.get("name", model.graph.name), nodes_before=nodes, nodes_after=nodes,
                    backend=chosen, compile_seconds=time.perf_counter() - start)
    report.notes.append(f"loaded from artifact {os.fspath(directory)} (content hash {manifest['content_hash'][:16]}...)")
    return CompiledModel(model, executable, backend=chosen, report=report)
