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

Loading reads each file once, as a regular file in the directory (a symbolic link, a folder or a
device is refused), checks its sha256 and the manifest's content hash and types before parsing
anything, and parses the bytes it checked: a tampered, truncated or mixed-up artifact is refused
with a clear error. The safetensors header is parsed with strict bounds and must agree with
graph.onnx: every initializer's dtype, shape and offsets, and the header's tensors tiling the data
region, no gaps, no overlaps. Nothing in an artifact is imported or unpickled; a library's native
code runs when its backend loads it (docs/security.md).

Saving the same model twice gives byte-identical files. A save writes into a new or empty folder
or over an earlier artifact only, and deletes only files the earlier manifest listed whose hash is
still the one it recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
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

MAX_MANIFEST_BYTES = 16 << 20
"""A manifest is a few kilobytes (the precision rows of a large lossy compile: tens); more is not ours."""
MAX_HEADER_BYTES = 100 << 20
"""The safetensors header limit, as the safetensors library's own."""
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
"""Names an artifact's files may have: plain names in its folder (no separators, no '..')."""
_LIBRARY_NAME = re.compile(r"[a-z0-9_]+-[0-9a-f]{20}\.[a-z]+")
"""The name save gives a piece's library: '<backend>-<digest>.<suffix>' (partition.Partition.key)."""
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STAGING = ".leangraph-save-"

# The header dtype safetensors stores each IR dtype as (onnx-ir's save_safetensors): sub-byte types
# and the FNUZ float8s, which safetensors lacks, as their bytes (U8).
_HEADER_DTYPE = {
    ir.DataType.BOOL: "BOOL", ir.DataType.FLOAT8E5M2: "F8_E5M2", ir.DataType.FLOAT8E4M3FN: "F8_E4M3",
    ir.DataType.FLOAT8E8M0: "F8_E8M0", ir.DataType.BFLOAT16: "BF16", ir.DataType.FLOAT16: "F16",
    ir.DataType.FLOAT: "F32", ir.DataType.DOUBLE: "F64", ir.DataType.INT8: "I8", ir.DataType.INT16: "I16",
    ir.DataType.INT32: "I32", ir.DataType.INT64: "I64", ir.DataType.UINT8: "U8", ir.DataType.UINT16: "U16",
    ir.DataType.UINT32: "U32", ir.DataType.UINT64: "U64", ir.DataType.COMPLEX64: "C64",
    ir.DataType.FLOAT8E4M3FNUZ: "U8", ir.DataType.FLOAT8E5M2FNUZ: "U8",
}
_HEADER_BITS = {"BOOL": 8, "F4": 4, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "BF16": 16, "F16": 16, "F32": 32,
                "F64": 64, "I8": 8, "I16": 16, "I32": 32, "I64": 64, "U8": 8, "U16": 16, "U32": 32, "U64": 64,
                "C64": 64}


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


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A checked artifact: its graph with the weights bound, its manifest, and the bytes of each
    library as they were hashed (a backend loads those, not the file again, which could have changed)."""

    directory: Path
    model: ir.Model
    manifest: dict[str, Any]
    libraries: dict[str, bytes]


# ---------------------------------------------------------------------------------------------
# Saving


def save_artifact(model: ir.Model, directory: str | os.PathLike, *, backend: str, signature: dict[str, Any],
                  libraries: Sequence[Library] = ()) -> Path:
    """Write ``model`` and its ``libraries`` as an artifact into ``directory``: created if missing,
    refused if it is a file or a non-empty folder that is not an artifact; an earlier artifact's
    files are replaced."""
    directory = Path(directory)
    name = signature.get("name")
    _prepare_folder(directory, name)
    clone = clone_model(model)
    for value in clone.graph.initializers.values():
        if value.const_value is not None and value.const_value.name != value.name:
            value.const_value.name = value.name  # safetensors keys are initializer names
    try:
        with tempfile.TemporaryDirectory(dir=directory, prefix=_STAGING) as staging:
            staged = Path(staging)
            ir.save_safetensors(clone, staged / GRAPH, size_threshold_bytes=0)
            produced = sorted(p.name for p in staged.iterdir())
            if produced != sorted([GRAPH, WEIGHTS]) and produced != [GRAPH]:
                raise ArtifactError(f"saving '{name}' produced unexpected files {produced}",
                                    hint="report this as a leangraph bug")
            for library in libraries:
                library.write(staged / library.file)
            files = {file: sha256_file(staged / file) for file in produced + [lib.file for lib in libraries]}
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
            (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            for stale in _written_by_earlier_save(directory) - set(files):  # a previous save's, not listed any more
                (directory / stale).unlink(missing_ok=True)
            # Renamed into place (a link there is replaced, never followed), the manifest last: until
            # it is, the folder's files do not match the manifest and a load refuses them.
            for file in files:
                os.replace(staged / file, directory / file)
            os.replace(staged / MANIFEST, directory / MANIFEST)
    except OSError as exc:
        raise ArtifactError(f"cannot write the artifact of model '{name}' to '{directory}': "
                            f"{exc.strerror or exc}", hint="pass a folder you can write to, on a disk with room") from None
    return directory


def _prepare_folder(directory: Path, name: Any) -> None:
    """``directory`` ready to save into: new, empty, or an earlier artifact (whose unknown files stay)."""
    where = f"the artifact of model '{name}'"
    if directory.is_symlink() and not directory.exists():
        raise ArtifactError(f"cannot save {where} to '{directory}': it is a link to nothing",
                            hint="pass a folder path (created if missing)")
    if not directory.exists():
        try:
            directory.mkdir(parents=True)
        except FileExistsError:  # made meanwhile (another process saving the same cache entry)
            pass
        except OSError as exc:
            raise ArtifactError(f"cannot create the folder '{directory}' for {where}: {exc.strerror or exc}",
                                hint="pass a folder path you can write to (not under a file)") from None
    if not directory.is_dir():
        raise ArtifactError(f"cannot save {where} to '{directory}': it is a file, not a folder",
                            hint="pass a folder path (created if missing); a file there is left alone")
    try:
        entries = sorted(entry.name for entry in directory.iterdir())
    except OSError as exc:
        raise ArtifactError(f"cannot read the folder '{directory}' to save {where}: {exc.strerror or exc}",
                            hint="pass a folder you can read and write") from None
    if entries and not _is_artifact_folder(directory, entries):
        strangers = [e for e in entries if not _is_artifact_entry(directory, e)]
        raise ArtifactError(
            f"refusing to save {where} into '{directory}': the folder is not empty and is not a leangraph artifact "
            f"(it holds {', '.join(repr(s) for s in strangers[:3])}{', ...' if len(strangers) > 3 else ''})",
            hint="pass a new or empty folder, or the folder of an earlier cm.save(); nothing was written")


def _is_artifact_entry(directory: Path, entry: str) -> bool:
    """A name a save writes (or its staging folder, left by a save that was killed)."""
    if entry.startswith(_STAGING):
        return True
    path = directory / entry
    return (entry in (MANIFEST, GRAPH, WEIGHTS) or bool(_LIBRARY_NAME.fullmatch(entry))) and (
        path.is_file() and not path.is_symlink())


def _is_artifact_folder(directory: Path, entries: list[str]) -> bool:
    """Whether a folder is an earlier save's: its manifest says so, or it holds only names a save
    writes (a damaged cache entry, rebuilt in place)."""
    manifest = _manifest_if_readable(directory)
    if manifest is not None and manifest.get("format") == FORMAT:
        return True
    return all(_is_artifact_entry(directory, entry) for entry in entries)


def _manifest_if_readable(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads(_read_regular_file(directory, MANIFEST, MAX_MANIFEST_BYTES),
                              object_pairs_hook=_unique_keys)
    except (ArtifactError, ValueError, RecursionError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _written_by_earlier_save(directory: Path) -> set[str]:
    """The files an earlier save wrote here: listed by its manifest (whose content hash still holds)
    with the sha256 it recorded. Anything else in the folder is someone else's and stays."""
    manifest = _manifest_if_readable(directory)
    if manifest is None or manifest.get("format") != FORMAT:
        return set()
    files = manifest.get("files")
    try:
        if manifest.get("content_hash") != content_hash(manifest) or not isinstance(files, dict):
            return set()
    except (TypeError, ValueError, RecursionError):
        return set()
    owned = set()
    for file, recorded in files.items():
        if not isinstance(file, str) or not _FILE_NAME.fullmatch(file) or file == MANIFEST:
            continue
        path = directory / file
        with contextlib.suppress(OSError):
            if not path.is_symlink() and path.is_file() and sha256_file(path) == recorded:
                owned.add(file)
    return owned


# ---------------------------------------------------------------------------------------------
# Loading


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when it names a key twice (which json would quietly resolve to the last)."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key[:80]!r} appears twice")
        result[key] = value
    return result


def _read_regular_file(directory: Path, name: str, limit: int | None = None) -> bytes:
    """The bytes of ``directory/name``, a regular file of the folder itself: a symbolic link (which
    could point anywhere), a folder, a FIFO or a device is refused, and so is a file over ``limit``."""
    path = directory / name
    if path.is_symlink():
        raise ArtifactError(f"{path} is a symbolic link; an artifact's files must be its own",
                            hint="copy the artifact with its files (e.g. cp -rL) instead of linking them")
    # O_NOFOLLOW: a link put there after the check is refused too; O_NONBLOCK: opening a FIFO does
    # not wait for a writer (it is then refused as not a regular file).
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ArtifactError(f"artifact '{directory}' is incomplete: {name} is missing",
                            hint="copy the whole directory") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}",
                            hint="check the artifact's files and their permissions") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"{path} is not a regular file", hint="copy the artifact again")
        if limit is not None and info.st_size > limit:
            raise ArtifactError(f"{path} is {info.st_size} bytes, over the {limit >> 20} MiB a leangraph "
                                f"{name} can be", hint="recompile the model; this is not an artifact leangraph wrote")
        with os.fdopen(fd, "rb") as f:
            fd = None  # closed with f
            return f.read()
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}",
                            hint="check the artifact's files and their permissions") from None
    finally:
        if fd is not None:
            os.close(fd)


def _type_name(value: Any) -> str:
    text = json.dumps(value)[:40] if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text


def _manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """What is wrong with the manifest's fields (their types); empty when nothing."""
    problems = []

    def expect(key: str, ok: Callable[[Any], bool], what: str, required: bool = True) -> None:
        if key not in manifest:
            if required:
                problems.append(f"'{key}' is missing")
        elif not ok(manifest[key]):
            problems.append(f"'{key}' must be {what}, not {_type_name(manifest[key])}")

    def strings(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)

    def an_input(value: Any) -> bool:
        return (isinstance(value, dict) and isinstance(value.get("name"), str) and isinstance(value.get("dtype"), str)
                and (value.get("shape") is None or (isinstance(value["shape"], list) and all(
                    d is None or isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool))
                    for d in value["shape"]))))

    def library(value: Any) -> bool:
        return isinstance(value, dict) and all(isinstance(value.get(key), str) for key in ("piece", "backend", "target"))

    expect("content_hash", lambda v: isinstance(v, str) and bool(_SHA256.fullmatch(v)), "a sha256 (64 hex digits)")
    expect("backend", lambda v: isinstance(v, str) and bool(v), "a backend name")
    expect("name", lambda v: isinstance(v, str), "a string", required=False)
    expect("inputs", lambda v: isinstance(v, list) and all(an_input(i) for i in v),
           "a list of {name, dtype, shape}", required=False)
    expect("outputs", strings, "a list of names", required=False)
    expect("quantization", strings, "a list of strings", required=False)
    expect("files", lambda v: isinstance(v, dict) and all(isinstance(h, str) and _SHA256.fullmatch(h) for h in v.values()),
           "an object of file name -> sha256")
    expect("libraries", lambda v: isinstance(v, dict) and all(library(info) for info in v.values()),
           "an object of file name -> {piece, backend, target}")
    return problems


def _well_formed(files: dict[str, str], libraries: dict[str, Any]) -> bool:
    """The graph, maybe the weights, and libraries: each listed with its hash, plain names in this directory."""
    if GRAPH not in files:
        return False
    plain = all(_FILE_NAME.fullmatch(name) and name not in (GRAPH, WEIGHTS, MANIFEST) for name in libraries)
    return bool(plain) and set(files) == {GRAPH} | (set(files) & {WEIGHTS}) | set(libraries)


def _checked_files(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, the bytes of every file it lists), after checking them against each other."""
    if not isinstance(directory, (str, os.PathLike)):
        raise ArtifactError(f"an artifact is a folder path, not {type(directory).__name__}",
                            hint="pass the directory written by cm.save() or `leangraph compile -o`")
    directory = Path(directory)
    if not directory.exists():
        raise ArtifactError(f"artifact directory '{directory}' does not exist", hint="check the path, or compile the model first")
    if not directory.is_dir():
        raise ArtifactError(f"'{directory}' is a file, not an artifact directory",
                            hint="pass the directory written by cm.save() or `leangraph compile -o`; an .onnx "
                                 "file is compiled with leangraph.optimize(path)")
    if not (directory / MANIFEST).exists() and not (directory / MANIFEST).is_symlink():
        raise ArtifactError(f"'{directory}' holds no {MANIFEST}: not a leangraph artifact",
                            hint="pass the directory written by cm.save() or `leangraph compile -o`")
    path = directory / MANIFEST
    data = _read_regular_file(directory, MANIFEST, MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ArtifactError(f"{path} is nested too deeply to be a leangraph manifest: the artifact is damaged",
                            hint="recompile the model") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a repeated key
        raise ArtifactError(f"{path} is not valid JSON ({str(exc)[:200]}): the artifact is damaged",
                            hint="recompile the model") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a leangraph artifact manifest", hint="recompile the model")
    version = manifest.get("version")
    if version != VERSION or not isinstance(version, int) or isinstance(version, bool):
        raise ArtifactError(f"artifact '{directory}' has format version {_type_name(version)}; this "
                            f"leangraph reads version {VERSION}", hint="recompile the model with this leangraph")
    problems = _manifest_problems(manifest)
    if problems:
        raise ArtifactError(f"the manifest of artifact '{directory}' is malformed: {'; '.join(problems[:6])}",
                            hint="recompile the model; do not edit artifacts by hand")
    if manifest["content_hash"] != content_hash(manifest):
        raise ArtifactError(f"the manifest of artifact '{directory}' was altered (its content hash does not match)",
                            hint="recompile the model; do not edit artifacts by hand")
    files = manifest["files"]
    if not _well_formed(files, manifest["libraries"]):
        shown = ", ".join(repr(name[:80]) for name in sorted(files)[:8])
        raise ArtifactError(f"artifact '{directory}' lists unexpected files [{shown}]", hint="recompile the model")
    contents = {}
    for name, expected in files.items():
        contents[name] = _read_regular_file(directory, name)
        if hashlib.sha256(contents[name]).hexdigest() != expected:
            raise ArtifactError(f"{directory / name} does not match the artifact's manifest (sha256 differs): the file "
                                "was modified, truncated or replaced", hint="recompile the model or copy the artifact again")
    return manifest, contents


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the artifact in ``directory``, after checking every file against it."""
    return _checked_files(directory)[0]


def _parse_graph(directory: Path, data: bytes) -> ir.Model:
    import onnx

    try:
        proto = onnx.ModelProto()
        proto.ParseFromString(data)
        return ir.serde.deserialize_model(proto)
    except Exception as exc:  # protobuf's and onnx-ir's errors on bytes that are not a model
        raise ArtifactError(f"the graph of artifact '{directory}' cannot be parsed: {str(exc)[:300]}",
                            hint="recompile the model") from None


@dataclasses.dataclass(frozen=True)
class _Entry:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _safetensors_header(directory: Path, data: bytes) -> tuple[dict[str, _Entry], int]:
    """(tensor name -> entry, where the data region starts) of a safetensors file, checked: a header
    length within the file, JSON of the expected form, and tensors that tile the data region."""
    where = f"{directory / WEIGHTS}"

    def bad(why: str) -> ArtifactError:
        return ArtifactError(f"{where} is not a valid safetensors file: {why}", hint="recompile the model")

    if len(data) < 8:
        raise bad(f"it is {len(data)} bytes long")
    length = int.from_bytes(data[:8], "little")
    if length > MAX_HEADER_BYTES or 8 + length > len(data):
        raise bad(f"its header length {length} is beyond the file ({len(data)} bytes) or over "
                  f"{MAX_HEADER_BYTES >> 20} MiB")
    try:
        header = json.loads(data[8:8 + length].decode("utf-8"), object_pairs_hook=_unique_keys)
    except RecursionError:
        raise bad("its header is nested too deeply") from None
    except ValueError as exc:
        raise bad(f"its header is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise bad("its __metadata__ is not an object of strings")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"the entry of tensor {name[:80]!r} is not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]

        def counts(values: Any, size: int | None = None) -> bool:
            return (isinstance(values, list) and (size is None or len(values) == size)
                    and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values))

        if dtype not in _HEADER_BITS or not counts(shape) or not counts(offsets, 2) or offsets[0] > offsets[1]:
            raise bad(f"the entry of tensor {name[:80]!r} has a wrong dtype, shape or data_offsets")
        if offsets[1] - offsets[0] != math.ceil(math.prod(shape) * _HEADER_BITS[dtype] / 8):
            raise bad(f"tensor {name[:80]!r} ({dtype}{shape}) does not fill its data_offsets {offsets}")
        entries[name] = _Entry(dtype, tuple(shape), offsets[0], offsets[1])
    end = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != end:
            raise bad(f"tensor {name[:80]!r} starts at {entry.begin}, not where the tensor before it ends ({end}): "
                      "the tensors overlap or leave a gap")
        end = entry.end
    if 8 + length + end != len(data):
        raise bad(f"its tensors end at byte {8 + length + end} of {len(data)}")
    return entries, 8 + length


def _all_graphs(model: ir.Model):
    """The model's graphs and function bodies, subgraphs included."""
    from leangraph.ir.verify import all_graphs

    yield from all_graphs(model.graph)
    for function in model.functions.values():
        yield from all_graphs(function)


def _attribute_tensors(node: ir.Node):
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.TENSOR:
            yield attr.value
        elif attr.type == ir.AttributeType.TENSORS:
            yield from attr.value


def _bind_weights(directory: Path, model: ir.Model, weights: bytes | None) -> None:
    """Every initializer stored in graph.safetensors replaced by its array, read from ``weights``
    (the bytes whose hash was checked) after checking that graph.onnx and the header agree on it."""
    entries, start = _safetensors_header(directory, weights) if weights is not None else ({}, 0)

    def refuse(name: str, why: str) -> ArtifactError:
        return ArtifactError(f"initializer '{name[:80]}' of artifact '{directory}' {why}",
                             hint="recompile the model; do not edit artifacts by hand")

    bound = set()
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if not isinstance(tensor, ir.ExternalTensor):
            continue  # stored in graph.onnx itself, which was checked
        if tensor.location != WEIGHTS:
            raise refuse(value.name, f"points outside the artifact ({tensor.location[:200]!r}); artifacts only "
                                     "reference their own files")
        entry = entries.get(value.name)
        if entry is None:
            raise refuse(value.name, f"is not in {WEIGHTS}")
        sub_byte = tensor.dtype.bitwidth < 8
        storage = ("U8", (tensor.nbytes,)) if sub_byte else (_HEADER_DTYPE.get(tensor.dtype), tuple(tensor.shape.numpy()))
        if (entry.dtype, entry.shape) != storage and not (sub_byte and entry.dtype == "F4"):
            raise refuse(value.name, f"is {tensor.dtype.name}{list(tensor.shape)} in {GRAPH} but "
                                     f"{entry.dtype}{list(entry.shape)} in {WEIGHTS}")
        if tensor.offset != start + entry.begin or (tensor.length is not None and tensor.length != entry.end - entry.begin) \
                or entry.end - entry.begin != tensor.nbytes:
            raise refuse(value.name, f"is at bytes {tensor.offset}+{tensor.length} in {GRAPH} but "
                                     f"{start + entry.begin}+{entry.end - entry.begin} in {WEIGHTS}'s header")
        if sub_byte:
            raw = np.frombuffer(weights, np.uint8, count=tensor.nbytes, offset=start + entry.begin)
            value.const_value = ir.PackedTensor(raw, tensor.dtype, shape=tensor.shape, name=value.name)
        else:
            array = np.frombuffer(weights, np.dtype(tensor.dtype.numpy()).newbyteorder("<"), count=tensor.size,
                                  offset=start + entry.begin).reshape(tensor.shape.numpy())
            # A view of the checked bytes (read-only); copied only where a tensor after a smaller-typed one
            # starts off its alignment, which some kernels need.
            value.const_value = ir.Tensor(np.require(array, requirements="A"), dtype=tensor.dtype, name=value.name)
        bound.add(value.name)
    stray = sorted(set(entries) - bound)
    if stray:
        raise ArtifactError(f"{directory / WEIGHTS} holds tensors the graph does not read "
                            f"({', '.join(repr(s[:80]) for s in stray[:3])})", hint="recompile the model")
    for graph in _all_graphs(model):
        outside = [v.name for v in graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]
        outside += [node.name for node in graph for t in _attribute_tensors(node) if isinstance(t, ir.ExternalTensor)]
        if outside:
            raise ArtifactError(f"artifact '{directory}' has external data outside {WEIGHTS}'s initializers "
                                f"({outside[0][:80]!r})", hint="recompile the model; artifacts only reference their own files")


def open_artifact(directory: str | os.PathLike) -> Artifact:
    """The checked artifact in ``directory``: its files read once, checked against the manifest,
    the graph parsed and its weights bound from the bytes that were checked."""
    manifest, contents = _checked_files(directory)
    directory = Path(directory)
    model = _parse_graph(directory, contents[GRAPH])
    _bind_weights(directory, model, contents.get(WEIGHTS))
    libraries = {name: data for name, data in contents.items() if name in manifest["libraries"]}
    return Artifact(directory, model, manifest, libraries)


def read_artifact(directory: str | os.PathLike) -> tuple[ir.Model, dict[str, Any]]:
    """(model, manifest) of a checked artifact. Weights are read from the safetensors file."""
    artifact = open_artifact(directory)
    return artifact.model, artifact.manifest
