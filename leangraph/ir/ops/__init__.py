"""The `leangraph` ops. Importing this package registers every one of them."""

from leangraph.ir.ops import attention, gelu, layer_norm, matmul_bias_act, multi_head_attention, rms_norm  # noqa: F401
