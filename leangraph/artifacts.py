"""leangraph.load(): a compiled model back from its artifact directory."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from leangraph.backends import chain_for
from leangraph.backends.partition import compile_partitioned
from leangraph.errors import ArtifactError, OptionError
from leangraph.ir import node_count, verify_model
from leangraph.passes import Report
from leangraph.runtime import CompiledModel
from leangraph.runtime.compiled import InputSpec, signature_inputs
from leangraph.runtime.artifact import Artifact, open_artifact


def load(directory: str | os.PathLike, *, backend: str | None = None) -> CompiledModel:
    """Load the artifact that ``cm.save(directory)`` or ``leangraph compile -o directory`` wrote.

    Every file is checked against the manifest's hashes first; ``backend`` overrides the backend
    the artifact was compiled for. What loading an artifact from someone else may do is in
    docs/security.md (a TVM artifact's libraries are native code, run when loaded)."""
    if not isinstance(directory, (str, os.PathLike)) or not str(os.fspath(directory)).strip():
        raise OptionError(f"load() takes the path of an artifact folder, got {type(directory).__name__} {directory!r}",
                          hint="pass the directory written by cm.save() or `leangraph compile -o`")
    if backend is not None and not isinstance(backend, str):
        raise OptionError(f"backend must be a name, got {backend!r}", hint="pass e.g. backend='onnxruntime'")
    start = time.perf_counter()
    artifact = open_artifact(directory)
    model, manifest = artifact.model, artifact.manifest
    verify_model(model)
    _check_signature(directory, model, manifest)
    if backend is not None and not backend.strip():
        raise OptionError("backend='' names no backend", hint="leave backend out to use the artifact's, or name one")
    chosen = backend or manifest["backend"]
    chain = chain_for(chosen)
    # The libraries are loaded from a private copy of the bytes whose hashes were checked, not from
    # the artifact's folder, where a file could be swapped between the check and the load.
    with tempfile.TemporaryDirectory(prefix="leangraph-libraries-", ignore_cleanup_errors=True) as private:
        libraries, notes = _usable_libraries(artifact, Path(private), chain)
        # The backend and its fallback, each node where a measurement (backend="auto") put it.
        executable = compile_partitioned(model, chain, libraries)[0]
    nodes = node_count(model)
    report = Report(model_name=manifest.get("name", model.graph.name), nodes_before=nodes, nodes_after=nodes,
                    backend=chosen, compile_seconds=time.perf_counter() - start)
    report.notes.append(f"loaded from artifact {os.fspath(directory)} (content hash {manifest['content_hash'][:16]}...)")
    report.notes.extend(notes)
    report.quantization = list(manifest.get("quantization", []))  # the per-layer precision rows of a lossy compile
    return CompiledModel(model, executable, backend=chosen, report=report)


def _check_signature(directory, model, manifest: dict) -> None:
    """The manifest's input/output signature is the graph's: a graph swapped in with its hashes
    recomputed would otherwise run under the name and signature the manifest promises."""
    graph_inputs = signature_inputs([InputSpec.of(v) for v in model.graph.inputs])
    listed = manifest.get("inputs", [])
    if isinstance(listed, list):  # an artifact of before: a 0-d input was listed with shape None
        listed = [{**i, "shape": []} if isinstance(i, dict) and i.get("shape") is None and g["shape"] == [] else i
                  for i, g in zip(listed, graph_inputs)] + listed[len(graph_inputs):]
    if listed != graph_inputs or list(manifest.get("outputs", [])) != [v.name for v in model.graph.outputs]:
        raise ArtifactError(f"artifact '{directory}': its graph's inputs or outputs are not those its manifest lists "
                            "(the graph was replaced)", hint="recompile the model; do not edit artifacts by hand")


def _usable_libraries(artifact: Artifact, private: Path, chain) -> tuple[dict[str, Path], list[str]]:
    """The artifact's compiled libraries this machine can load (piece key -> a private copy of the
    file), and notes on the rest."""
    by_name = {backend.name: backend for backend in chain}
    usable, notes = {}, []
    for file, info in sorted(artifact.manifest["libraries"].items()):
        backend = by_name.get(info["backend"])
        if backend is None or not hasattr(backend, "load_library"):
            continue  # loaded on another backend: the piece is compiled for that one
        if backend.library_target() != info["target"]:
            notes.append(f"library {file} was built for {info['target']}, not this machine "
                         f"({backend.library_target()}): compiled again")
            continue
        copy = private / file
        copy.write_bytes(artifact.libraries[file])
        usable[info["piece"]] = copy
    if usable:
        notes.append(f"{len(usable)} compiled {'library' if len(usable) == 1 else 'libraries'} loaded, not rebuilt")
    return usable, notes
