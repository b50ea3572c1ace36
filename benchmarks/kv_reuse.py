"""KV reuse: leangraph's text generation (KV cache, prefix cache, shared-prefix attention,
continuous batching) against HF generate, in one process, interleaved rounds, medians.

Workloads (token ids from a fixed seed; the model has random weights from a fixed seed):
  shared     16 greedy requests: a shared prefix (1024 tokens by default) + 16 unique tokens each,
             32 new tokens each
  unrelated  16 prompts of 64-512 tokens with nothing shared, 32 new tokens each
  multiturn  8 conversations x 4 turns: each turn appends 64 tokens to its conversation (the model's
             answer of the previous turn included), 16 new tokens per turn

Runners: leangraph (optimize(task="text-generation"), backend onnxruntime); HF generate one
request at a time; HF generate on the batch (left-padded); HF's prompt-reuse recipe (the prefix
computed once, its cache deep-copied per request; shared workload only); onnxruntime-genai
(its model builder's fp32 CPU model; the batch at once where the prompts have one length, else
one at a time; where the builder takes the architecture: Llama yes, GPT-2 no). Every runner's
greedy tokens are compared with HF one-at-a-time's (or, where that did not run, another HF runner's).

    .venv/bin/python benchmarks/kv_reuse.py --model gpt2 --workloads shared,unrelated --rounds 2 \\
        --markdown docs/benchmarks/kv_reuse.md --plot docs/benchmarks/kv_reuse.png
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common import PeakMemory  # noqa: E402  (benchmarks/ run as scripts)

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


def build_model(name: str) -> torch.nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if name == "gpt2":  # GPT-2-small shape
        cfg = transformers.GPT2Config(n_embd=768, n_layer=12, n_head=12, n_positions=2048, vocab_size=50257)
        return transformers.GPT2LMHeadModel(cfg).eval()
    if name == "llama":  # a Llama-shaped config of similar size: RoPE, grouped KV heads
        cfg = transformers.LlamaConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                       num_key_value_heads=4, intermediate_size=2048, vocab_size=32000,
                                       max_position_embeddings=2048)
        return transformers.LlamaForCausalLM(cfg).eval()
    raise SystemExit(f"unknown --model {name}")


def workload(name: str, vocab: int, prefix: int, rng: np.random.Generator):
    """(prompts as turns: list of rounds, each a list of prompts; new tokens per request)."""
    if name == "shared":
        shared = rng.integers(0, vocab, prefix).tolist()
        return [[shared + rng.integers(0, vocab, 16).tolist() for _ in range(16)]], 32
    if name == "unrelated":
        return [[rng.integers(0, vocab, int(n)).tolist() for n in rng.integers(64, 513, 16)]], 32
    if name == "multiturn":
        return "multiturn", 16
    raise SystemExit(f"unknown workload {name}")


def hf_one(lm, prompts, new):
    out = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            tokens = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                                 pad_token_id=0)
        out.append(tokens[0, len(prompt):].tolist())
    return out


def hf_batch(lm, prompts, new):
    longest = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):  # left padding, as HF documents for decoders
        ids[row, longest - len(prompt):] = torch.tensor(prompt)
        mask[row, longest - len(prompt):] = 1
    with torch.no_grad():
        tokens = lm.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0)
    return [tokens[row, longest:].tolist() for row in range(len(prompts))]


def hf_prompt_cache(lm, prompts, new, prefix_length):
    """HF's documented recipe: the prefix's cache computed once, deep-copied for each request."""
    from transformers import DynamicCache

    prefix = torch.tensor([prompts[0][:prefix_length]])
    with torch.no_grad():
        cache = lm(prefix, past_key_values=DynamicCache(), use_cache=True).past_key_values
    out = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            tokens = lm.generate(ids, attention_mask=torch.ones_like(ids), past_key_values=copy.deepcopy(cache),
                                 max_new_tokens=new, do_sample=False, pad_token_id=0)
        out.append(tokens[0, len(prompt):].tolist())
    return out


def build_ort_genai(lm, folder: str):
    """onnxruntime-genai's model builder (fp32, CPU) on the HF model: (og.Model, None), or (None,
    why not). The builder reads a tokenizer from the model folder; a word-level one over the
    vocabulary is saved beside the weights (token ids go in and out, its text is never used)."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None, "onnxruntime-genai is not installed (pip install --no-deps onnxruntime-genai==0.18.0)"
    import subprocess
    import sys

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    source, out = os.path.join(folder, "hf"), os.path.join(folder, "genai")
    lm.save_pretrained(source)
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(lm.config.vocab_size)}, unk_token="t0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0").save_pretrained(source)
    done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", source, "-m", source,
                           "-o", out, "-p", "fp32", "-e", "cpu", "-c", os.path.join(folder, "cache")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        last = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:]
        return None, f"its model builder does not take {lm.config.architectures[0]}: {last[0][:200] if last else ''}"
    return og.Model(out), None


def ort_genai(model, prompts, new, batched: bool):
    """onnxruntime-genai's greedy search (its GroupQueryAttention, shared past/present buffers);
    batched when the prompts have one length (it has no left padding for prompts)."""
    import onnxruntime_genai as og

    groups = [prompts] if batched and len({len(p) for p in prompts}) == 1 else [[p] for p in prompts]
    out = []
    for group in groups:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(group[0]) + new, do_sample=False, batch_size=len(group))
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray(group, np.int32))
        while not generator.is_done():
            generator.generate_next_token()
        out += [[int(t) for t in generator.get_sequence(row)][len(group[0]):] for row in range(len(group))]
    return out


def multiturn_rounds(vocab: int, rng: np.random.Generator, conversations: int = 8, turns: int = 4, append: int = 64):
    """Per turn, each conversation's new user tokens (the answers join between turns)."""
    return [[rng.integers(0, vocab, append).tolist() for _ in range(conversations)] for _ in range(turns)]


def run_multiturn(generate, rounds, new):
    """Each turn: every conversation so far + its new tokens; the answers are appended."""
    history = [[] for _ in rounds[0]]
    answers = []
    for turn in rounds:
        prompts = [h + t for h, t in zip(history, turn)]
        out = generate(prompts, new)
        history = [p + o for p, o in zip(prompts, out)]
        answers.append(out)
    return answers


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2", choices=["gpt2", "llama"])
    parser.add_argument("--workloads", default="shared,unrelated,multiturn")
    parser.add_argument("--prefix", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runners", default="leangraph,hf_one,hf_batch,hf_prompt_cache,ort_genai")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--plot", help="write a plot of tokens/s per runner and workload here")
    args = parser.parse_args()

    import leangraph

    lm = build_model(args.model)
    start = time.perf_counter()
    gen = leangraph.optimize(lm, task="text-generation", backend="onnxruntime")
    build_seconds = time.perf_counter() - start
    print(f"leangraph generator built in {build_seconds:.0f} s", flush=True)
    vocab = lm.config.vocab_size
    genai, genai_missing = None, None
    references: dict[str, str | None] = {}
    if "ort_genai" in args.runners.split(","):
        import tempfile

        genai_folder = tempfile.mkdtemp(prefix="kv_reuse_genai_")
        genai, genai_missing = build_ort_genai(lm, genai_folder)
        print(f"onnxruntime-genai: {'built' if genai is not None else genai_missing}", flush=True)
    rows = []
    for name in args.workloads.split(","):
        rng = np.random.default_rng(0)
        prompts, new = workload(name, vocab, args.prefix, rng)
        if prompts == "multiturn":
            rounds = multiturn_rounds(vocab, rng)
            runners = {
                "leangraph": lambda: run_multiturn(lambda p, n: gen.generate(p, max_new_tokens=n), rounds, new),
                "hf_one": lambda: run_multiturn(lambda p, n: hf_one(lm, p, n), rounds, new),
            }
            tokens_made = sum(len(turn) for turn in rounds) * new
        else:
            batch = prompts[0]
            runners = {
                "leangraph": lambda: gen.generate(batch, max_new_tokens=new),
                "hf_one": lambda: hf_one(lm, batch, new),
                "hf_batch": lambda: hf_batch(lm, batch, new),
            }
            if name == "shared":
                runners["hf_prompt_cache"] = lambda: hf_prompt_cache(lm, batch, new, args.prefix)
            if genai is not None:
                runners["ort_genai"] = lambda: ort_genai(genai, batch, new, batched=True)
            tokens_made = len(batch) * new
        runners = {k: v for k, v in runners.items() if k in args.runners.split(",")}
        times = {k: [] for k in runners}
        memory, outputs = {}, {}
        for round_ in range(args.rounds):
            for runner, fn in runners.items():
                if runner == "leangraph":  # each round from an empty prefix cache
                    gen._cache.__init__(gen._cache.capacity, gen._cache.axes)
                with PeakMemory() as peak:
                    t = time.perf_counter()
                    outputs[runner] = fn()
                    times[runner].append(time.perf_counter() - t)
                memory[runner] = max(memory.get(runner, 0.0), peak.peak - peak.start)
                print(f"{name} round {round_} {runner}: {times[runner][-1]:.2f} s", flush=True)
        # HF one at a time where it ran, else the first HF runner that did (same greedy search)
        reference_runner = next((r for r in ("hf_one", "hf_prompt_cache", "hf_batch") if r in outputs), None)
        reference = outputs.get(reference_runner)
        references[name] = reference_runner
        fastest_peer = min((statistics.median(t) for r, t in times.items() if r != "leangraph"), default=None)
        for runner, t in times.items():
            seconds = statistics.median(t)
            same = "-" if reference is None else ("yes" if outputs[runner] == reference else "NO")
            rows.append((name, runner, seconds, tokens_made / seconds, fastest_peer / seconds if fastest_peer else None,
                         memory[runner], same))
        if "leangraph" in times:
            print(f"{name}: leangraph cache stats {gen.cache_stats}", flush=True)
    header = "| workload | runner | seconds | tokens/s | vs fastest peer | peak memory (MiB) | greedy = HF |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for name, runner, seconds, rate, ratio, mib, same in rows:
        lines.append(f"| {name} | {runner} | {seconds:.2f} | {rate:.1f} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}x'} | {mib:.0f} | {same} |")
    table = "\n".join(lines)
    compared = ", ".join(f"{w}: {r}" for w, r in references.items() if r)
    if compared:
        table += f"\n\nGreedy tokens compared with ({compared})."
    if genai_missing:
        table += f"\n\nonnxruntime-genai is not a peer here: {genai_missing}."
    print(table)
    if args.markdown:
        import platform

        note = (f"Model: {args.model} shape, random weights (seed 0); {torch.get_num_threads()} threads; "
                f"{args.rounds} interleaved rounds, medians; prefix {args.prefix} tokens; leangraph built in "
                f"{build_seconds:.0f} s; machine: {platform.processor() or platform.machine()}.")
        Path(args.markdown).write_text(f"# KV reuse ({args.model})\n\n{note}\n\n{table}\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        workloads = list(dict.fromkeys(r[0] for r in rows))
        runners = list(dict.fromkeys(r[1] for r in rows))
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / len(runners)
        for i, runner in enumerate(runners):
            values = [next((r[3] for r in rows if r[0] == w and r[1] == runner), 0) for w in workloads]
            ax.bar(np.arange(len(workloads)) + i * width, values, width, label=runner)
        ax.set_xticks(np.arange(len(workloads)) + width * (len(runners) - 1) / 2, workloads)
        ax.set_ylabel("tokens/s")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
