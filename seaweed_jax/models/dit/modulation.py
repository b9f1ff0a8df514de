"""AdaSingle timestep modulation (PixArt-alpha's adaLN-single, used by Seaweed-7B).

Instead of one adaLN MLP per block (adaLN-Zero costs ~6*D^2 params per block, ~2.5B at 7B
scale), ONE shared MLP maps the timestep embedding to a modulation vector `t0` (B, 6, D) =
(shift, scale, gate) for attention and FFN. Each block adds its own learned offsets per
stream, (6, D), so layers and the two streams still modulate differently at the cost of
6*D params each.

Both the shared projection and the offsets start at zero (adaLN-Zero behaviour): every
block's gates are 0 at init, so the network starts as the identity on its residual streams.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from seaweed_jax.models.dit.layers import Dtype, Linear, sinusoidal_embedding

NUM_BLOCK_MODULATIONS = 6  # shift, scale, gate for attention; shift, scale, gate for the FFN


class ScalarEmbedder(nn.Module):
    """Scalar (B,) -> (B, D) through sinusoidal features and a 2-layer SiLU MLP.

    Used for the diffusion time (t in [0, 1] scaled by `input_scale`) and, optionally, the
    CFG scale. Its hidden width is named "mlp" so the D x D second layer has distinct names.
    """
    hidden_size: int
    freq_dim: int = 256
    input_scale: float = 1000.0
    zero_init_out: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, s):
        feats = sinusoidal_embedding(s * self.input_scale, self.freq_dim)
        # The input axis is named "embed" so FSDP shards this kernel too (MaxText's rule: every
        # weight has an fsdp-sharded axis), instead of replicating it on every device.
        h = Linear((self.hidden_size,), ("embed",), ("mlp",), dtype=self.dtype, name="fc1")(feats)
        h = nn.silu(h)
        return Linear((self.hidden_size,), ("mlp",), ("embed",), zero_init=self.zero_init_out,
                      dtype=self.dtype, name="fc2")(h).astype(jnp.float32)


class AdaSingle(nn.Module):
    """The shared projection: t_emb (B, D) -> t0 (B, 6, D), zero-initialized."""
    hidden_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t_emb):
        # Input dim named "mlp" (the embedder's width) so it differs from the output's "embed".
        return Linear((NUM_BLOCK_MODULATIONS, self.hidden_size), ("mlp",), ("modulation", "embed"),
                      zero_init=True, dtype=self.dtype, name="proj")(nn.silu(t_emb)).astype(jnp.float32)


class ModulationOffsets(nn.Module):
    """A block's per-stream learned offsets added to the shared t0 (B, 6, D), or per token
    (B, N, 6, D) for packed sequences: returns (B, n, D) / (B, N, n, D) float32."""
    num: int = NUM_BLOCK_MODULATIONS

    @nn.compact
    def __call__(self, t0):
        offsets = self.param("offsets", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                     ("modulation", "embed")),
                             (self.num, t0.shape[-1]), jnp.float32)
        return t0[..., :self.num, :] + offsets
