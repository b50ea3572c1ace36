"""The coverage matrix (issue 16, item 4): every architecture x attention implementation x capture
path of tests/coverage/matrix.py, one progress line per cell.

    .venv/bin/python benchmarks/coverage_matrix.py [--only bert,gpt2] [--write] [--markdown docs/coverage.md]

--write records the results in tests/coverage/expected.json (the baseline the test compares with;
with --only, the other cells keep their recorded results); --markdown writes the table and the list
of cells where attention fusion or padding removal did not apply.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.coverage.matrix import (
    ABBREVIATIONS,
    ARCHS,
    CAPTURES,
    CHECK,
    EXACT,
    EXAMPLE,
    cell_id,
    cell_text,
    cells,
    run_cell,
)

EXPECTED = ROOT / "tests" / "coverage" / "expected.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated architectures")
    parser.add_argument(
        "--write", action="store_true", help=f"record the results in {EXPECTED.relative_to(ROOT)}"
    )
    parser.add_argument("--markdown", default="", help="write the markdown table here")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    unknown = only - set(ARCHS)
    if unknown:
        parser.error(f"unknown architectures {sorted(unknown)}; known: {', '.join(ARCHS)}")

    results: dict[str, dict] = json.loads(EXPECTED.read_text())["cells"] if EXPECTED.exists() else {}
    start = time.perf_counter()
    selected = [c for c in cells() if not only or c[0] in only]
    with tempfile.TemporaryDirectory(prefix="coverage-") as workdir:
        for number, cell in enumerate(selected, 1):
            result = run_cell(*cell, workdir=workdir)
            results[cell_id(*cell)] = result
            progress = f"[{number}/{len(selected)}] {cell_id(*cell):32s} {result['seconds']:6.1f}s"
            print(f"{progress}  {cell_text(result)}  {result['error'] or result['skipped']}", flush=True)
    total = time.perf_counter() - start
    print(f"{len(selected)} cells in {total:.0f}s")
    results = {cell_id(*c): results[cell_id(*c)] for c in cells() if cell_id(*c) in results}
    if args.write:
        recorded = {name: {k: v for k, v in r.items() if k != "seconds"} for name, r in results.items()}
        EXPECTED.write_text(
            json.dumps({"cells": recorded}, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        )
        print(f"wrote {EXPECTED.relative_to(ROOT)}")
    text = markdown(results, total if not only else None)
    if args.markdown:
        Path(args.markdown).write_text(text)
        print(f"wrote {args.markdown}")
    else:
        print(text)


INTRO = """# Coverage matrix

Which rewrites of the default pipeline fire on which model, attention implementation and capture
path (issue 16, item 4). Written by `benchmarks/coverage_matrix.py --markdown docs/coverage.md`; the
test `tests/coverage/test_coverage.py` fails when a cell regresses against
`tests/coverage/expected.json` (written by the same script with `--write`).

Models: random-weight transformers configs (hidden 32, 2 layers, 4 heads, vocab 100; Llama, Qwen2
and Mistral with 2 KV heads), `torch.manual_seed(0)`, eval mode. Encoders are mean pooled over the
real tokens (so padded positions are zeroed and padding removal may apply), decoders return the last
hidden state of the prefill step (no KV cache), ViT the last hidden state of 32x32 images. Captured
with (batch, length) = {example}, checked against the eager torch module at {check} (later rows
padded), backend `onnxruntime`, the default pass pipeline. torch {torch}, transformers
{transformers}, onnxruntime {onnxruntime}.

Capture paths: **module**: `leangraph.optimize(module, ...)` (torch.onnx dynamo capture inside);
**torchscript**: `torch.onnx.export(..., dynamo=False, opset_version=17, dynamic_axes=...)`, the
file optimized; **dynamo**: `torch.onnx.export(..., dynamo=True, dynamic_shapes=...)`, the file
optimized; **optimum**: optimum's exporter, where it runs beside this venv (optimum's own export
calls `torch.onnx.export(dynamo=False)`: the torchscript column's path).

Legend: {legend}; PAD0 = padding removal applies with
`remove_padding_pass(padded_outputs='zero')` (decoders: their output, the last hidden state, holds
padded positions, which the default pipeline does not zero); ✓ = within {exact:g} of eager (max abs
difference over all positions shown), ✗ = not.
"""


def _attention_missing(result: dict) -> bool:
    fired = any(name.startswith("fuse_attention") for name in result["fired"])
    return not fired or bool(result["leftover_softmax"])


def markdown(results: dict[str, dict], seconds: float | None) -> str:
    import onnxruntime
    import torch
    import transformers

    legend = ", ".join(f"{tag} = {name}" for name, tag in ABBREVIATIONS.items())
    lines = [
        INTRO.format(
            example=EXAMPLE,
            check=CHECK,
            exact=EXACT,
            legend=legend,
            torch=torch.__version__,
            transformers=transformers.__version__,
            onnxruntime=onnxruntime.__version__,
        ),
        "| model | attention | " + " | ".join(CAPTURES) + " |",
        "|---|---|" + "---|" * len(CAPTURES),
    ]
    for arch in ARCHS.values():
        for attention in arch.attentions:
            row = [results.get(cell_id(arch.name, attention, c)) for c in CAPTURES]
            lines.append(
                f"| {arch.name} | {attention} | "
                + " | ".join(cell_text(r) if r else "(not run)" for r in row)
                + " |"
            )
    lines += ["", "DeBERTa-v2 has no SDPA implementation in transformers (eager only), so it has one row."]
    skipped = sorted({r["skipped"] for r in results.values() if r["skipped"]})
    if skipped:
        lines += ["", "not run: " + "; ".join(s.removeprefix("not run: ") for s in skipped) + "."]
    if seconds is not None:
        lines += [
            "",
            (
                f"The whole matrix took {seconds:.0f} s on this machine "
                f"({os.cpu_count()} CPU cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})."
            ),
        ]

    lines += [
        "",
        "## Where attention fusion or padding removal did not apply",
        "",
        "Each cell (skipped cells left out), with the pass's own note; a leftover Softmax is shown with the",
        "ops it reads (four levels up) and those reading it.",
        "",
    ]
    for name, result in results.items():
        if result["skipped"]:
            continue
        items = []
        if result["error"]:
            items.append(f"error: `{result['error']}`")
        else:
            if _attention_missing(result):
                fired = sum(n for k, n in result["counts"].items() if k.startswith("fuse_attention"))
                items.append(
                    f"attention: fuse_attention fired {fired}x; leftover Softmax: "
                    + ("; ".join(f"`{s}`" for s in result["leftover_softmax"]) or "none")
                )
            if not result["padding_removed"]:
                items.append(f"padding removal: {result['why_not']}")
            zero = result.get("padding_zero")
            if zero:
                items.append(
                    "with padded_outputs='zero': "
                    + (
                        f"applies, max abs difference on the real tokens {zero['max_diff_valid']:.0e}"
                        if zero["applied"]
                        else zero["why_not"]
                    )
                )
            if result["max_diff"] is None or result["max_diff"] > EXACT:
                items.append(f"output differs from eager: max abs difference {result['max_diff']}")
        items += [f"reverted: {r}" for r in result["reverted"]]
        if items:
            lines.append(f"- **{name}**")
            lines += [f"  - {item}" for item in items]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
