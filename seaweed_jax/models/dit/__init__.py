"""Hybrid-stream DiT (Seaweed-7B style): MM-RoPE, joint attention, AdaSingle, hybrid blocks."""
from seaweed_jax.models.dit.dit import (DiT, abstract_params, count_params, default_config, example_inputs,
                                        forward_flops, patchify, tiny_config, unpatchify, validate_config, validate_inputs)

__all__ = ["DiT", "abstract_params", "count_params", "default_config", "example_inputs", "forward_flops", "patchify",
           "tiny_config", "unpatchify", "validate_config", "validate_inputs"]
