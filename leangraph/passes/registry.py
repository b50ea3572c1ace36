"""Every pass by name, and the default pipeline. A new pass: one module, one line here."""

from __future__ import annotations

from leangraph.errors import OptionError
from leangraph.passes.base import Pass
from leangraph.passes.cleanup.algebraic import ALGEBRAIC
from leangraph.passes.cleanup.constant_folding import constant_folding
from leangraph.passes.cleanup.cse import cse
from leangraph.passes.cleanup.dce import dce
from leangraph.passes.fusion.attention import FUSE_ATTENTION
from leangraph.passes.fusion.gelu import FUSE_GELU
from leangraph.passes.fusion.layer_norm import FUSE_LAYER_NORM
from leangraph.passes.fusion.onnxruntime_ops import FROM_ONNXRUNTIME_OPS
from leangraph.passes.fusion.matmul_bias import FUSE_MATMUL_ACTIVATION, FUSE_MATMUL_BIAS
from leangraph.passes.fusion.rms_norm import FUSE_RMS_NORM
from leangraph.passes.fusion.sibling_linears import fuse_sibling_linears
from leangraph.passes.manager import FixedPoint, PipelineItem
from leangraph.passes.redundancy.padding_removal import REMOVE_PADDING
from leangraph.passes.token_merging import knobs as token_reduction
from leangraph.passes.token_merging.merge_tokens import MERGE_TOKENS
from leangraph.passes.token_merging.prune_tokens import PRUNE_TOKENS

PASSES: dict[str, Pass] = {}


def register(pass_: Pass) -> Pass:
    """Make ``pass_`` addressable by name in ``optimize(passes=[...])`` and the CLI."""
    if pass_.name in PASSES and PASSES[pass_.name] is not pass_:
        raise OptionError(f"a pass named '{pass_.name}' is already registered", hint="choose another name")
    PASSES[pass_.name] = pass_
    return pass_


for _pass in (
    dce, cse, constant_folding, ALGEBRAIC,
    FUSE_LAYER_NORM, FUSE_RMS_NORM, FUSE_GELU, FUSE_ATTENTION, FUSE_MATMUL_BIAS, FUSE_MATMUL_ACTIVATION,
    REMOVE_PADDING, fuse_sibling_linears, FROM_ONNXRUNTIME_OPS, MERGE_TOKENS, PRUNE_TOKENS,
):
    register(_pass)


KNOB_SPACES = {"token_reduction": token_reduction.knob_space}
"""Lossy passes whose knobs the budgeted search sets (name -> model -> KnobSpace, or why none)."""


def cleanup(name: str = "cleanup") -> FixedPoint:
    return FixedPoint(name, (PASSES["constant_folding"], PASSES["algebraic"], PASSES["cse"], PASSES["dce"]))


def default_pipeline() -> list[PipelineItem]:
    """ONNX Runtime's contrib ops (a file its optimizer wrote) read back into ours (first: cleanup
    then merges the mask computations it writes per layer), cleanup to a fixed point, the fusions
    (norms and GELU before the linear layers that absorb activations; attention again after the
    linear layers, whose fusion uncovers head merges that went through a flattened linear layer, as
    in GPT-2), padding removal (it needs the fused
    attention), sibling linear layers merged (last: the attention patterns read Q, K and V apart),
    then cleanup again."""
    fusions = ["fuse_layer_norm", "fuse_rms_norm", "fuse_gelu", "fuse_attention", "fuse_matmul_bias",
               "fuse_matmul_activation", "fuse_attention", "remove_padding", "fuse_sibling_linears"]
    return [PASSES["from_onnxruntime_ops"], cleanup(), *(PASSES[name] for name in fusions), cleanup("final_cleanup")]


def get_pass(name_or_pass: str | Pass) -> Pass:
    if isinstance(name_or_pass, Pass):
        return name_or_pass
    if not isinstance(name_or_pass, str):
        raise OptionError(f"a pipeline item must be a pass name or a Pass, got {name_or_pass!r}",
                          hint=f"name registered passes ({', '.join(sorted(PASSES))})")
    try:
        return PASSES[name_or_pass]
    except KeyError:
        raise OptionError(
            f"no pass named '{name_or_pass}' (registered: {', '.join(sorted(PASSES))})",
            hint="check the name, or register your pass with leangraph.passes.register",
        ) from None


def resolve(passes) -> list[PipelineItem]:
    """A pipeline from 'default', 'none', a comma-separated string of names, or a list of pass
    names / Pass objects / FixedPoint groups. An empty name (``"cse,,dce"``, ``",,"``) is refused:
    it is a typo, and running fewer passes than asked would hide it."""
    usage = "pass 'default', 'none', 'cse,dce', or a list of pass names"
    if isinstance(passes, str):
        if passes == "default":
            return default_pipeline()
        if passes == "none":
            return []
        names = [name.strip() for name in passes.split(",")]
        if not all(names):
            raise OptionError(f"passes={passes!r} has an empty pass name", hint=usage)
        return [get_pass(name) for name in names]
    if isinstance(passes, (list, tuple)):
        return [item if isinstance(item, FixedPoint) else get_pass(item) for item in passes]
    raise OptionError(f"passes must be a string or a list of passes, got {passes!r}", hint=usage)
