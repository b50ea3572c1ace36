"""Shared by the benchmarks: the STS-B dev workload and timing helpers."""

from __future__ import annotations

import csv
import os
import statistics
import threading
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


class PeakMemory:
    """Peak resident memory of this process while a runner runs, sampled every 2 ms (MiB)."""

    def __enter__(self):
        self.peak = self.start = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_description() -> str:
    """The CPU the table was measured on: its int8 speed depends on whether it has VNNI."""
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown model") if Path("/proc/cpuinfo").exists() else "unknown model"
    flags = torch.cpu.get_capabilities()
    isa = "AVX-512" if flags.get("avx512_f") else "AVX2" if flags.get("avx2") else "no AVX2"
    vnni = "with VNNI" if flags.get("avx512_vnni") else "without VNNI"
    return f"{model}, {os.cpu_count()} cores, {isa} {vnni} ({torch.backends.cpu.get_cpu_capability()} kernels in torch)"
