"""Model factories for CLI tests (``leangraph inspect tests.models_for_cli:tiny_bert``)."""

from __future__ import annotations


def tiny_bert():
    from tests.zoo import ZOO

    entry = ZOO["bert"]
    return entry.build(), entry.inputs(*entry.shapes[0]), entry.dynamic_shapes


def not_a_pair():
    return 42


def tiny_gpt2_lm():
    from tests.runtime.test_generation import causal_lm

    return causal_lm("gpt2"), None
