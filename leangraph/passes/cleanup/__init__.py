"""Exact cleanup passes: they remove work without changing what the graph computes."""
