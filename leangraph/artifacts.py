"""leangraph.load(): a compiled model back from its artifact directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

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
    chain = chain_for(chosen)
    libraries, notes = _usable_libraries(Path(directory), manifest, chain)
    # The backend and its fallback, each node where a measurement (backend="auto") put it.
    executable = compile_partitioned(model, chain, libraries)[0]
    nodes = node_count(model)
    report = Report(model_name=manifest.get("name", model.graph.name), nodes_before=nodes, nodes_after=nodes,
                    backend=chosen, compile_seconds=time.perf_counter() - start)
    report.notes.append(f"loaded from artifact {os.fspath(directory)} (content hash {manifest['content_hash'][:16]}...)")
    report.notes.extend(notes)
    quantization = manifest.get("quantization", [])  # the per-layer precision rows of a lossy compile
    if isinstance(quantization, list):
        report.quantization = [line for line in quantization if isinstance(line, str)]
    return CompiledModel(model, executable, backend=chosen, report=report)


def _usable_libraries(directory: Path, manifest: dict, chain) -> tuple[dict[str, Path], list[str]]:
    """The artifact's compiled libraries this machine can load (piece key -> file), and notes on the rest."""
    by_name = {backend.name: backend for backend in chain}
    usable, notes = {}, []
    for file, info in sorted(manifest.get("libraries", {}).items()):
        backend = by_name.get(info.get("backend"))
        if backend is None or not hasattr(backend, "load_library"):
            continue  # loaded on another backend: the piece is compiled for that one
        if backend.library_target() != info.get("target"):
            notes.append(f"library {file} was built for {info.get('target')}, not this machine "
                         f"({backend.library_target()}): compiled again")
            continue
        usable[info.get("piece")] = directory / file
    if usable:
        notes.append(f"{len(usable)} compiled {'library' if len(usable) == 1 else 'libraries'} loaded, not rebuilt")
    return usable, notes
