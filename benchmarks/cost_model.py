"""The learned cost model judged on models it was not trained on.

Trains on BERT-encoder (mean pooled, so padding removal fires), GPT-2, Llama and ViT configs of some
sizes and lengths, and evaluates on configs of the same families at sizes and lengths the training
did not see (random weights: only speed is ranked). Every candidate configuration of a held-out
model (backend x exact passes x linear-layer precision, cost_model/configurations.py) is measured,
so the table compares the ranking with the truth. Writes docs/benchmarks/cost_model.md.

    .venv/bin/python benchmarks/cost_model.py [--backends onnxruntime torch tvm] [--store PATH]
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

import torch  # noqa: E402
import transformers  # noqa: E402
from common import cpu_description  # noqa: E402

from leangraph.cost_model.store import MeasurementStore  # noqa: E402
from leangraph.cost_model.tuning import Workload, evaluate, train_from_store, tune  # noqa: E402
from leangraph.demo import sentence_encoder  # noqa: E402
from leangraph.frontend import capture  # noqa: E402
from leangraph.runtime import CompiledModel  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
TEXT_DYN = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}


class LastHidden(torch.nn.Module):
    """A decoder called as forward(input_ids, attention_mask), its last hidden state (no cache)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


class LastHiddenImage(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).last_hidden_state


def _text_inputs(batch, seq, padded=True):
    generator = torch.Generator().manual_seed(batch * 100 + seq)
    ids = torch.randint(3, 1000, (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    if padded:
        for row in range(1, batch):
            mask[row, max(2, seq - row * seq // batch):] = 0
    return ids, mask


def build(family: str, hidden: int, layers: int, batch: int, seq: int):
    torch.manual_seed(0)
    heads = max(2, hidden // 64)
    common = dict(vocab_size=1000, num_hidden_layers=layers, num_attention_heads=heads, hidden_size=hidden,
                  intermediate_size=4 * hidden, max_position_embeddings=256)
    if family == "bert":
        module = sentence_encoder(transformers.BertModel(transformers.BertConfig(**common)).eval())
        return module, _text_inputs(batch, seq), TEXT_DYN
    if family == "llama":
        config = transformers.LlamaConfig(**common, num_key_value_heads=max(1, heads // 2))
        return LastHidden(transformers.LlamaModel(config).eval()), _text_inputs(batch, seq, padded=False), TEXT_DYN
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=1000, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=256)
        return LastHidden(transformers.GPT2Model(config).eval()), _text_inputs(batch, seq, padded=False), TEXT_DYN
    if family == "vit":
        config = transformers.ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                        intermediate_size=4 * hidden, image_size=seq, patch_size=16)
        pixels = torch.randn(batch, 3, seq, seq, generator=torch.Generator().manual_seed(batch))
        return LastHiddenImage(transformers.ViTModel(config).eval()), (pixels,), {"pixel_values": {0: "batch"}}
    raise ValueError(family)


TRAIN = [(f, h, l, b, s) for f in ("bert", "gpt2", "llama") for h, l, b, s in ((64, 2, 8, 32), (256, 2, 4, 96))] + \
    [("vit", 64, 2, 4, 64), ("vit", 256, 2, 2, 128)]
HELD_OUT = [("bert", 128, 3, 8, 48), ("gpt2", 128, 3, 4, 64), ("llama", 192, 2, 4, 48), ("vit", 128, 3, 4, 96)]


def workload(spec) -> Workload:
    family, hidden, layers, batch, seq = spec
    module, example, dynamic = build(*spec)
    graph = capture(module, example, dynamic)
    arrays = CompiledModel(graph, None, backend="", report=None).input_values(list(example))
    return Workload(f"{family}-h{hidden}-l{layers}-b{batch}-s{seq}", graph, [arrays])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", nargs="*", default=None, help="default: every installed backend")
    parser.add_argument("--store", help="measurement store (default: a fresh one in a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    store = MeasurementStore(args.store or Path(tempfile.mkdtemp()) / "measurements.sqlite")
    start = time.perf_counter()
    train = [workload(spec) for spec in TRAIN]
    tune(train, store, backends=args.backends, progress=lambda m: print(m, flush=True))
    tuned = time.perf_counter() - start
    model = train_from_store(store)
    held_out = [workload(spec) for spec in HELD_OUT]
    result = evaluate(held_out, model, store, backends=args.backends)
    lines = [
        "# Learned cost model on held-out models", "",
        f"Machine: {cpu_description()}. Written by `benchmarks/cost_model.py` "
        f"(backends: {', '.join(args.backends) if args.backends else 'all installed'}). "
        f"Trained on {model.rows} measured configurations of {len(train)} models ({tuned:.0f} s to measure); "
        "evaluated on the models below, which it did not see (other sizes and lengths of the same families). "
        "Every candidate of each held-out model was measured to give the truth; the search measures its top "
        "10% (at least one).", "",
        "| held-out model | candidates | Kendall tau | top-1 | top-5 | search picks (measuring) | its score | best measured |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in result["per_model"]:
        lines.append(f"| {entry['model']} | {entry['candidates']} | {entry['kendall_tau']:.3f} | {entry['top1_score']:.3f} "
                     f"| {entry['top5_score']:.3f} | {entry['picked']} ({entry['measured_fraction']:.0%}) "
                     f"| {entry['search_score']:.3f} | {entry['best']} |")
    lines += [f"| **mean** | | **{result['kendall_tau']:.3f}** | **{result['top1_score']:.3f}** | "
              f"**{result['top5_score']:.3f}** | ({result['measured_fraction']:.0%}) | **{result['search_score']:.3f}** | |",
              "", "Per held-out model, every configuration (predicted vs measured ms per timing pass):", ""]
    for entry in result["per_model"]:
        lines.append(f"- {entry['model']}: " + "; ".join(
            f"{c['backend']}/{c['passes']}/{c['precision']} {c['predicted_seconds'] * 1e3:.2f} vs "
            f"{c['measured_seconds'] * 1e3:.2f}" for c in entry["configurations"]))
    (DOCS / "cost_model.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
