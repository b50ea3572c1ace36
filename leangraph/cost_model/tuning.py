"""`leangraph tune` and `leangraph cost-model evaluate`: measure configurations into the store,
train the ranker on them, and judge it on models it was not trained on.

A measured configuration is a store row of kind ``config``: the value is its seconds per timing
pass, the features hold the ranker's input, the model's name and the configuration.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import onnx_ir as ir

from leangraph.cost_model import configurations
from leangraph.cost_model.features import features
from leangraph.cost_model.ranker import CostModel, kendall_tau, top_k_score
from leangraph.cost_model.store import MeasurementStore, inputs_key, structure_key
from leangraph.errors import LeanGraphError

SEARCH_FRACTION = 0.1
"""The part of the candidates the search measures (its top predictions), at least one."""


class Workload(NamedTuple):
    """A captured model and the input sets one timing pass runs."""

    name: str
    model: ir.Model
    input_sets: list[list[np.ndarray]]


class Measured(NamedTuple):
    configuration: configurations.Configuration
    features: dict[str, float]
    seconds: float
    stored: bool


def featurize(workload: Workload, configuration, passed: ir.Model | None = None) -> tuple[ir.Model, dict[str, float]]:
    graph = configurations.rewritten(workload.model, configuration, passed)
    return graph, features(graph, configuration.backend, workload.input_sets)


class Candidate(NamedTuple):
    configuration: configurations.Configuration
    graph: ir.Model
    features: dict[str, float]
    key: str


def distinct_candidates(workload: Workload, backends: Sequence[str] | None = None,
                        progress: Callable[[str], None] | None = None) -> list[Candidate]:
    """The workload's candidate configurations, rewritten and featurized; configurations whose
    rewritten graphs are the same for the same backend (a pass that did not fire here) count once."""
    say = progress or (lambda _: None)
    found, seen = [], set()
    digest = inputs_key(workload.input_sets)
    passed: dict[str, ir.Model] = {}  # the pass sets run once each; precisions and backends differ after them
    for configuration in configurations.candidates(backends):
        say(f"{workload.name}: rewriting for {configuration.describe()}")
        try:
            if configuration.passes not in passed:
                passed[configuration.passes] = configurations.after_passes(workload.model, configuration.passes)
            graph, row = featurize(workload, configuration, passed[configuration.passes])
        except LeanGraphError as exc:  # a configuration this model cannot take is skipped, and said
            say(f"{workload.name}: {configuration.describe()} skipped: {exc.message[:200]}")
            continue
        key = ":".join([structure_key(graph), configuration.backend, digest])
        if key not in seen:
            seen.add(key)
            found.append(Candidate(configuration, graph, row, key))
    return found


def measure_configuration(workload: Workload, candidate: Candidate, store: MeasurementStore) -> Measured:
    """The candidate's seconds, from the store when this machine timed it before."""
    configuration, graph, feature_row, key = candidate
    stored = store.get("config", key)
    if stored is not None:
        return Measured(configuration, feature_row, float(stored), True)
    seconds = configurations.measure(configurations.compiled(graph, configuration), workload.input_sets)
    store.put("config", key, seconds, {"features": feature_row, "model": workload.name,
                                       "configuration": configuration.as_dict()})
    return Measured(configuration, feature_row, seconds, False)


def tune(workloads: Sequence[Workload], store: MeasurementStore, *, budget_seconds: float = math.inf,
         backends: Sequence[str] | None = None, progress: Callable[[str], None] | None = None) -> list[Measured]:
    """Measure every candidate configuration of every workload (until the budget is spent)."""
    say = progress or (lambda _: None)
    deadline = time.monotonic() + budget_seconds
    measured = []
    for workload in workloads:
        for candidate in distinct_candidates(workload, backends, say):
            if time.monotonic() > deadline:
                return measured
            say(f"{workload.name}: timing {candidate.configuration.describe()}")
            measured.append(measure_configuration(workload, candidate, store))
    return measured


def train_from_store(store: MeasurementStore, exclude_models: Sequence[str] = ()) -> CostModel:
    samples, models = [], []
    for row in store.rows("config"):
        info = row["features"] or {}
        if info.get("model") in exclude_models or not isinstance(info.get("features"), dict):
            continue
        samples.append((info["features"], float(row["value"])))
        models.append(info["model"])
    return CostModel.train(samples, models)


def evaluate(workloads: Sequence[Workload], cost_model: CostModel, store: MeasurementStore, *,
             backends: Sequence[str] | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """On each workload: every candidate measured (the truth) and predicted; Kendall tau, the top-1
    and top-5 scores, and what the search (measuring its top SEARCH_FRACTION) would pick."""
    say = progress or (lambda _: None)
    per_model = []
    for workload in workloads:
        rows = []
        for candidate in distinct_candidates(workload, backends, say):
            say(f"{workload.name}: timing {candidate.configuration.describe()}")
            rows.append(measure_configuration(workload, candidate, store))
        predicted = cost_model.predict([row.features for row in rows]).tolist()
        measured = [row.seconds for row in rows]
        searched = max(1, int(SEARCH_FRACTION * len(rows)))
        order = list(np.argsort(predicted))
        picked = min(order[:searched], key=lambda i: measured[i])
        per_model.append({
            "model": workload.name, "candidates": len(rows), "kendall_tau": kendall_tau(predicted, measured),
            "top1_score": top_k_score(predicted, measured, 1), "top5_score": top_k_score(predicted, measured, 5),
            "search_score": min(measured) / measured[picked], "measured_fraction": searched / len(rows),
            "picked": rows[picked].configuration.describe(),
            "best": rows[int(np.argmin(measured))].configuration.describe(),
            "configurations": [{**row.configuration.as_dict(), "predicted_seconds": p, "measured_seconds": m}
                               for row, p, m in zip(rows, predicted, measured)],
        })

    def mean(key):
        return float(np.mean([m[key] for m in per_model])) if per_model else float("nan")

    return {"models": [m["model"] for m in per_model], "kendall_tau": mean("kendall_tau"),
            "top1_score": mean("top1_score"), "top5_score": mean("top5_score"),
            "search_score": mean("search_score"), "measured_fraction": mean("measured_fraction"),
            "trained_on": cost_model.models, "per_model": per_model}
