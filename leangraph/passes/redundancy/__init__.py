"""Passes that remove redundant computation: work on padding, recomputation across calls."""
