"""Named remat policies built from `jax.checkpoint_policies` and `checkpoint_name` tags.

Modules tag tensors with `seaweed_jax.parallel.remat.checkpoint_name(x, name)` using the names in
`CHECKPOINT_NAMES`; configs choose a policy by name (`config.model.remat`).
"""
from __future__ import annotations

import jax
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name  # noqa: F401  (re-exported: jax.ad_checkpoint is not an attribute in jax 0.10)

CHECKPOINT_NAMES = ("block_in", "qkv", "attn_out", "mlp_in", "mlp_out", "conv_out")
POLICY_NAMES = ("none", "full", "minimal", "save_dots", "save_qkv_attn", "offload_block_in",
                "offload_qkv_attn")

_cp = jax.checkpoint_policies


def get_policy(name: str):
    """Returns a policy for `nn.remat(..., policy=...)`, or None for 'none'/'full'."""
    if name in ("none", "full"):
        return None  # 'none' = no remat; 'full' = remat with nothing saved (caller decides)
    if name == "minimal":
        return _cp.save_only_these_names("block_in")
    if name == "save_dots":
        return _cp.dots_with_no_batch_dims_saveable
    if name == "save_qkv_attn":
        return _cp.save_only_these_names("qkv", "attn_out")
    if name == "offload_block_in":
        return _cp.save_and_offload_only_these_names(
            names_which_can_be_saved=[], names_which_can_be_offloaded=["block_in"],
            offload_src="device", offload_dst="pinned_host")
    if name == "offload_qkv_attn":
        return _cp.save_and_offload_only_these_names(
            names_which_can_be_saved=[], names_which_can_be_offloaded=["qkv", "attn_out"],
            offload_src="device", offload_dst="pinned_host")
    raise ValueError(f"unknown remat policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")


def maybe_remat(module_cls, name: str, **kw):
    """Wrap a Linen module class in nn.remat according to the named policy."""
    if name == "none":
        return module_cls
    return nn.remat(module_cls, policy=get_policy(name), **kw)
