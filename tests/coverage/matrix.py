"""The coverage matrix: which rewrites fire on which architecture, attention implementation and
capture path (issue 16, item 4).

A cell is (arch, attention, capture). ``run_cell`` builds the tiny random-weight model, captures
it the way the cell says, optimizes it with the default pipeline on ONNX Runtime and returns a
JSON-able account: the fusions that fired, whether padding removal applied (and why not), and the
largest difference from the eager torch module on another batch than the example. Shared by
tests/coverage/test_coverage.py (regressions against expected.json) and
benchmarks/coverage_matrix.py (writes expected.json and docs/coverage.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import math
import os
import tempfile
import time
import warnings

import numpy as np
import torch

from tests.zoo import TextDecoder, _image_inputs, _text_inputs

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FUSION_PASSES = (
    "fuse_layer_norm",
    "fuse_rms_norm",
    "fuse_gelu",
    "fuse_attention",
    "fuse_matmul_bias",
    "fuse_matmul_activation",
    "fuse_sibling_linears",
    "remove_padding",
)
ATTENTIONS = ("eager", "sdpa")
CAPTURES = ("module", "torchscript", "dynamo", "optimum")
EXAMPLE, CHECK = (2, 7), (3, 11)
"""(batch, length) captured with and checked at: another batch size and length, both padded."""
EXACT = 1e-4


class Mean(torch.nn.Module):
    """Encoder + mean pooling over the real tokens (as leangraph.demo.sentence_encoder, without the
    normalization): padded positions are zeroed, so padding removal may apply."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class Vision(torch.nn.Module):
    """A vision encoder called as forward(pixel_values), returning the last hidden state."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).last_hidden_state


@dataclasses.dataclass(frozen=True)
class Arch:
    name: str
    config_cls: str
    model_cls: str
    config: dict
    kind: str  # "encoder" (mean pooled), "decoder" (TextDecoder) or "vision"
    attentions: tuple[str, ...] = ATTENTIONS

    def build(self, attention: str) -> torch.nn.Module:
        import transformers

        transformers.logging.set_verbosity_error()
        torch.manual_seed(0)
        cfg = getattr(transformers, self.config_cls)(**self.config)
        cfg._attn_implementation = attention
        model = getattr(transformers, self.model_cls)(cfg)
        if model.config._attn_implementation != attention:
            raise RuntimeError(f"{self.model_cls} runs {model.config._attn_implementation}, not {attention}")
        wrap = {"encoder": Mean, "decoder": TextDecoder, "vision": Vision}[self.kind]
        return wrap(model).eval()

    @property
    def input_names(self) -> list[str]:
        return ["pixel_values"] if self.kind == "vision" else ["input_ids", "attention_mask"]

    @property
    def dynamic_shapes(self) -> dict:
        if self.kind == "vision":
            return {"pixel_values": {0: "batch"}}
        return {name: {0: "batch", 1: "seq"} for name in self.input_names}

    def inputs(self, batch: int, length: int) -> tuple[torch.Tensor, ...]:
        if self.kind == "vision":  # the image side is fixed by the position embeddings
            return _image_inputs()(batch, self.config["image_size"])
        return _text_inputs(self.config["vocab_size"])(batch, length)


_BASE = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
_GQA = {**_BASE, "num_key_value_heads": 2}

ARCHS: dict[str, Arch] = {
    a.name: a
    for a in [
        Arch("bert", "BertConfig", "BertModel", _BASE, "encoder"),
        Arch(
            "roberta",
            "RobertaConfig",
            "RobertaModel",
            {**_BASE, "max_position_embeddings": 70, "pad_token_id": 1},
            "encoder",
        ),
        Arch(
            "distilbert",
            "DistilBertConfig",
            "DistilBertModel",
            {
                "vocab_size": 100,
                "dim": 32,
                "n_layers": 2,
                "n_heads": 4,
                "hidden_dim": 64,
                "max_position_embeddings": 64,
            },
            "encoder",
        ),
        Arch("albert", "AlbertConfig", "AlbertModel", {**_BASE, "embedding_size": 16}, "encoder"),
        Arch(
            "xlm-roberta",
            "XLMRobertaConfig",
            "XLMRobertaModel",
            {**_BASE, "max_position_embeddings": 70, "pad_token_id": 1},
            "encoder",
        ),
        # transformers has no SDPA path for DeBERTa-v2 (its disentangled attention is eager only)
        Arch(
            "deberta-v2",
            "DebertaV2Config",
            "DebertaV2Model",
            {**_BASE, "pad_token_id": 0},
            "encoder",
            ("eager",),
        ),
        Arch(
            "gpt2",
            "GPT2Config",
            "GPT2Model",
            {"vocab_size": 100, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64},
            "decoder",
        ),
        Arch("llama", "LlamaConfig", "LlamaModel", _GQA, "decoder"),
        Arch("qwen2", "Qwen2Config", "Qwen2Model", _GQA, "decoder"),
        Arch("mistral", "MistralConfig", "MistralModel", {**_GQA, "sliding_window": None}, "decoder"),
        Arch(
            "t5-encoder",
            "T5Config",
            "T5EncoderModel",
            {"vocab_size": 100, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4},
            "encoder",
        ),
        Arch(
            "vit",
            "ViTConfig",
            "ViTModel",
            {
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 64,
                "image_size": 32,
                "patch_size": 8,
            },
            "vision",
        ),
    ]
}


def cells() -> list[tuple[str, str, str]]:
    """Every (arch, attention, capture) the matrix holds."""
    return [
        (a.name, attention, capture)
        for a in ARCHS.values()
        for attention in a.attentions
        for capture in CAPTURES
    ]


def cell_id(arch: str, attention: str, capture: str) -> str:
    return f"{arch}-{attention}-{capture}"


OPTIMUM_BLOCKED = (
    "not run: optimum's ONNX exporter (optimum-onnx, newest 0.1.0) requires transformers<4.58 and does not "
    "import beside this venv's transformers 5.23 (ImportError: get_parameter_dtype from "
    "transformers.modeling_utils); optimum 2.x itself no longer exports"
)


def _skip_reason(capture: str) -> str:
    if capture == "optimum":
        if importlib.util.find_spec("optimum") is None:
            return OPTIMUM_BLOCKED
        try:
            from optimum.exporters.onnx import main_export  # noqa: F401
        except Exception as exc:  # installed, but not the exporter (or not for this transformers)
            return f"not run: optimum is installed but its ONNX exporter does not import: {exc}"
    return ""


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warn about tracing; the matrix keeps only its own lines."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield


def _export(arch: Arch, module: torch.nn.Module, args: tuple, capture: str, workdir: str):
    """What leangraph.optimize is handed for this capture path: the module, or an ONNX file."""
    if capture == "module":
        return module
    path = os.path.join(workdir, f"{arch.name}-{capture}.onnx")
    with _quiet(), torch.no_grad():
        if capture == "torchscript":
            torch.onnx.export(
                module,
                args,
                path,
                dynamo=False,
                opset_version=17,
                input_names=arch.input_names,
                output_names=["output"],
                dynamic_axes=arch.dynamic_shapes,
            )
        elif capture == "dynamo":
            torch.onnx.export(
                module,
                args,
                path,
                dynamo=True,
                dynamic_shapes=arch.dynamic_shapes,
                input_names=arch.input_names,
                output_names=["output"],
            )
        elif capture == "optimum":  # reached only where optimum is installed
            path = _export_optimum(arch, module, args, workdir)
        else:
            raise ValueError(f"unknown capture path {capture!r}")
    return path


def _export_optimum(arch: Arch, module: torch.nn.Module, args: tuple, workdir: str) -> str:
    """optimum exports the bare transformers model with inputs of its own choosing (token_type_ids
    for BERT, no pooling); the cell needs its own inputs and reference before it can be compared.
    Not written yet: optimum's exporter does not run beside this venv's transformers (OPTIMUM_BLOCKED),
    so it could not be tried."""
    raise NotImplementedError(
        "optimum is installed, but the optimum cell is not written yet "
        "(tests/coverage/matrix.py: _export_optimum)"
    )


def _fired(report) -> tuple[list[str], dict[str, int]]:
    counts: dict[str, int] = {}
    for record in report.records:
        if record.name not in FUSION_PASSES or record.reverted:
            continue
        for rule, count in record.fired.items():
            counts[f"{record.name}:{rule}"] = counts.get(f"{record.name}:{rule}", 0) + count
        if record.changed and not record.fired:
            counts[record.name] = counts.get(record.name, 0) + 1
    return sorted(counts), counts


def _padding(report, name: str = "remove_padding") -> tuple[bool, str]:
    records = [r for r in report.records if r.name == name]
    if not records:
        return False, f"{name} did not run"
    record = records[-1]
    if record.reverted:
        return False, f"reverted: {record.reason}"
    if record.changed:
        return True, ""
    return False, "; ".join(record.notes) or "no note"


def _reverted(report) -> list[str]:
    return [
        f"{r.name}: {r.reason.splitlines()[0] if r.reason else 'reverted'}"
        for r in report.records
        if r.reverted
    ]


def _expression(value, depth: int) -> str:
    """The ops producing ``value``, ``depth`` levels up: what a leftover Softmax reads."""
    node = value.producer() if value is not None else None
    if node is None:
        return "const" if value is not None and value.const_value is not None else "input"
    if depth == 0 or node.op_type in ("Constant",):
        return node.op_type
    return f"{node.op_type}({', '.join(_expression(v, depth - 1) for v in node.inputs if v is not None)})"


def leftover_softmax(graph) -> list[str]:
    """Each distinct Softmax left in the optimized graph: what it reads and who reads it (why
    attention fusion did not take it)."""
    import onnx_ir as ir

    seen: dict[str, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(graph.graph):
        if node.op_type != "Softmax":
            continue
        consumers = sorted({use.node.op_type for use in node.outputs[0].uses()})
        text = f"{_expression(node.inputs[0], 4)} -> Softmax -> {'/'.join(consumers) or 'output'}"
        seen[text] = seen.get(text, 0) + 1
    return [f"{n}x {text}" for text, n in seen.items()]


def _max_diff(
    compiled, module: torch.nn.Module, args: tuple, capture: str, valid_only: bool = False
) -> float:
    """Largest |compiled - eager| (over the real tokens only with ``valid_only``)."""
    with torch.no_grad():
        want = module(*args).detach().numpy()
    given = args if capture == "module" else tuple(a.numpy() for a in args)
    got = compiled(*given)
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    if got.shape != want.shape:
        return math.inf
    diff = np.abs(got.astype(np.float64) - want)
    if valid_only:
        diff = diff[args[1].numpy().astype(bool)]
    return float(np.max(diff)) if diff.size else 0.0


def _zero_pipeline() -> list:
    """The default pipeline with remove_padding(padded_outputs='zero'): for outputs that hold
    padded positions (a decoder's last hidden state), whether packing applies once those may be 0."""
    from leangraph.passes.redundancy.padding_removal import REMOVE_PADDING, remove_padding_pass
    from leangraph.passes.registry import default_pipeline

    return [remove_padding_pass("zero") if item is REMOVE_PADDING else item for item in default_pipeline()]


def _optimize(spec: Arch, model, example: tuple, capture: str, passes="default"):
    import leangraph

    with _quiet():
        if capture == "module":
            return leangraph.optimize(
                model, example, dynamic_shapes=spec.dynamic_shapes, backend="onnxruntime", passes=passes
            )
        return leangraph.optimize(
            model, tuple(a.numpy() for a in example), backend="onnxruntime", passes=passes
        )


def run_cell(arch: str, attention: str, capture: str, workdir: str | None = None) -> dict:
    """One cell of the matrix; every failure is part of the result, not raised."""
    result = {
        "fired": [],
        "counts": {},
        "padding_removed": False,
        "why_not": "",
        "max_diff": None,
        "error": "",
        "skipped": "",
        "reverted": [],
        "leftover_softmax": [],
        "padding_zero": None,
        "seconds": 0.0,
    }
    skip = _skip_reason(capture)
    if skip:
        result["skipped"] = skip
        return result
    spec = ARCHS[arch]
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="coverage-"))
        try:
            module = spec.build(attention)
            example = spec.inputs(*EXAMPLE)
            model = _export(spec, module, example, capture, workdir)
            compiled = _optimize(spec, model, example, capture)
            result["fired"], result["counts"] = _fired(compiled.report)
            result["padding_removed"], result["why_not"] = _padding(compiled.report)
            if spec.kind == "vision":
                result["why_not"] = "not applicable: no attention mask input (pixel_values only)"
            result["reverted"] = _reverted(compiled.report)
            result["leftover_softmax"] = leftover_softmax(compiled.graph)
            result["max_diff"] = _max_diff(compiled, module, spec.inputs(*CHECK), capture)
            if spec.kind == "decoder" and not result["padding_removed"]:  # its output holds padded positions
                zero = _optimize(spec, model, example, capture, _zero_pipeline())
                applied, why_not = _padding(zero.report, "remove_padding[zero]")
                result["padding_zero"] = {
                    "applied": applied,
                    "why_not": why_not,
                    "max_diff_valid": _max_diff(zero, module, spec.inputs(*CHECK), capture, valid_only=True),
                }
        except Exception as exc:  # noqa: BLE001 -- the cell's result (e.g. an exporter that cannot trace it)
            lines = str(exc).strip().splitlines()
            result["error"] = f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


ABBREVIATIONS = {
    "fuse_layer_norm": "LN",
    "fuse_rms_norm": "RMS",
    "fuse_gelu": "GELU",
    "fuse_attention": "ATT",
    "fuse_matmul_bias": "MM",
    "fuse_matmul_activation": "MMA",
    "fuse_sibling_linears": "QKV",
    "remove_padding": "PAD",
}


def cell_text(result: dict) -> str:
    """The table cell: the fused passes, then ✓ (within 1e-4 of eager) or ✗ and the difference."""
    if result["skipped"]:
        return "not run"
    if result["error"]:
        return f"error: {result['error'].split(':')[0]}"
    passes = {name.split(":")[0] for name in result["fired"]}
    tags = " ".join(ABBREVIATIONS[p] for p in FUSION_PASSES if p in passes) or "none"
    if (result.get("padding_zero") or {}).get("applied"):
        tags += " PAD0"
    diff = result["max_diff"]
    mark = "✓" if diff is not None and diff <= EXACT else "✗"
    return f"{tags} {mark} {diff:.0e}" if diff is not None else tags


def regressions(expected: dict, got: dict) -> list[str]:
    """What got worse than the recorded cell. A fusion pass counts as lost if it no longer fires or
    fires fewer times (a layer lost); rule renames within a pass are not regressions."""
    problems = []
    if expected.get("skipped") or got.get("skipped"):
        return problems
    if got["error"] and not expected["error"]:
        return [f"error where there was none: {got['error']}"]
    if expected["error"]:
        return problems
    before, after = _per_pass(expected["counts"]), _per_pass(got["counts"])
    for name, count in sorted(before.items()):
        if after.get(name, 0) < count:
            problems.append(f"{name} fired {count}x before, {after.get(name, 0)}x now")
    if expected["padding_removed"] and not got["padding_removed"]:
        problems.append(f"padding removal no longer applies: {got['why_not']}")
    zero_before, zero_now = expected.get("padding_zero") or {}, got.get("padding_zero") or {}
    if zero_before.get("applied") and not (got["padding_removed"] or zero_now.get("applied")):
        problems.append(
            f"padding removal with padded_outputs='zero' no longer applies: {zero_now.get('why_not')}"
        )
    was_exact = expected["max_diff"] is not None and expected["max_diff"] <= EXACT
    if was_exact and not (got["max_diff"] is not None and got["max_diff"] <= EXACT):
        problems.append(f"max_diff {got['max_diff']} above {EXACT} (was {expected['max_diff']:.1e})")
    return problems


def improvements(expected: dict, got: dict) -> list[str]:
    """What got better (printed by the test, recorded with benchmarks/coverage_matrix.py --write)."""
    notes = []
    if expected.get("error") and not got.get("error"):
        notes.append(f"error gone (was {expected['error']})")
    before, after = _per_pass(expected.get("counts", {})), _per_pass(got.get("counts", {}))
    notes += [
        f"{name} fires {count}x (was {before.get(name, 0)}x)"
        for name, count in sorted(after.items())
        if count > before.get(name, 0)
    ]
    if got.get("padding_removed") and not expected.get("padding_removed"):
        notes.append("padding removal applies now")
    if set(got.get("fired", [])) != set(expected.get("fired", [])):
        notes.append(f"rules now: {got.get('fired')}")
    return notes


def _per_pass(counts: dict[str, int]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for name, count in counts.items():
        totals[name.split(":")[0]] = totals.get(name.split(":")[0], 0) + count
    return totals
