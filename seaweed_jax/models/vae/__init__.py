"""Causal video VAE: causal convs + Causal Cache, Haar wavelets, blocks, CausalVAE."""
from seaweed_jax.models.vae.autoencoder import (  # noqa: F401
    CausalVAE, abstract_params, check_latent_shape, check_video_shape, compiled_temp_bytes, compression,
    decode, default_model_config, encode, init_params, latent_shape, model_section, param_count,
    validate_model_config)
