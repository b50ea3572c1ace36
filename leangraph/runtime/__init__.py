"""The runtime: compiled models, their artifacts and caches."""

from leangraph.runtime.compiled import CompiledModel, InputSpec, to_numpy

__all__ = ["CompiledModel", "InputSpec", "to_numpy"]
