"""Symbolic shapes for ONNX files: ONNX Runtime's symbolic shape inference, merged into ONNX's.

ONNX's own inference gives a fresh unknown dim (``unk__12``) to every dim it cannot compute, and
it cannot compute the reshape targets the TorchScript exporter builds from Shape, Gather,
Unsqueeze and Concat: after the first head split of a BERT file nothing is known to be [batch,
seq] any more, and no pass can tell self-attention from attention over another sequence. ONNX
Runtime's ``symbolic_shape_infer`` (the inference its transformers optimizer runs) evaluates those
chains with sympy and keeps the graph inputs' dim names through them.

Two things it does not do, which this module adds (without them it fails on most files):

- the reduce ops whose axes became an input at opset 18 (ReduceL2, ReduceMax, ...) get the rule
  it has for ReduceSum/ReduceMean (axes as an input) — else their outputs have no shape and the
  next op that reads one stops it;
- an incomplete inference is used for the values it did infer (its own driver raises and writes
  ``sym_shape_infer_temp.onnx`` into the working directory).

The merge: a value takes the symbolic shape only where it agrees with ONNX's (same rank, same
static dims), and from it only the names of dims ONNX left unknown. Its static sizes are not
taken: its Slice arithmetic is wrong on some graphs (ONNX's RotaryEmbedding function body: a
[2, 3, 1, 2] where the model computes [2, 3, 1, 4]), and ONNX Runtime refuses a model whose
recorded shapes contradict its own inference. The one static size taken is 1 where ONNX has
no size: a dim that broadcasts (BERT's position embeddings, [1, seq, hidden] gathered by the
[1, seq] position ids of a TorchScript file) must be known to be 1 by a backend that compiles
shapes: TVM's Relax takes two differently named dims of an Add for equal, and the position
embeddings' unknown dim became the batch at run time ("Mismatched shape[0]"). A wrong name can at
worst make a pass see two dims as one; verification on the example inputs catches what that
breaks. Values ONNX could not type at all (downstream of an ONNX Runtime contrib op, which it has
no schema for) take the symbolic type and shape whole.
"""

from __future__ import annotations

import logging

import onnx

_AXES_AS_INPUT_SINCE_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMin",
                           "ReduceSumSquare")


def _inference_class():
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    class Inference(SymbolicShapeInference):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            for op_type in _AXES_AS_INPUT_SINCE_18:
                # ReduceMean's rule: ReduceSum's (axes as an input) from opset 18 on, else ONNX's
                self.dispatcher_.setdefault(op_type, self._infer_ReduceMean)

    return Inference


def symbolic_shapes(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """``proto`` (shapes inferred by ONNX; changed in place) with the symbolic shapes merged in,
    and a note when none could be used (why), else None. The inference copies the model once (its
    ``_preprocess``); nothing here copies it again: only the value infos are set aside."""
    try:
        inference_class = _inference_class()
    except ImportError as exc:
        return proto, f"not used: onnxruntime's symbolic_shape_infer is not importable ({exc})"
    logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(logging.CRITICAL)
    onnx_infos = [onnx.ValueInfoProto() for _ in proto.graph.value_info]
    for copy, info in zip(onnx_infos, proto.graph.value_info):
        copy.CopyFrom(info)
    del proto.graph.value_info[:]  # it would start from ONNX's unknown dims and keep them
    try:
        inference = inference_class(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
        inference._preprocess(proto)
        while inference.run_:
            inference._infer_impl()
        known = inference.known_vi_
    except Exception as exc:  # an op it has no rule for, or algebra sympy cannot follow
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return proto, f"not used: ONNX Runtime's symbolic inference failed ({reason})"
    finally:
        proto.graph.value_info.extend(onnx_infos)
    taken = 0
    for info in (*proto.graph.value_info, *proto.graph.output):
        symbolic = known.get(info.name)
        if symbolic is None or not _agrees(info, symbolic):
            continue
        for dim, theirs in zip(info.type.tensor_type.shape.dim, symbolic.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                continue
            if theirs.HasField("dim_param") and theirs.dim_param:
                dim.dim_param = theirs.dim_param
                taken += 1
            elif theirs.HasField("dim_value") and theirs.dim_value == 1:
                dim.dim_value = 1  # a broadcast dim (BERT's [1, seq] position ids): see the module doc
                taken += 1
    # values ONNX's inference could not type at all (after an ONNX Runtime contrib op, which it has
    # no schema for) take the symbolic type and shape whole: there is nothing of ONNX's to disagree with
    typed = {info.name for info in (*proto.graph.value_info, *proto.graph.input, *proto.graph.output)}
    typed |= {init.name for init in proto.graph.initializer}
    for node in proto.graph.node:
        for name in node.output:
            symbolic = known.get(name)
            if name and name not in typed and symbolic is not None and symbolic.type.HasField("tensor_type") \
                    and symbolic.type.tensor_type.elem_type:
                proto.graph.value_info.append(symbolic)
                typed.add(name)
                taken += 1
    return proto, None if taken else "not used: ONNX Runtime's symbolic inference added nothing"


def _dims(info: onnx.ValueInfoProto) -> list | None:
    tensor = info.type.tensor_type if info.type.HasField("tensor_type") else None
    if tensor is None or not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _agrees(onnx_info: onnx.ValueInfoProto, symbolic: onnx.ValueInfoProto) -> bool:
    """Whether the symbolic shape is complete (every dim a number or a name), of ONNX's rank, and
    has ONNX's number wherever ONNX has one."""
    ours, theirs = _dims(onnx_info), _dims(symbolic)
    if ours is None or theirs is None or len(ours) != len(theirs) or any(d is None for d in theirs):
        return False
    return all(not isinstance(a, int) or a == b for a, b in zip(ours, theirs))
