"""Text generation on a KV-cache step graph (passes/kv_reuse/introduce_kv_cache.py).

``TextGenerator.generate(prompts, ...)`` runs the requests as one batch that requests join (after
their own prefill) and leave (at ``eos_token_id`` or ``max_new_tokens``) between decode steps:
continuous batching. Sequences of different lengths share the step graph by left padding: the
batch's keys and values are [batch, ..., longest, ...], a shorter sequence's leading positions
are padding (attention_mask 0 there) and its position ids count its own tokens only, so each
sequence computes what it computes alone.

The prefix cache (``PrefixCache``) keeps the keys and values of finished requests in a radix tree
over their tokens; a prompt that starts with a cached prefix prefills only the rest.

Greedy decoding takes the argmax (the first of equal maxima, as torch does); sampling applies
temperature, top-k and top-p (HF's order) and draws with a numpy Generator seeded per request from
``seed`` (reproducible, independent of the batch a request runs in).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from leangraph.errors import InputMismatchError, OptionError


MIN_SHARED_PREFIX = 16
"""Shared positions from which a decode batch uses the shared-prefix graph."""


@dataclasses.dataclass
class CacheStats:
    hits: int = 0
    """Requests whose prompt started with a cached prefix."""
    tokens_reused: int = 0
    """Prompt tokens not prefilled because the cache held them."""
    bytes_held: int = 0
    evictions: int = 0
    """Cached blocks dropped to stay under ``cache_bytes``."""
    shared_prefix_steps: int = 0
    """Decode steps that attended the batch's shared prefix once for the whole batch."""


def _common_run(run: tuple[int, ...], tokens: Sequence[int], start: int) -> int:
    """How many tokens of ``run`` equal ``tokens[start:]``, from the first."""
    common, limit = 0, min(len(run), len(tokens) - start)
    while common < limit and run[common] == tokens[start + common]:
        common += 1
    return common


class _Node:
    __slots__ = ("tokens", "kv", "children", "parent", "refs", "last_used")

    def __init__(self, tokens: tuple[int, ...], kv: list[tuple[np.ndarray, np.ndarray]] | None, parent) -> None:
        self.tokens, self.kv, self.parent = tokens, kv, parent
        self.children: dict[int, _Node] = {}
        self.refs, self.last_used = 0, 0

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.kv) if self.kv else 0


class PrefixCache:
    """Radix tree over token sequences: each edge holds a run of tokens and their keys and values
    (per layer, [1, ..., run, ...] along each layer's position axis). Lookup returns the longest
    cached prefix of a prompt; insertion splits an edge where a new sequence diverges. Leaves not
    in use (reference count 0) are evicted least recently used first while the bytes held exceed
    ``capacity``."""

    def __init__(self, capacity: int, axes: Sequence[int]) -> None:
        self.capacity, self.axes = capacity, list(axes)
        self.root = _Node((), None, None)
        self.stats = CacheStats()
        self._clock = 0
        self._lock = threading.Lock()

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _slice(self, kv, start: int, stop: int):
        return [(_cut(k, axis, start, stop), _cut(v, axis, start, stop)) for (k, v), axis in zip(kv, self.axes)]

    def _split(self, node: _Node, at: int) -> _Node:
        """Split ``node``'s edge after ``at`` tokens; returns the upper half (the new parent)."""
        upper = _Node(node.tokens[:at], self._slice(node.kv, 0, at), node.parent)
        upper.refs, upper.last_used = node.refs, node.last_used
        node.parent.children[node.tokens[0]] = upper
        node.tokens, node.kv, node.parent = node.tokens[at:], self._slice(node.kv, at, len(node.tokens)), upper
        upper.children[node.tokens[0]] = node
        return upper

    def lookup(self, tokens: Sequence[int]) -> tuple[list[_Node], int]:
        """The path of nodes covering the longest cached prefix of ``tokens`` and its length (the
        last node may be covered partly). The nodes are referenced until ``release``."""
        with self._lock:
            path, length, node = [], 0, self.root
            while length < len(tokens) and tokens[length] in node.children:
                child = node.children[tokens[length]]
                common = _common_run(child.tokens, tokens, length)
                path.append(child)
                length += common
                if common < len(child.tokens):
                    break
                node = child
            now = self._tick()
            for n in path:
                n.refs += 1
                n.last_used = now
            return path, length

    def release(self, path: list[_Node]) -> None:
        with self._lock:
            for node in path:
                node.refs -= 1

    def gather(self, path: list[_Node], length: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The keys and values of the first ``length`` tokens along ``path``, per layer."""
        pieces, covered = [], 0
        for node in path:
            take = min(len(node.tokens), length - covered)
            if take <= 0:
                break
            pieces.append(self._slice(node.kv, 0, take))
            covered += take
        return [(np.concatenate([p[layer][0] for p in pieces], axis=axis),
                 np.concatenate([p[layer][1] for p in pieces], axis=axis))
                for layer, axis in enumerate(self.axes)]

    def insert(self, tokens: Sequence[int], kv: list[tuple[np.ndarray, np.ndarray]], start: int = 0) -> None:
        """Cache ``tokens`` with their keys and values; ``kv`` covers ``tokens[start:]`` ([1, ...,
        len(tokens) - start, ...] per layer), the tree already holding ``tokens[:start]`` (else
        nothing is cached: the positions before ``start`` are not at hand)."""
        tokens = tuple(int(t) for t in tokens)
        with self._lock:
            node, length = self.root, 0
            while length < len(tokens):
                child = node.children.get(tokens[length])
                if child is None:
                    if length < start:
                        return
                    own = self._slice(kv, length - start, len(tokens) - start)
                    own = [(np.ascontiguousarray(k), np.ascontiguousarray(v)) for k, v in own]
                    leaf = _Node(tokens[length:], own, node)
                    leaf.last_used = self._tick()
                    node.children[tokens[length]] = leaf
                    self.stats.bytes_held += leaf.nbytes
                    break
                common = _common_run(child.tokens, tokens, length)
                if common < len(child.tokens):
                    child = self._split(child, common)
                child.last_used = self._tick()
                node, length = child, length + common
            self._evict()

    def _evict(self) -> None:
        while self.stats.bytes_held > self.capacity:
            leaves, stack = [], [self.root]
            while stack:
                node = stack.pop()
                stack.extend(node.children.values())
                if not node.children and node is not self.root and node.refs == 0:
                    leaves.append(node)
            if not leaves:
                return  # everything left is in use
            victim = min(leaves, key=lambda n: n.last_used)
            del victim.parent.children[victim.tokens[0]]
            self.stats.bytes_held -= victim.nbytes
            self.stats.evictions += 1


@dataclasses.dataclass(eq=False)
class _Prefix:
    """A cached prefix decode batches share: its keys and values split into heads
    ([1, heads, length, size] per layer, what the shared-prefix graph reads), held once for every
    request that starts with it; the cache nodes it came from stay referenced (not evicted) while
    it is in use."""

    tokens: tuple[int, ...]
    kv: list[tuple[np.ndarray, np.ndarray]]
    path: list[_Node]
    users: int = 0


@dataclasses.dataclass(eq=False)
class _Request:
    index: int
    prompt: list[int]
    max_new: int
    rng: np.random.Generator | None
    tokens: list[int] = dataclasses.field(default_factory=list)
    """Prompt and generated tokens whose keys and values exist (the prefix's and ``kv``)."""
    new: list[int] = dataclasses.field(default_factory=list)
    prefix: _Prefix | None = None
    kv: list[tuple[np.ndarray, np.ndarray]] | None = None
    """Keys and values of ``tokens`` after the prefix (all of them without one)."""
    pending: int | None = None
    """The token generated last, whose keys and values the next step computes."""
    done: bool = False

    @property
    def own_start(self) -> int:
        return len(self.prefix.tokens) if self.prefix is not None else 0


class TextGenerator:
    """What ``leangraph.optimize(model, ..., task="text-generation")`` returns (API.md)."""

    def __init__(self, step, layout, *, vocab_size: int, max_positions: int | None, cache_bytes: int,
                 kv_shapes: list[tuple[tuple[int | None, ...], tuple[int | None, ...]]], dtype: np.dtype,
                 input_names: list[str], output_names: list[str], report: Any, max_batch: int = 16,
                 shared_step=None, flag_shapes: dict[str, tuple[int, ...]] | None = None,
                 in_place_step=None) -> None:
        """``shared_step``: (executable, layout, input names, output names) of the step graph with
        shared-prefix attention (passes/kv_reuse/shared_prefix_attention.py), used for requests whose
        prompt starts with at least MIN_SHARED_PREFIX cached positions."""
        self._step, self.layout, self.report = step, layout, report
        self._shared = shared_step
        self.vocab_size, self.max_positions, self.max_batch = vocab_size, max_positions, max_batch
        self._kv_shapes, self._dtype = kv_shapes, dtype
        self._inputs, self._outputs = input_names, output_names
        self._flag_shapes = dict(flag_shapes or {})
        self._in_place = in_place_step
        """(executable with run_in_place, layout, kv heads per layer) of the decode step that writes
        into preallocated buffers (passes/kv_reuse/in_place_cache.py), or None."""
        self._cache = PrefixCache(cache_bytes, layout.seq_axis)
        self._prefixes: dict[tuple[int, ...], _Prefix] = {}
        self._lock = threading.Lock()
        one_position = sum(self._kv_bytes(shape, 1) * 2 for shape, _ in kv_shapes)
        if cache_bytes < one_position:
            raise OptionError(f"cache_bytes={cache_bytes} cannot hold the keys and values of one position "
                              f"({one_position} bytes)", hint="pass a larger cache_bytes, or None for the default")

    def _kv_bytes(self, shape, length: int) -> int:
        dims = [1 if d is None else d for d in shape]
        return int(np.prod(dims)) * length * np.dtype(self._dtype).itemsize

    @property
    def cache_stats(self) -> CacheStats:
        return dataclasses.replace(self._cache.stats)

    # --- the public calls ------------------------------------------------------------------

    def generate(self, prompts, max_new_tokens: int = 32, eos_token_id: int | None = None, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None) -> list[list[int]]:
        """The new tokens of each prompt (API.md)."""
        out = None
        for out in self._run(prompts, max_new_tokens, eos_token_id, do_sample, temperature, top_k, top_p, seed):
            pass
        return out if out is not None else []

    def stream(self, prompts, max_new_tokens: int = 32, eos_token_id: int | None = None, do_sample: bool = False,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               seed: int | None = None) -> Iterator[tuple[int, int]]:
        """(prompt index, token) as each token is made."""
        seen = None
        for state in self._run(prompts, max_new_tokens, eos_token_id, do_sample, temperature, top_k, top_p, seed):
            seen = seen or [0] * len(state)
            for index, tokens in enumerate(state):
                for token in tokens[seen[index]:]:
                    yield index, token
                seen[index] = len(tokens)

    # --- checks -----------------------------------------------------------------------------

    def _prompts(self, prompts, max_new_tokens: int) -> list[list[int]]:
        if isinstance(prompts, np.ndarray) and prompts.ndim == 1 or (
                isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], (int, np.integer))):
            raise InputMismatchError("prompts must be a list of token sequences, got one sequence",
                                     hint="wrap a single prompt in a list: generate([prompt])")
        checked = []
        for index, prompt in enumerate(prompts):
            array = np.asarray(prompt.detach().cpu().numpy() if hasattr(prompt, "detach") else prompt)
            if array.size == 0:
                raise InputMismatchError(f"prompt {index} is empty", hint="give at least one token (e.g. BOS)")
            if array.ndim != 1 or array.dtype.kind not in "iu":
                raise InputMismatchError(f"prompt {index} is not a 1-D sequence of integer token ids "
                                         f"(shape {list(array.shape)}, dtype {array.dtype})")
            if array.min() < 0 or array.max() >= self.vocab_size:
                bad = int(array[(array < 0) | (array >= self.vocab_size)][0])
                raise InputMismatchError(f"prompt {index} holds token id {bad}, outside the vocabulary "
                                         f"[0, {self.vocab_size})")
            if self.max_positions is not None and array.size + max_new_tokens > self.max_positions:
                raise InputMismatchError(
                    f"prompt {index} has {array.size} tokens; with max_new_tokens={max_new_tokens} that is "
                    f"{array.size + max_new_tokens} positions, more than the model's context of "
                    f"{self.max_positions}", hint="shorten the prompt or ask for fewer new tokens")
            checked.append([int(t) for t in array])
        return checked

    # --- the loop ---------------------------------------------------------------------------

    def _run(self, prompts, max_new_tokens, eos_token_id, do_sample, temperature, top_k, top_p, seed):
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise OptionError(f"max_new_tokens must be a non-negative integer, not {max_new_tokens!r}")
        if do_sample and (temperature <= 0 or not 0 < top_p <= 1 or top_k < 0):
            raise OptionError("sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 0")
        prompts = self._prompts(prompts, max_new_tokens)
        seeds = np.random.SeedSequence(seed).spawn(len(prompts)) if do_sample else [None] * len(prompts)
        requests = [_Request(i, p, max_new_tokens, np.random.default_rng(s) if s is not None else None)
                    for (i, p), s in zip(enumerate(prompts), seeds)]
        sampling = (do_sample, temperature, top_k, top_p)
        with self._lock:  # one generation at a time: concurrent callers get what serial calls give
            waiting = collections.deque(r for r in requests if r.max_new > 0)
            active: list[_Request] = []
            batches: dict[tuple[int, ...], _Batch] = {}
            try:
                while waiting or active:
                    while waiting and len(active) < self.max_batch:  # join: prefill, then decode with the batch
                        for request in self._prefill(waiting, self.max_batch - len(active), sampling, eos_token_id):
                            if request.done:
                                self._finish(request)
                            else:
                                active.append(request)
                        yield [r.new for r in requests]
                    if active:
                        groups = self._groups(active)
                        keys = {tuple(id(r) for r in g) for g in groups}
                        for key in [k for k in batches if k not in keys]:
                            batches.pop(key).release()
                        for group in groups:
                            key = tuple(id(r) for r in group)
                            batches[key] = self._decode(batches.get(key), group, sampling, eos_token_id)
                        yield [r.new for r in requests]
                    for request in [r for r in active if r.done]:
                        active.remove(request)
                        self._finish(request)
            finally:
                for request in active:
                    self._drop_prefix(request)
            yield [r.new for r in requests]

    def _finish(self, request: _Request) -> None:
        """Cache what the request computed and let go of its prefix."""
        self._cache.insert(request.tokens, request.kv, start=request.own_start)
        request.kv = None
        self._drop_prefix(request)

    def _drop_prefix(self, request: _Request) -> None:
        prefix, request.prefix = request.prefix, None
        if prefix is not None:
            prefix.users -= 1
            if prefix.users == 0:
                self._prefixes.pop(prefix.tokens, None)
                self._cache.release(prefix.path)

    def _empty_kv(self, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for (key_shape, value_shape), axis in zip(self._kv_shapes, self.layout.seq_axis):
            arrays = []
            for shape in (key_shape, value_shape):
                dims = [batch if i == 0 else (0 if i == axis else d) for i, d in enumerate(shape)]
                arrays.append(np.zeros(dims, self._dtype))
            out.append(tuple(arrays))
        return out

    def _heads_first(self, kv: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Keys and values in the past's layout -> the shared-prefix graph's [1, heads, len, size]."""
        _, layout, _, _ = self._shared
        out = []
        for (k, v), heads in zip(kv, layout.prefix_heads):
            pair = []
            for x in (k, v):
                if heads:
                    x = x.reshape(x.shape[0], x.shape[1], heads, x.shape[2] // heads).transpose(0, 2, 1, 3)
                pair.append(np.ascontiguousarray(x))
            out.append(tuple(pair))
        return out

    def _feeds(self, tokens: np.ndarray, mask: np.ndarray, kv) -> list[np.ndarray]:
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)
        if self.layout.positions_new_only:
            positions = positions[:, mask.shape[1] - tokens.shape[1]:]
        named = {self.layout.tokens: tokens, self.layout.mask: mask}
        for name in self.layout.other_inputs:
            named[name] = positions
        for name in self.layout.flags:
            named[name] = np.ones(self._flag_shapes.get(name, ()), np.bool_)
        for (key, value), (k, v) in zip(self.layout.past, kv):
            named[key], named[value] = k, v
        return [named[name] for name in self._inputs]

    def _run_step(self, tokens, mask, kv, prefix=None):
        """Logits of the last position and the keys and values of ``kv``'s positions and the new
        ones; ``prefix``: heads-first keys and values every row attends to first (the mask then
        covers the prefix too, all ones there)."""
        if prefix is None:
            outputs = dict(zip(self._outputs, self._step(self._feeds(tokens, mask, kv))))
        else:
            step, layout, inputs, names = self._shared
            named = dict(zip(self._inputs, self._feeds(tokens, mask, kv)))
            for (key, value), (k, v) in zip(layout.prefix, prefix):
                named[key], named[value] = k, v
            outputs = dict(zip(names, step([named[name] for name in inputs])))
        present = [(outputs[k], outputs[v]) for k, v in self.layout.present]
        return outputs[self.layout.logits][:, -1], present

    def _prefix(self, path: list[_Node], length: int, tokens: Sequence[int]) -> _Prefix:
        """The shared prefix for ``tokens[:length]``: one per distinct prefix, made once."""
        key = tuple(tokens[:length])
        prefix = self._prefixes.get(key)
        if prefix is None:
            held, _ = self._cache.lookup(key)  # its own references: held while the prefix is in use
            prefix = _Prefix(key, self._heads_first(self._cache.gather(path, length)), held)
            self._prefixes[key] = prefix
        prefix.users += 1
        return prefix

    def _reuse(self, prompt: list[int]) -> tuple[list[_Node], int]:
        path, cached = self._cache.lookup(prompt)
        return path, min(cached, len(prompt) - 1)  # at least one token is computed: its logits are needed

    def _prefill(self, waiting: collections.deque, room: int, sampling, eos_token_id) -> list[_Request]:
        """Prefill the next waiting request. When the waiting requests after it start with the same
        cached prefix (or requests decoding now use it), they share it: prefilled as one
        left-padded batch through the shared-prefix graph (up to ``room``). A prefix one request
        alone uses is gathered into its own keys and values instead (a batch of one per prefix
        would read the weights once per request). Returns the requests prefilled."""
        request = waiting.popleft()
        path, reuse = self._reuse(request.prompt)
        try:
            key = tuple(request.prompt[:reuse])
            group = [request]
            if self._shared is not None and reuse >= MIN_SHARED_PREFIX:
                for other in list(waiting)[:room - 1]:
                    if len(other.prompt) <= reuse or tuple(other.prompt[:reuse]) != key:
                        break
                    if not self.layout.other_inputs and len(other.prompt) != len(request.prompt):
                        break  # the graph numbers positions itself: no padding between prefix and own part
                    group.append(other)
            if len(group) == 1 and key not in self._prefixes or reuse < MIN_SHARED_PREFIX or self._shared is None:
                self._prefill_alone(request, path, reuse, sampling, eos_token_id)
                return [request]
            prefix = self._prefix(path, reuse, request.prompt)
        finally:
            self._cache.release(path)
        for other in group[1:]:
            waiting.remove(other)
            prefix.users += 1
        for member in group:
            member.prefix = prefix
            self._cache.stats.hits += 1
            self._cache.stats.tokens_reused += len(prefix.tokens)
        own = [m.prompt[len(prefix.tokens):] for m in group]
        longest = max(len(o) for o in own)
        tokens = np.zeros((len(group), longest), np.int64)
        mask = np.zeros((len(group), len(prefix.tokens) + longest), np.int64)
        mask[:, :len(prefix.tokens)] = 1
        for row, part in enumerate(own):
            tokens[row, longest - len(part):] = part
            mask[row, len(prefix.tokens) + longest - len(part):] = 1
        logits, present = self._run_step(tokens, mask, self._empty_kv(len(group)), prefix.kv)
        for row, (member, part) in enumerate(zip(group, own)):
            member.kv = [tuple(_cut(x[row:row + 1], axis, longest - len(part)) for x in pair)
                         for pair, axis in zip(present, self.layout.seq_axis)]
            member.tokens = list(member.prompt)
            self._cache.insert(member.tokens, member.kv, start=member.own_start)
            self._take(member, logits[row], sampling, eos_token_id)
        return group

    def _prefill_alone(self, request: _Request, path: list[_Node], reuse: int, sampling, eos_token_id) -> None:
        prompt = request.prompt
        kv = self._cache.gather(path, reuse) if reuse else self._empty_kv(1)
        if reuse:
            self._cache.stats.hits += 1
            self._cache.stats.tokens_reused += reuse
        rest = np.asarray([prompt[reuse:]], np.int64)
        logits, request.kv = self._run_step(rest, np.ones((1, len(prompt)), np.int64), kv)
        request.tokens = list(prompt)
        self._cache.insert(request.tokens, request.kv)  # the requests after this one may share its prompt
        self._take(request, logits[0], sampling, eos_token_id)

    def _take(self, request: _Request, logits: np.ndarray, sampling, eos_token_id) -> None:
        token = _choose(logits, request.rng, *sampling)
        request.new.append(token)
        request.pending = token
        if len(request.new) >= request.max_new or (eos_token_id is not None and token == eos_token_id):
            request.done = True

    def _groups(self, active: list[_Request]) -> list[list[_Request]]:
        """The decode batches. Requests on a shared prefix decode together with it; a request
        without one that starts with the prefix most requests share joins them (its keys and
        values after the prefix are its own part); the rest form one left-padded batch where the
        graph takes position ids, else one batch per length (a graph that numbers positions itself
        would number a padded row's tokens wrong)."""
        by_prefix: dict[int, list[_Request]] = {}
        for request in active:
            if request.prefix is not None:
                by_prefix.setdefault(id(request.prefix), []).append(request)
        if by_prefix:
            common = max(by_prefix.values(), key=len)[0].prefix
            for request in active:
                if request.prefix is None and request.kv is not None and len(request.tokens) > len(common.tokens) and tuple(
                        request.tokens[:len(common.tokens)]) == common.tokens:
                    request.kv = [tuple(_cut(x, axis, len(common.tokens)) for x in pair)
                                  for pair, axis in zip(request.kv, self.layout.seq_axis)]
                    request.prefix = common
                    common.users += 1
                    by_prefix[id(common)].append(request)
        groups = list(by_prefix.values())
        if not self.layout.other_inputs:  # no left padding where the graph numbers positions itself
            groups = [[r for r in g if len(r.tokens) == n] for g in groups for n in sorted({len(r.tokens) for r in g})]
        plain = [r for r in active if r.prefix is None]
        if plain and self.layout.other_inputs:
            groups.append(plain)
        elif plain:
            by_length: dict[int, list[_Request]] = {}
            for request in plain:
                by_length.setdefault(len(request.tokens), []).append(request)
            groups += list(by_length.values())
        return [sorted(g, key=lambda r: r.index) for g in groups]

    def _decode_in_place(self, batch, active: list[_Request], sampling, eos_token_id) -> _InPlaceBatch:
        """One decode step for ``active`` writing each new key and value into the batch's buffers
        (no copy of the cache per step); the buffers are made when the members change."""
        if not isinstance(batch, _InPlaceBatch) or batch.members != active:
            if batch is not None:
                batch.release()
            batch = _InPlaceBatch.of(active, self.layout.seq_axis, self._in_place[2], self._dtype)
        logits = self._step_in_place(batch, np.asarray([[r.pending] for r in active], np.int64))
        self._advance(batch, logits, sampling, eos_token_id)
        return batch

    def _advance(self, batch, logits: np.ndarray, sampling, eos_token_id) -> None:
        """After a decode step: each member's pending token is cached, its next one chosen; a
        member that is done takes its own keys and values out of the batch."""
        for row, request in enumerate(batch.members):
            request.tokens.append(request.pending)
            self._take(request, logits[row], sampling, eos_token_id)
            if request.done:
                request.kv = batch.rows(row)

    def _step_in_place(self, batch: _InPlaceBatch, tokens: np.ndarray) -> np.ndarray:
        """The last position's logits of one new token per member; its keys and values appended
        to the buffers in place."""
        executable, layout, _ = self._in_place
        cached = np.asarray(batch.lengths)
        longest = int(cached.max())
        mask = np.zeros((len(tokens), longest + 1), np.int64)  # the rest of the graph's left-padded view
        for row, length in enumerate(cached):
            mask[row, longest - int(length):] = 1
        feeds = dict(zip(self._inputs, self._feeds(tokens, mask, [(None, None)] * len(self.layout.past))))
        feeds = {name: x for name, x in feeds.items() if name in executable.input_names}
        for (key, value), (k, v) in zip(layout.past, batch.kv):
            feeds[key], feeds[value] = k, v
        feeds[layout.seqlens_input] = cached.astype(np.int32)  # per row: positions after this step - 1
        feeds[layout.total_length_input] = np.asarray(longest + 1, np.int32)
        shared = {out: name for pair_out, pair_in in zip(layout.present, layout.past) for out, name in zip(pair_out, pair_in)}
        logits = executable.run_in_place(feeds, shared)[layout.logits][:, -1]
        batch.lengths = [n + 1 for n in batch.lengths]
        return logits

    def _decode(self, batch: _Batch | None, active: list[_Request], sampling, eos_token_id) -> _Batch:
        """One decode step for ``active``; the batch's keys and values are reused as they are while
        its members stay (no copy of the cache per step), rebuilt (left-padded) when they change.
        A shared prefix is read from the one copy every member uses."""
        if self._in_place is not None and active[0].prefix is None:
            return self._decode_in_place(batch, active, sampling, eos_token_id)
        if not isinstance(batch, _Batch) or batch.members != active:
            if batch is not None:
                batch.release()
            batch = _Batch.of(active, self.layout.seq_axis, self._dtype)
        prefix = active[0].prefix
        shared = len(prefix.tokens) if prefix is not None else 0
        mask = np.zeros((len(active), shared + batch.width + 1), np.int64)
        mask[:, :shared] = 1
        for row, pad in enumerate(batch.pads):
            mask[row, shared + pad:] = 1
        tokens = np.asarray([[r.pending] for r in active], np.int64)
        logits, batch.kv = self._run_step(tokens, mask, batch.kv, prefix.kv if prefix is not None else None)
        if prefix is not None:
            self._cache.stats.shared_prefix_steps += 1
        batch.width += 1
        self._advance(batch, logits, sampling, eos_token_id)
        return batch


def _cut(x: np.ndarray, axis: int, start: int, stop: int | None = None) -> np.ndarray:
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return x[tuple(index)]


@dataclasses.dataclass
class _Batch:
    """The decode batch: its members and their own keys and values (after their shared prefix, if
    any) stacked, [batch, ..., width, ...] per layer, member ``i``'s the last ``width - pads[i]``."""

    members: list[_Request]
    kv: list[tuple[np.ndarray, np.ndarray]]
    pads: list[int]
    width: int
    axes: list[int]

    @classmethod
    def of(cls, members: list[_Request], axes: list[int], dtype) -> _Batch:
        lengths = [len(r.tokens) - r.own_start for r in members]
        width = max(lengths)
        kv = []
        for layer, axis in enumerate(axes):
            pair = []
            for which in (0, 1):
                parts = [r.kv[layer][which] for r in members]
                if len(parts) == 1:
                    pair.append(parts[0])
                    continue
                shape = list(parts[0].shape)
                shape[0], shape[axis] = len(parts), width
                stacked = np.zeros(shape, dtype)
                for row, part in enumerate(parts):
                    index = [row] + [slice(None)] * (len(shape) - 1)
                    index[axis] = slice(width - part.shape[axis], width)
                    stacked[tuple(index)] = part[0]
                pair.append(stacked)
            kv.append(tuple(pair))
        for request in members:
            request.kv = None  # the batch holds them now
        return cls(list(members), kv, [width - n for n in lengths], width, list(axes))

    def rows(self, row: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Member ``row``'s own keys and values ([1, ..., its own length, ...] views)."""
        own = []
        for (k, v), axis in zip(self.kv, self.axes):
            index = [slice(row, row + 1)] + [slice(None)] * (k.ndim - 1)
            index[axis] = slice(self.pads[row], self.width)
            own.append((k[tuple(index)], v[tuple(index)]))
        return own

    def release(self) -> None:
        """Hand each continuing member its own keys and values before the batch is rebuilt."""
        for row, request in enumerate(self.members):
            if not request.done:
                request.kv = self.rows(row)


@dataclasses.dataclass
class _InPlaceBatch:
    """The decode batch's keys and values in preallocated buffers [batch, kv_heads, capacity, size]
    per layer, member ``i``'s at positions [0, lengths[i]) (right-padded): each step appends in
    place. ``capacity`` holds every member's remaining new tokens."""

    members: list[_Request]
    kv: list[tuple[np.ndarray, np.ndarray]]
    lengths: list[int]
    axes: list[int]
    """The step graph's position axis per layer (its keys' layout: 1 = [1, len, heads * size])."""

    @classmethod
    def of(cls, members: list[_Request], axes: list[int], kv_heads: list[int], dtype) -> _InPlaceBatch:
        lengths = [len(r.tokens) for r in members]
        capacity = max(len(r.tokens) + r.max_new - len(r.new) for r in members)
        kv = []
        for layer, (axis, heads) in enumerate(zip(axes, kv_heads)):
            pair = []
            for which in (0, 1):
                parts = [_heads_layout(r.kv[layer][which], axis, heads) for r in members]
                buffer = np.zeros((len(members), heads, capacity, parts[0].shape[-1]), dtype)
                for row, part in enumerate(parts):
                    buffer[row, :, :part.shape[2]] = part[0]
                pair.append(buffer)
            kv.append(tuple(pair))
        for request in members:
            request.kv = None  # the batch holds them now
        return cls(list(members), kv, lengths, list(axes))

    def rows(self, row: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Member ``row``'s keys and values in the step graph's layout (copies: the buffers go)."""
        length = self.lengths[row]
        return [tuple(_step_layout(x[row:row + 1, :, :length], axis) for x in pair)
                for pair, axis in zip(self.kv, self.axes)]

    def release(self) -> None:
        for row, request in enumerate(self.members):
            if not request.done:
                request.kv = self.rows(row)


def _heads_layout(x: np.ndarray, axis: int, heads: int) -> np.ndarray:
    """[1, len, heads * size] (axis 1) or [1, heads, len, size] -> [1, heads, len, size]."""
    if axis == 1:
        return x.reshape(x.shape[0], x.shape[1], heads, x.shape[2] // heads).transpose(0, 2, 1, 3)
    return x


def _step_layout(x: np.ndarray, axis: int) -> np.ndarray:
    if axis == 1:
        return np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1))
    return np.ascontiguousarray(x)


def _choose(logits: np.ndarray, rng, do_sample: bool, temperature: float, top_k: int, top_p: float) -> int:
    logits = logits.astype(np.float64)
    if not do_sample:
        return int(np.argmax(logits))
    logits = logits / temperature
    if top_k and top_k < logits.size:
        threshold = np.sort(logits)[-top_k]
        logits = np.where(logits < threshold, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = cumulative - probs[order] < top_p  # the smallest set whose mass reaches top_p
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))
