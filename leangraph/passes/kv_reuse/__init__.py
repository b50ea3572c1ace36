"""KV reuse: KV-cache introduction (and, to come, shared-prefix attention)."""
