"""Hybrid-stream DiT (Seaweed-7B style): MM-RoPE, joint attention, AdaSingle, hybrid blocks."""
from seaweed_jax.models.dit.dit import (DiT, Packing, abstract_params, count_params, default_config, example_inputs,
                                        forward_flops, patchify, per_token, tiny_config, unpatchify, validate_config, validate_inputs)

__all__ = ["DiT", "Packing", "abstract_params", "count_params", "default_config", "example_inputs", "forward_flops", "patchify", "per_token",
           "tiny_config", "unpatchify", "validate_config", "validate_inputs"]
