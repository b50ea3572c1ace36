"""The learned cost model: gradient-boosted trees (LightGBM) from features.FEATURE_NAMES to the log
of a configuration's seconds per timing pass; ranking candidates is sorting by the prediction.

Saved as JSON holding LightGBM's own text format of the trees (no pickle): ``{"format":
"leangraph-cost-model", "version": 1, "feature_names": [...], "booster": "<LightGBM model text>",
"rows": N, "models": [...]}``. A model whose feature names differ from this leangraph's is refused
(it would read the wrong columns).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from leangraph.cost_model.features import FEATURE_NAMES
from leangraph.errors import CostModelError, OptionError

FORMAT, VERSION = "leangraph-cost-model", 1
PARAMETERS = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 2,
              "min_data_in_bin": 1, "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1,
              "lambda_l2": 1.0, "verbose": -1, "deterministic": True, "num_threads": 1, "seed": 0}
ROUNDS = 300


class CostModel:
    def __init__(self, booster, models: Sequence[str] = (), rows: int = 0):
        self.booster = booster
        self.models = list(models)
        self.rows = rows

    @classmethod
    def train(cls, samples: Sequence[tuple[Mapping[str, float], float]], models: Sequence[str] = ()) -> "CostModel":
        """Fit on (features, seconds) pairs."""
        import lightgbm

        usable = [(f, s) for f, s in samples if s > 0 and math.isfinite(s)]
        if len(usable) < 4:
            raise CostModelError(f"the cost model needs at least 4 measurements to train on, got {len(usable)}",
                                 hint="run `leangraph tune MODEL...` first to measure configurations")
        x = np.array([[f[name] for name in FEATURE_NAMES] for f, _ in usable], dtype=np.float64)
        y = np.log(np.array([s for _, s in usable], dtype=np.float64))
        data = lightgbm.Dataset(x, y, feature_name=list(FEATURE_NAMES), free_raw_data=False)
        booster = lightgbm.train(PARAMETERS, data, num_boost_round=ROUNDS)
        return cls(booster, sorted(set(models)), len(usable))

    def predict(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Predicted seconds of each feature row."""
        if not rows:
            return np.zeros(0)
        x = np.array([[row[name] for name in FEATURE_NAMES] for row in rows], dtype=np.float64)
        return np.exp(self.booster.predict(x))

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "feature_names": list(FEATURE_NAMES),
                "booster": self.booster.model_to_string(), "rows": self.rows, "models": self.models}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()), encoding="utf-8")

    @classmethod
    def from_json(cls, data, where: str = "cost model") -> "CostModel":
        import lightgbm

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CostModelError(f"{where} is not a leangraph cost model", hint="train one with `leangraph tune`")
        if data.get("version") != VERSION or data.get("feature_names") != list(FEATURE_NAMES):
            raise CostModelError(f"{where} was written by another leangraph (format {data.get('version')}, "
                                 f"{len(data.get('feature_names') or [])} features; this one reads {VERSION}, "
                                 f"{len(FEATURE_NAMES)})", hint="train it again with `leangraph tune`")
        try:
            booster = lightgbm.Booster(model_str=data["booster"])
        except (lightgbm.basic.LightGBMError, KeyError, TypeError) as exc:
            raise CostModelError(f"{where}: its trees cannot be read ({exc})",
                                 hint="delete it and train again with `leangraph tune`") from None
        return cls(booster, data.get("models", []), int(data.get("rows", 0)))

    @classmethod
    def load(cls, path: str | Path) -> "CostModel":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise OptionError(f"cost model '{path}' does not exist", hint="pass the JSON `leangraph tune` wrote") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CostModelError(f"cost model '{path}' cannot be read: {exc}",
                                 hint="pass the JSON `leangraph tune` wrote") from None
        return cls.from_json(data, f"cost model '{path}'")


def kendall_tau(predicted: Sequence[float], measured: Sequence[float]) -> float:
    from scipy.stats import kendalltau

    if len(predicted) < 2:
        return float("nan")
    return float(kendalltau(predicted, measured).statistic)


def top_k_score(predicted: Sequence[float], measured: Sequence[float], k: int) -> float:
    """Best measured latency over the best measured latency among the k predicted fastest (<= 1)."""
    order = np.argsort(predicted)[:k]
    return float(min(measured) / min(measured[i] for i in order))
