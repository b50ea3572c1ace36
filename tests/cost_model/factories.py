"""Small zoo models as `leangraph tune` MODEL factories (package.module:attribute)."""

from __future__ import annotations

from tests.zoo import ZOO


def _factory(name: str, shape=None):
    entry = ZOO[name]
    return entry.build(), entry.inputs(*(shape or entry.shapes[0])), entry.dynamic_shapes


def bert():
    return _factory("bert", (4, 12))


def gpt2():
    return _factory("gpt2", (4, 12))


def llama():
    return _factory("llama", (3, 10))


def vit():
    return _factory("vit")
