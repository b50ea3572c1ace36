"""``optimize(model, ..., task="text-generation")``: a causal LM -> a TextGenerator.

capture the stateless decoder (a HF ``*ForCausalLM`` as ``input_ids, attention_mask, position_ids
-> logits`` with its cache off, or an ONNX decoder file) -> the default pipeline without padding
removal (verified as everywhere) -> ``introduce_kv_cache`` -> the step graph verified against the
stateless graph on probe prompts (a left-padded batch: prefill, single-token decode steps, a
multi-token append) -> compiled -> runtime/generation.py's TextGenerator.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import onnx_ir as ir

from leangraph.backends import chain_for
from leangraph.backends.onnxruntime import OrtExecutable
from leangraph.backends.partition import compile_partitioned
from leangraph.errors import CaptureError, OptionError, VerificationError
from leangraph.ir import clone_model
from leangraph.passes.kv_reuse.additive_mask import additive_masks
from leangraph.passes.kv_reuse.existing_kv_cache import find_kv_cache
from leangraph.passes.kv_reuse.grouped_query_attention import fold_repeat_kv
from leangraph.passes.kv_reuse.in_place_cache import cache_in_place
from leangraph.passes.kv_reuse.introduce_kv_cache import KVCacheLayout, introduce_kv_cache
from leangraph.passes.kv_reuse.probed_dims import settle_dims
from leangraph.passes.kv_reuse.shared_prefix_attention import share_prefix
from leangraph.runtime.generation import TextGenerator

CACHE_FRACTION = 0.25
"""Default ``cache_bytes``: this fraction of the memory available when the generator is made."""

_TOLERANCE = (1e-4, 1e-5)


def _stateless(model: Any):
    """A HF causal LM as ``(input_ids, attention_mask, position_ids) -> logits`` with its cache off."""
    import torch

    class StatelessDecoder(torch.nn.Module):
        def __init__(self, lm: torch.nn.Module) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids):
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False)
            return out.logits if hasattr(out, "logits") else out[0]

    return StatelessDecoder(model).eval()


def _context_length(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def _default_cache_bytes() -> int:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * CACHE_FRACTION)
    except (ValueError, OSError, AttributeError):  # not a POSIX system: 1 GiB
        return 1 << 30


def _probe_inputs(graph: ir.Model, batch: int = 2, length: int = 8,
                  cache: KVCacheLayout | None = None, past: int = 3) -> tuple[np.ndarray, ...]:
    """[batch, length] inputs for a decoder: token ids below its vocabulary (the logits' last
    dim), a mask of ones, position ids counting up; by input name. With the ``cache`` a decoder
    already has: ``past`` cached positions of small random keys and values before them."""
    outputs = {v.name: v for v in graph.graph.outputs}
    logits = outputs[cache.logits] if cache is not None else graph.graph.outputs[0]
    vocab = logits.shape[-1] if logits.shape is not None and isinstance(logits.shape[-1], int) else 2
    rng = np.random.default_rng(0)
    before = past if cache is not None else 0
    axis_of = {name: axis for pair, axis in zip(cache.past, cache.seq_axis) for name in pair} if cache else {}
    inputs = []
    for value in graph.graph.inputs:
        dtype = value.dtype.numpy() if value.dtype is not None else np.int64
        if value.name in axis_of:
            dims = [batch if i == 0 else past if i == axis_of[value.name] else d for i, d in enumerate(value.shape)]
            inputs.append((rng.standard_normal(dims) * 0.5).astype(dtype))
        elif cache is not None and value.name in cache.flags:
            inputs.append(np.ones([d if isinstance(d, int) else 1 for d in value.shape], np.bool_))
        elif "mask" in value.name:
            inputs.append(np.ones((batch, before + length), dtype))
        elif "position" in value.name:
            inputs.append(np.tile(np.arange(before, before + length, dtype=dtype), (batch, 1)))
        else:
            inputs.append(rng.integers(0, vocab, (batch, length)).astype(dtype))
    return tuple(inputs)


def build_generator(model: Any, example_inputs, *, backend: str, cache_bytes: int | None, optimize) -> TextGenerator:
    import torch

    start = time.perf_counter()
    max_positions, existing = None, None
    if isinstance(model, torch.nn.Module):  # a HF causal LM, wrapped with its cache off
        max_positions = _context_length(model)
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if example_inputs is None:
            generator = torch.Generator().manual_seed(0)
            ids = torch.randint(0, vocab or 100, (2, 8), generator=generator)
            example_inputs = (ids,)
        ids = torch.as_tensor(example_inputs[0])
        mask = torch.as_tensor(example_inputs[1]) if len(example_inputs) > 1 else torch.ones_like(ids)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        source = _stateless(model)
        example = (ids, mask, positions)
        dynamic = {name: {0: "batch", 1: "seq"} for name in ("input_ids", "attention_mask", "position_ids")}
    else:  # an ONNX decoder: probe inputs made up from its signature
        from leangraph.frontend import capture

        source, dynamic = capture(model), None
        existing = find_kv_cache(source)
        if isinstance(existing, str):
            raise CaptureError(f"'{source.graph.name or model}' has past inputs but they cannot be driven: {existing}",
                               hint="export the decoder without its cache (input_ids, attention_mask -> logits), "
                                    "or with optimum's names (past_key_values.N.key / present.N.key)")
        example = example_inputs if example_inputs is not None else _probe_inputs(source, cache=existing)
    from leangraph.passes import default_pipeline

    pipeline = [p for p in default_pipeline() if getattr(p, "name", "") != "remove_padding"]
    stateless = optimize(source, example, dynamic_shapes=dynamic, backend="reference", passes=pipeline)
    report = stateless.report
    step = clone_model(stateless.graph)
    settled = settle_dims(step, [_probe_inputs(step, 2, 5, cache=existing, past=3),
                                 _probe_inputs(step, 3, 7, cache=existing, past=4)])
    if settled:
        report.notes.append(f"probed_dims: {settled} dims the exporter left unknown settled by two probe runs")
    if existing is not None:
        layout = find_kv_cache(step)
        if not isinstance(layout, KVCacheLayout):
            raise CaptureError(f"the optimized graph of '{report.model_name}' lost its cache inputs: {layout}",
                               hint="report it with the model")
        report.notes.append(f"existing_kv_cache: the decoder's own cache used as it is ({len(layout.past)} layers)")
    else:
        layout = introduce_kv_cache(step)
        if isinstance(layout, str):
            raise CaptureError(f"text generation needs a KV cache, and '{report.model_name}' cannot get one: {layout}",
                               hint="give a causal LM whose attention is masked by its attention_mask input")
        report.notes.append(f"introduce_kv_cache: one step graph for prefill and decode, "
                            f"{len(layout.past)} attention layers cached")
    chain = chain_for("onnxruntime" if backend == "auto" else backend)
    if backend == "auto":
        report.notes.append("auto: the step graph runs on onnxruntime (backends are not raced for it yet)")
    in_place_step = None  # built from the step graph before the rewrites below, which its attention replaces
    if chain_for("onnxruntime")[0].name == chain[0].name and existing is None:
        in_place_graph = clone_model(step)
        in_place_layout = cache_in_place(in_place_graph, layout)
        if isinstance(in_place_layout, str):
            report.notes.append(f"in_place_cache: {in_place_layout}")
        else:
            buffers = {v.name: v for v in in_place_graph.graph.inputs}
            kv_heads = [buffers[key].shape[1] for key, _ in in_place_layout.past]
            in_place_step = (OrtExecutable(in_place_graph), in_place_layout, kv_heads)
    folded, left = fold_repeat_kv(step)
    if folded:
        report.notes.append(f"grouped_query_attention: {folded} attention nodes read each cached KV head once "
                            f"(no repeat_kv of the cache per step)")
    for reason in left:
        report.notes.append(f"grouped_query_attention: left as it is: {reason}")
    if existing is None:  # a decoder's own graph: its masks are not known to leave no real row without a key
        masked = additive_masks(step)
        if masked:
            report.notes.append(f"additive_mask: {masked} attention nodes masked by one broadcast Add (no NaN guard)")
    step_exe, _, fallbacks = compile_partitioned(step, chain)
    shared_graph = clone_model(step)
    shared_layout = share_prefix(shared_graph, layout)
    shared_step = None
    if isinstance(shared_layout, str):
        report.notes.append(f"shared_prefix_attention: {shared_layout}")
    else:
        shared_exe, _, _ = compile_partitioned(shared_graph, chain)
        shared_step = (shared_exe, shared_layout, [v.name for v in shared_graph.graph.inputs],
                       [v.name for v in shared_graph.graph.outputs])
    stateless_exe = None if existing is not None else compile_partitioned(stateless.graph, chain_for("onnxruntime"))[0]
    report.fallbacks += [f"{f.op} (node '{f.node}'): {f.wanted} -> {f.used}" for f in fallbacks]
    logits = step.graph.outputs[0]
    vocab_size = logits.shape[-1] if logits.shape is not None and isinstance(logits.shape[-1], int) else None
    if vocab_size is None:
        raise CaptureError(f"the logits of '{report.model_name}' have no static vocabulary size",
                           hint="export the decoder with a static last dim")
    inputs = {v.name: v for v in step.graph.inputs}
    kv_shapes = [tuple(tuple(d if isinstance(d, int) else None for d in inputs[name].shape) for name in pair)
                 for pair in layout.past]
    dtype = np.dtype(inputs[layout.past[0][0]].dtype.numpy())
    gen = TextGenerator(
        step_exe, layout, vocab_size=vocab_size, max_positions=max_positions,
        cache_bytes=_default_cache_bytes() if cache_bytes is None else int(cache_bytes), kv_shapes=kv_shapes,
        dtype=dtype, input_names=[v.name for v in step.graph.inputs], output_names=[v.name for v in step.graph.outputs],
        report=report, shared_step=shared_step, in_place_step=in_place_step,
        flag_shapes={name: tuple(d if isinstance(d, int) else 1 for d in inputs[name].shape) for name in layout.flags})
    if existing is not None:  # no stateless graph: chunked steps against one prefill of the same positions
        def reference(ids, mask):
            return gen._run_step(ids, mask, gen._empty_kv(len(ids)))[0]
        what = "its own prefill of the same positions"
    else:
        stateless_inputs = [v.name for v in stateless.graph.graph.inputs]

        def reference(ids, mask):
            return _stateless_last(stateless_exe, stateless_inputs, layout, ids, mask)
        what = "the stateless decoder"
    _verify(gen, reference, what, vocab_size, report)
    if in_place_step is not None:
        _verify_in_place(gen, reference, what, vocab_size, report)
    if shared_step is not None:
        try:
            _verify_shared(gen, reference, what, vocab_size, report)
        except VerificationError as exc:
            if existing is None:
                raise
            gen._shared = None  # the decoder's own graph numbers positions in a way the rewrite missed
            report.notes.append(f"shared_prefix_attention: not used on this decoder's own cache graph: {exc}")
    report.notes.append(f"generator built in {time.perf_counter() - start:.1f} s")
    return gen


def _verify(gen: TextGenerator, reference, what: str, vocab: int, report) -> None:
    """The step graph against ``reference(ids, mask)`` (the last position's logits): a batch of 2
    (the second left-padded by 2), prefill 4 positions, then 1, 1 and 2 more."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (2, 8)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    kv, done = gen._empty_kv(2), 0
    for chunk in (4, 1, 1, 2):
        end = done + chunk
        got, kv = gen._run_step(ids[:, done:end], mask[:, :end], kv)
        _check(got, reference(ids[:, :end], mask[:, :end]), "KV-cache step graph", what, report.model_name, end)
        done = end
    report.notes.append(f"KV-cache step graph verified against {what} (prefill, decode, append; a left-padded batch)")


def _verify_in_place(gen: TextGenerator, reference, what: str, vocab: int, report) -> None:
    """The in-place decode step: two sequences prefilled with 5 and 3 positions (5 and 5 where the
    graph takes no position ids), moved into buffers, decoded 3 steps; the last position's logits
    against ``reference(ids, mask)``."""
    from leangraph.runtime.generation import _InPlaceBatch, _Request

    rng = np.random.default_rng(2)
    ids = rng.integers(0, vocab, (2, 8)).astype(np.int64)
    # a graph without position ids numbers positions from the past length: the runtime batches
    # only sequences of one length on it (TextGenerator._groups), and so does this check
    lengths = (5, 3) if gen.layout.other_inputs else (5, 5)
    members = []
    for row, cached in enumerate(lengths):
        request = _Request(row, [int(t) for t in ids[row, :cached]], 3, None)
        _, request.kv = gen._run_step(ids[row:row + 1, :cached], np.ones((1, cached), np.int64), gen._empty_kv(1))
        request.tokens = list(request.prompt)
        members.append(request)
    batch = _InPlaceBatch.of(members, gen.layout.seq_axis, gen._in_place[2], gen._dtype)
    for step in range(3):
        positions = [n + step for n in lengths]
        got = gen._step_in_place(batch, np.asarray([[ids[row, p]] for row, p in enumerate(positions)], np.int64))
        for row, end in enumerate(positions):
            expected = reference(ids[row:row + 1, :end + 1], np.ones((1, end + 1), np.int64))
            _check(got[row:row + 1], expected, "in-place decode step", what, report.model_name, end + 1)
    report.notes.append(f"in_place_cache: decode writes into preallocated buffers; verified against {what} "
                        f"(two sequences of {'different' if lengths[0] != lengths[1] else 'one'} length, 3 steps)")


def _check(got: np.ndarray, expected: np.ndarray, what: str, against: str, model: str, positions: int) -> None:
    scale = float(np.abs(expected).max())
    if not np.allclose(got, expected, rtol=_TOLERANCE[0], atol=_TOLERANCE[1] * max(1.0, scale)):
        raise VerificationError(
            f"the {what} of '{model}' differs from {against} after {positions} positions "
            f"(max abs difference {float(np.abs(got - expected).max()):.3g})",
            hint="report it with the model; generation is not safe on this graph")


def _stateless_last(stateless, names, layout, ids, mask):
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)
    named = {layout.mask: mask, layout.tokens: ids, "position_ids": positions}
    for name in layout.other_inputs:
        named[name] = positions
    return stateless([named[name] for name in names])[0][:, -1]


def _verify_shared(gen: TextGenerator, reference, what: str, vocab: int, report) -> None:
    """The shared-prefix step graph: a 5-position prefix prefilled once (batch 1), then a batch of 2
    sequences after it decoded 2, 1 and 1 at a time; the last position's logits against
    ``reference(ids, mask)``."""
    rng = np.random.default_rng(1)
    shared = rng.integers(0, vocab, 5)
    ids = np.stack([np.concatenate([shared, rng.integers(0, vocab, 5)]) for _ in range(2)]).astype(np.int64)
    mask = np.ones_like(ids)
    _, prefix = gen._run_step(ids[:1, :5], mask[:1, :5], gen._empty_kv(1))
    prefix = gen._heads_first(prefix)
    own = gen._empty_kv(2)
    done = 5
    for chunk in (2, 1, 1):
        end = done + chunk
        got, own = gen._run_step(ids[:, done:end], mask[:, :end], own, prefix)
        _check(got, reference(ids[:, :end], mask[:, :end]), "shared-prefix step graph", what, report.model_name, end)
        done = end
    report.notes.append(f"shared_prefix_attention: verified against {what} (a batch sharing a prefix held once)")


def check_task(task: str) -> None:
    if task not in ("default", "text-generation"):
        raise OptionError(f"unknown task {task!r}", hint="use task='text-generation' for causal LMs, or leave it out")
