"""Tools that load a trained run and run it: the DiT sampler (`dit_sampler`), VAE file
reconstruction and dataset encoding (`vae`), run evaluation (`evaluate`), the moving_shapes
prompt checks (`checks`) and make demo's report (`demo`). Runs are read with
`seaweed_jax.checkpoint` (params only) and `models.vae.codec.VAECodec.load`."""
