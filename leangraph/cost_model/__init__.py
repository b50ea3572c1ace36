"""Measurements the optimizer chooses by (DESIGN.md: it may import ir and backends, to measure)."""
