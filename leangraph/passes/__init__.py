"""Graph rewrites and the machinery that runs them."""

from leangraph.passes.report import PassRecord, Report

__all__ = ["PassRecord", "Report"]
