"""Token merging and pruning (ToMe, EViT): lossy passes whose knobs, the ratio per layer, the
budgeted search sets."""
