"""ONNX file or ModelProto -> IR: read, verify, bring to a common opset, infer shapes.

Models below opset 20 are converted up to it (one set of semantics for the passes to match), unless
ONNX's converter cannot or breaks the model: then they keep their opset and say why in the metadata;
models at a later opset (21-26: opset 23's Attention, RMSNormalization, RotaryEmbedding) stay at
theirs: no op the passes match changed its semantics since 20, and converting down would refuse
the ops that are new. Only an opset newer than ONNX Runtime runs (the installed onnx's
in-development one, ``onnx.helper.make_model``'s default) is converted down to the newest it runs.

Shapes are inferred twice: by ONNX (strict, it checks the model), then by ONNX Runtime's symbolic
inference, which follows the Shape/Gather/Unsqueeze/Concat chains the TorchScript exporter writes
for every reshape and keeps the graph inputs' dim names through them (ONNX's inference gives each
such dim a fresh unknown name: then no pass can tell that a head split keeps [batch, seq]).

Every failure names the file and what is wrong with it: missing, not ONNX, truncated, a cycle, a
missing initializer, an unknown op, a shape mismatch the checker finds.
"""

from __future__ import annotations

import os
from pathlib import Path

import google.protobuf.message
import onnx
import onnx.version_converter
import onnx_ir as ir
import onnx_ir.passes.common

from leangraph.errors import InvalidGraphError, ModelLoadError
from leangraph.frontend.legacy import fix_per_channel_prelu
from leangraph.frontend.symbolic_shapes import symbolic_shapes
from leangraph.ir import DOMAIN, TARGET_OPSET, infer_leangraph_shapes, verify_model
from leangraph.ir.versions import newest_opset

MIN_IR_VERSION = 10
"""What ONNX Runtime and the checker need for opset-20 graphs whose initializers are not inputs."""

Source = str | os.PathLike | onnx.ModelProto | bytes


def _read(source: Source) -> tuple[onnx.ModelProto, str]:
    """The ModelProto and a name for messages (the file path, or the graph's name)."""
    if isinstance(source, onnx.ModelProto):
        label = source.graph.name or "<ModelProto>"
        _refuse_unplaced_external_data(source, label)
        return source, label
    if isinstance(source, bytes):
        label, data = "<bytes>", source
    else:
        path = Path(source)
        label = str(path)
        if not path.exists():
            raise ModelLoadError(
                f"model file '{path}' does not exist", hint="check the path (relative paths are "
                f"taken from {os.getcwd()})"
            )
        if not path.is_file():
            raise ModelLoadError(f"model path '{path}' is not a file", hint="pass the .onnx file itself")
        data = path.read_bytes()
    if not data:
        raise ModelLoadError(f"model file '{label}' is empty", hint="re-export or re-download the model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (google.protobuf.message.DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"'{label}' is not a readable ONNX model ({len(data)} bytes): the protobuf decoder "
            f"says: {exc}. The file is truncated, corrupted, or not ONNX",
            hint="re-export the model, or check that the file was copied completely",
        ) from None
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise ModelLoadError(
            f"'{label}' holds no ONNX graph ({len(data)} bytes decode to an empty model): "
            "it is truncated or not an ONNX file",
            hint="re-export the model, or check that the file was copied completely",
        )
    if isinstance(source, bytes):
        _refuse_unplaced_external_data(proto, label)
    else:
        base = str(Path(source).parent)
        try:
            onnx.load_external_data_for_model(proto, base)
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise ModelLoadError(
                f"model '{label}' refers to external data that cannot be read: {str(exc).strip()}",
                hint="keep the external data files next to the .onnx file",
            ) from None
    return proto, label


def _refuse_unplaced_external_data(proto: onnx.ModelProto, label: str) -> None:
    """A model given as bytes or a ModelProto has no folder: external data would be read relative
    to the working directory, from any file there. Only a file path says where its data lives."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    for tensor in _get_all_tensors(proto):
        if uses_external_data(tensor):
            raise ModelLoadError(
                f"model '{label}' keeps tensor '{tensor.name}' in external data, but was given as bytes or a "
                "ModelProto, which have no folder to read it from",
                hint="pass the path of the .onnx file (its external data beside it), or load the data first: "
                     "onnx.load(path) reads it")


def _default_opset(proto: onnx.ModelProto) -> int | None:
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    return None


def _convert_opset(proto: onnx.ModelProto, label: str, target_opset: int) -> tuple[onnx.ModelProto, str | None]:
    """Up to ``target_opset`` (a later opset is kept, see the module doc), and None; or the model as
    it is and why it was not converted: ONNX's converter cannot, or its result has another
    signature (Scan-8's batch axis is dropped by the 8 -> 9 adapter: the caller's inputs would no
    longer fit)."""
    current = _default_opset(proto)
    if current is not None and current > newest_opset():
        # an opset ONNX Runtime does not run yet (the installed onnx's in-development one)
        try:
            return onnx.version_converter.convert_version(proto, newest_opset()), None
        except Exception as exc:
            raise InvalidGraphError(
                f"model '{label}' is at ONNX opset {current}, newer than ONNX Runtime runs "
                f"({newest_opset()}), and could not be converted to it: {str(exc).strip().splitlines()[0][:200]}",
                hint=f"export the model at opset {newest_opset()} or below") from None
    if current is None or current >= target_opset:
        return proto, None
    fixed = fix_per_channel_prelu(proto, current)
    try:
        converted = onnx.version_converter.convert_version(fixed, target_opset)
    except Exception as exc:  # the converter raises bare RuntimeErrors from C++
        return proto, (f"kept at opset {current}: ONNX's version converter cannot convert it to {target_opset} "
                       f"({str(exc).strip().splitlines()[0][:200]})")
    if _signature_of(converted) != _signature_of(proto):
        return proto, f"kept at opset {current}: converted to {target_opset} its inputs or outputs change"
    return converted, None


def _signature_of(proto: onnx.ModelProto) -> list[str]:
    return [value.type.SerializeToString().hex() for value in (*proto.graph.input, *proto.graph.output)]


def _infer_shapes(proto: onnx.ModelProto, strict: bool) -> onnx.ModelProto:
    # strict: a shape conflict inside the model is an error, not a silently dropped shape.
    return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=strict, data_prop=True)


def load_onnx(source: Source, *, target_opset: int = TARGET_OPSET) -> ir.Model:
    """Read an ONNX model (path, bytes or ModelProto) into the IR at ``target_opset``.

    The graph is checked (ops, value definitions, cycles, then ONNX's checker), topologically
    sorted, converted to ``target_opset``, and its shapes inferred.
    """
    proto, label = _read(source)
    _check_signature(proto, label)
    try:
        model = ir.from_proto(proto)
    except Exception as exc:  # onnx_ir's SerdeError wraps the reason (e.g. a value written twice)
        raise InvalidGraphError(f"model '{label}' is not a valid ONNX graph: {_root_cause(exc)}",
                                hint="every value must be written by one node and named once; fix or re-export "
                                     "the model") from None
    if (model.ir_version or 0) < 4:
        # Before IR version 4 every initializer had to be listed as a graph input too: there they
        # are the constants they are. From version 4 on, an initializer that is also an input is
        # that input's default, which the caller may override: it stays an input (with its
        # default), and no pass takes it for a constant (passes/fusion/_checks.py: constant).
        ir.passes.common.RemoveInitializersFromInputsPass()(model)
    model.ir_version = max(model.ir_version or 0, MIN_IR_VERSION)
    if not model.graph.name or model.graph.name == "<ModelProto>":
        model.graph.name = Path(label).stem if label[0] != "<" else "model"
    verify_model(model)
    _check_outputs_produced(model, label)
    model.graph.sort()
    proto = ir.to_proto(model)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise InvalidGraphError(
            f"model '{label}' is not valid ONNX: {str(exc).strip()}",
            hint="fix the model or re-export it",
        ) from None
    # ONNX's inference has no schema for our domain: models holding leangraph ops are not strict
    strict = not any(node.domain == DOMAIN for node in proto.graph.node)
    converted, opset_note = _convert_opset(proto, label, target_opset)
    try:
        try:
            proto = _infer_shapes(converted, strict)
        except onnx.shape_inference.InferenceError as exc:
            if converted is proto:
                raise
            # the converter broke it (MeanVarianceNormalization-13 -> 20): the original then
            proto = _infer_shapes(proto, strict)
            opset_note = (f"kept at opset {_default_opset(proto)}: converted to {target_opset} ONNX's shape inference "
                          f"fails ({str(exc).strip().splitlines()[0][:200]})")
    except onnx.shape_inference.InferenceError as exc:
        raise InvalidGraphError(
            f"model '{label}' has inconsistent shapes or types: {str(exc).strip()}",
            hint="the model computes on tensors whose shapes do not fit; fix or re-export it",
        ) from None
    symbolic_note = "not used: the model holds leangraph ops, which it does not know"
    if strict:
        proto, symbolic_note = symbolic_shapes(proto)
    model = ir.from_proto(proto)
    infer_leangraph_shapes(model)
    model.metadata_props["leangraph.source"] = label
    if symbolic_note:
        model.metadata_props[SHAPE_INFERENCE_NOTE] = symbolic_note
    if opset_note:
        model.metadata_props[OPSET_NOTE] = opset_note
    return model


OPSET_NOTE = "leangraph.opset"
"""Metadata key: why the model was kept at its own opset below 20 (the passes match ops whose
semantics are the same there, and verification checks the rest)."""
SHAPE_INFERENCE_NOTE = "leangraph.shape_inference"
"""Metadata key: why ONNX Runtime's symbolic shape inference was not used (the shapes are ONNX's)."""


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check_signature(proto: onnx.ModelProto, label: str) -> None:
    """A graph computes something, once per name: outputs exist and no input or output name repeats
    (ONNX's checker lets duplicate output names through; every runtime then returns one of them)."""
    if not proto.graph.output:
        raise InvalidGraphError(f"model '{label}' has no graph outputs: it computes nothing",
                                hint="export the model with its outputs listed")
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        names = [value.name for value in values]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise InvalidGraphError(f"model '{label}' lists the graph {kind} {repeated[0]!r} {names.count(repeated[0])} "
                                    "times", hint=f"give each graph {kind} one entry and a name of its own")


def _check_outputs_produced(model: ir.Model, label: str) -> None:
    for value in model.graph.outputs:
        if value.producer() is None and not value.is_graph_input() and not value.is_initializer():
            raise InvalidGraphError(
                f"output '{value.name}' of model '{label}' is produced by no node "
                "(the file may be truncated, or a node was deleted)",
                hint="re-export the model",
            )
