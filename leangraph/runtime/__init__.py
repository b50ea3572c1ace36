"""The runtime: compiled models, their artifacts and caches."""

from leangraph.runtime.compiled import CompiledModel, InputSpec

__all__ = ["CompiledModel", "InputSpec"]
