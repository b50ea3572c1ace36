"""Compiled-model artifacts: a directory with a JSON manifest, the graph as ONNX protobuf, and every
weight in one safetensors file. Never pickle.

    OUT_DIR/manifest.json       format, version, model name, backend, input/output signature, output
                                structure, the per-layer precision rows of a lossy compile, sha256 of
                                every file, and a content hash over all of it
    OUT_DIR/graph.onnx          the optimized IR (leangraph ops included), weights external
    OUT_DIR/graph.safetensors   the weights
    OUT_DIR/<piece key>.so      the compiled library of every piece a library backend (TVM) built,
                                with the target it was built for; loading uses it instead of
                                compiling again when this machine is that target

Loading checks every file's hash and the manifest's content hash before parsing anything, so a
tampered, truncated or mixed-up artifact is refused with a clear error. Saving the same model twice
gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from leangraph.errors import ArtifactError
from leangraph.ir import clone_model

FORMAT = "leangraph-artifact"
VERSION = 2
"""Bumped when what an artifact holds changes meaning. 2: the TVM libraries call library kernels that
return their results (version 1's called them with a destination tensor)."""
MANIFEST = "manifest.json"
GRAPH = "graph.onnx"
WEIGHTS = "graph.safetensors"
OUT_SPEC = "leangraph.out_spec"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def content_hash(manifest: dict[str, Any]) -> str:
    """sha256 over the manifest without its own content_hash (it lists every file's sha256)."""
    return hashlib.sha256(_canonical({k: v for k, v in manifest.items() if k != "content_hash"})).hexdigest()


@dataclasses.dataclass(frozen=True)
class Library:
    """A compiled piece to store: its file name, what it is, and how to write it."""

    file: str
    piece: str
    backend: str
    target: str
    write: Callable[[Path], None]


def save_artifact(model: ir.Model, directory: str | os.PathLike, *, backend: str, signature: dict[str, Any],
                  libraries: Sequence[Library] = ()) -> Path:
    """Write ``model`` and its ``libraries`` as an artifact into ``directory`` (created; existing
    artifact files replaced)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clone = clone_model(model)
    for value in clone.graph.initializers.values():
        if value.const_value is not None and value.const_value.name != value.name:
            value.const_value.name = value.name  # safetensors keys are initializer names
    with tempfile.TemporaryDirectory(dir=directory) as staging:
        staged = Path(staging)
        ir.save_safetensors(clone, staged / GRAPH, size_threshold_bytes=0)
        produced = sorted(p.name for p in staged.iterdir())
        if produced != sorted([GRAPH, WEIGHTS]) and produced != [GRAPH]:
            raise ArtifactError(f"saving '{signature.get('name')}' produced unexpected files {produced}",
                                hint="report this as a leangraph bug")
        for library in libraries:
            library.write(staged / library.file)
        files = {name: sha256_file(staged / name) for name in produced + [lib.file for lib in libraries]}
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "backend": backend,
            **signature,
            "files": files,
            "libraries": {lib.file: {"piece": lib.piece, "backend": lib.backend, "target": lib.target}
                          for lib in libraries},
        }
        manifest["content_hash"] = content_hash(manifest)
        for stale in _listed_libraries(directory) - set(files):  # a previous save's, not listed any more
            (directory / stale).unlink(missing_ok=True)
        for name in files:
            shutil.move(staged / name, directory / name)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return directory


def _listed_libraries(directory: Path) -> set[str]:
    try:
        listed = json.loads((directory / MANIFEST).read_text()).get("libraries", {})
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in listed if isinstance(name, str) and Path(name).name == name} - {GRAPH, WEIGHTS, MANIFEST}


def _well_formed(files: Any, libraries: Any) -> bool:
    """The graph, maybe the weights, and libraries: each listed with its hash, plain names in this directory."""
    if not isinstance(files, dict) or not isinstance(libraries, dict) or GRAPH not in files:
        return False
    plain = all(Path(name).name == name and name not in (GRAPH, WEIGHTS, MANIFEST) for name in libraries)
    return plain and set(files) == {GRAPH} | (set(files) & {WEIGHTS}) | set(libraries)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the artifact in ``directory``, after checking every file against it."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory '{directory}' does not exist", hint="check the path, or compile the model first")
    if not path.is_file():
        raise ArtifactError(f"'{directory}' holds no {MANIFEST}: not a leangraph artifact",
                            hint="pass the directory written by cm.save() or `leangraph compile -o`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}): the artifact is damaged",
                            hint="recompile the model") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a leangraph artifact manifest", hint="recompile the model")
    if manifest.get("version") != VERSION:
        raise ArtifactError(f"artifact '{directory}' has format version {manifest.get('version')}; this "
                            f"leangraph reads version {VERSION}", hint="recompile the model with this leangraph")
    if manifest.get("content_hash") != content_hash(manifest):
        raise ArtifactError(f"the manifest of artifact '{directory}' was altered (its content hash does not match)",
                            hint="recompile the model; do not edit artifacts by hand")
    files = manifest.get("files", {})
    if not _well_formed(files, manifest.get("libraries", {})):
        raise ArtifactError(f"artifact '{directory}' lists unexpected files {sorted(files)}", hint="recompile the model")
    for name, expected in files.items():
        file = directory / name
        if not file.is_file():
            raise ArtifactError(f"artifact '{directory}' is incomplete: {name} is missing", hint="copy the whole directory")
        if sha256_file(file) != expected:
            raise ArtifactError(f"{file} does not match the artifact's manifest (sha256 differs): the file was "
                                "modified, truncated or replaced", hint="recompile the model or copy the artifact again")
    return manifest


def read_artifact(directory: str | os.PathLike) -> tuple[ir.Model, dict[str, Any]]:
    """(model, manifest) of a checked artifact. Weights are read from the safetensors file."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    try:
        model = ir.load(directory / GRAPH)
    except Exception as exc:
        raise ArtifactError(f"the graph of artifact '{directory}' cannot be parsed: {exc}", hint="recompile the model") from None
    for value in model.graph.initializers.values():
        tensor = value.const_value
        location = getattr(tensor, "location", None)
        if location is not None and location != WEIGHTS:
            raise ArtifactError(f"initializer '{value.name}' of artifact '{directory}' points outside the artifact "
                                f"({location!r})", hint="recompile the model; artifacts only reference their own files")
        if isinstance(tensor, ir.ExternalTensor):
            value.const_value = ir.tensor(tensor.numpy(), name=value.name)  # read now: no file handle kept open
    return model, manifest
