"""Shared by the benchmarks: the STS-B dev workload and timing helpers."""

from __future__ import annotations

import csv
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-dev.csv"


def stsb_pairs(path: Path = STSB) -> list[tuple[float, str, str]]:
    """(score, sentence1, sentence2) of STS-B dev, in file order."""
    if not path.exists():
        raise SystemExit(f"STS-B dev not found at {path} (it lives in ../shared/data/stsb)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                rows.append((float(row[4]), row[5], row[6]))
    return rows


def stsb_batches(tokenizer, batch_size: int = 32, limit: int | None = None):
    """Every sentence of STS-B dev in file order, in batches padded to their longest sentence."""
    sentences = [s for _, a, b in stsb_pairs() for s in (a, b)]
    if limit:
        sentences = sentences[:limit]
    batches = []
    for start in range(0, len(sentences), batch_size):
        encoded = tokenizer(sentences[start : start + batch_size], padding=True, return_tensors="np")
        batches.append((encoded["input_ids"].astype("int64"), encoded["attention_mask"].astype("int64")))
    return batches


def interleaved_medians(runners: dict, batches, rounds: int = 5) -> dict[str, float]:
    """Seconds per pass over all batches, median over ``rounds``, the runners interleaved per round
    so that machine noise hits all of them alike."""
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for batch in batches:
                run(batch)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
