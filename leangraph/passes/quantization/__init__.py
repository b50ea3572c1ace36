"""Lossy passes that lower precision: per-layer int8 under an accuracy budget."""
