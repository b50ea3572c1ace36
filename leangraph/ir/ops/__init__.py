"""The `leangraph` ops. Importing this package registers every one of them."""

from leangraph.ir.ops import (  # noqa: F401
    attention, bf16_linear, gelu, layer_norm, matmul_bias_act, multi_head_attention, packed_attention, packing,
    quant_linear, rms_norm, shared_prefix_attention, static_quant_linear, token_merging, token_pruning,
)
