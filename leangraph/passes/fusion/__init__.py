"""Fusion passes: subgraphs the exporter emits, rewritten into single `leangraph` ops."""
