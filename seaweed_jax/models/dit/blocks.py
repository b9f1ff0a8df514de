"""The hybrid-stream DiT block.

Dual-stream (MMDiT) part: video and text each have their own LayerNorms (parameter-free,
modulated by AdaSingle), fused q/k/v projections with QK RMS-norm, output projections and
SwiGLU FFNs; attention is joint over [video; text].

FFN sharing (`shared_ffn=True`, the deeper layers): a SwiGLU has three equal matrices, gate
and up (D x F each) and down (F x D). Shared layers use ONE gate and ONE up projection for
both streams and keep a separate down projection per stream, so the streams share two of
their three FFN matrices (two-thirds of the FFN parameters): a shared layer's FFN costs
4*D*F params instead of 6*D*F. Keeping `down` separate lets each stream still write its own
update into its residual stream; attention projections stay per stream.

`text_output=False` (the last block): the text stream only supplies keys and values (nothing
reads its output afterwards), so its output projection and FFN are skipped and not created.

Checkpoint names (for remat policies): block_in = each stream's block input; qkv = q, k, v
after norm + RoPE; attn_out = attention output before the output projection; mlp_in = FFN
input (after modulation); mlp_out = FFN output (after the down projection).
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from seaweed_jax import kernels
from seaweed_jax.models.dit.attention import StreamQKV, joint_attention
from seaweed_jax.models.dit.layers import Dtype, Linear, layer_norm, modulate
from seaweed_jax.models.dit.modulation import NUM_BLOCK_MODULATIONS, ModulationOffsets
from seaweed_jax.parallel.remat import checkpoint_name

TOKEN_NAMES = ("batch", "length", "embed")


class GateUp(nn.Module):
    """SwiGLU input half: silu(x W_gate) * (x W_up), with the two D x F matrices fused."""
    mlp_hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        gu = Linear((2, self.mlp_hidden), ("embed",), (None, "mlp"), dtype=self.dtype, name="gate_up")(x)
        h = nn.silu(gu[..., 0, :]) * gu[..., 1, :]
        return nn.with_logical_constraint(h, ("batch", "length", "mlp"))


def _down(hidden_size, dtype, name):
    return Linear((hidden_size,), ("mlp",), ("embed",), dtype=dtype, name=name)


def _gate(mod, i):
    """Gate i of a stream's modulation as (B, 1, D) (per example) or (B, N, D) (per token)."""
    gate = mod[..., i, :]
    return gate[:, None] if gate.ndim == 2 else gate


class HybridStreamBlock(nn.Module):
    hidden_size: int
    num_heads: int
    head_dim: int
    mlp_hidden: int
    shared_ffn: bool = False
    text_output: bool = True
    qk_norm: bool = True
    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    attention_backend: str = "xla"
    attention_options: kernels.AttentionOptions | None = None

    @nn.compact
    def __call__(self, x_v, x_t, t0, text_valid, rope_cos, rope_sin, mask):
        """x_v (B, Nv, D), x_t (B, Nt, D) float32 residual streams; t0 (B, 6, D) AdaSingle vector
        (packed sequences: a pair (video, text) of per-token (B, N, 6, D));
        text_valid (B, Nt) bool; rope tables (Nv+Nt, Dh/2); mask: a kernels.masks spec."""
        d = self.hidden_size
        x_v = checkpoint_name(nn.with_logical_constraint(x_v, TOKEN_NAMES), "block_in")
        x_t = checkpoint_name(nn.with_logical_constraint(x_t, TOKEN_NAMES), "block_in")
        t0_v, t0_t = t0 if isinstance(t0, tuple) else (t0, t0)  # packed: per token, per stream
        mod_v = ModulationOffsets(NUM_BLOCK_MODULATIONS, name="video_modulation")(t0_v)
        mod_t = ModulationOffsets(NUM_BLOCK_MODULATIONS if self.text_output else 2,
                                  name="text_modulation")(t0_t)

        # Attention: per-stream projections, joint softmax.
        qkv_kw = dict(num_heads=self.num_heads, head_dim=self.head_dim, qk_norm=self.qk_norm,
                      eps=self.eps, dtype=self.dtype)
        h_v = modulate(layer_norm(x_v, self.eps), mod_v[..., 0, :], mod_v[..., 1, :]).astype(self.dtype)
        h_t = modulate(layer_norm(x_t, self.eps), mod_t[..., 0, :], mod_t[..., 1, :]).astype(self.dtype)
        o_v, o_t = joint_attention(StreamQKV(name="video_attn", **qkv_kw)(h_v),
                                   StreamQKV(name="text_attn", **qkv_kw)(h_t),
                                   rope_cos, rope_sin, mask, backend=self.attention_backend,
                                   options=self.attention_options)
        out_kw = dict(features=(d,), in_names=("heads", "head_dim"), out_names=("embed",), dtype=self.dtype)
        x_v = x_v + _gate(mod_v, 2) * Linear(name="video_attn_out", **out_kw)(o_v)

        # FFN: per stream, or gate/up shared with per-stream down projections.
        h_v = checkpoint_name(modulate(layer_norm(x_v, self.eps), mod_v[..., 3, :], mod_v[..., 4, :]).astype(self.dtype),
                              "mlp_in")
        if self.shared_ffn:
            gate_up_v = gate_up_t = GateUp(self.mlp_hidden, self.dtype, name="shared_gate_up")
        else:
            gate_up_v = GateUp(self.mlp_hidden, self.dtype, name="video_gate_up")
            gate_up_t = None if not self.text_output else GateUp(self.mlp_hidden, self.dtype, name="text_gate_up")
        f_v = checkpoint_name(_down(d, self.dtype, "video_down")(gate_up_v(h_v)), "mlp_out")
        x_v = nn.with_logical_constraint(x_v + _gate(mod_v, 5) * f_v, TOKEN_NAMES)

        if self.text_output:
            x_t = x_t + _gate(mod_t, 2) * Linear(name="text_attn_out", **out_kw)(o_t)
            h_t = checkpoint_name(modulate(layer_norm(x_t, self.eps), mod_t[..., 3, :], mod_t[..., 4, :]).astype(self.dtype),
                                  "mlp_in")
            f_t = checkpoint_name(_down(d, self.dtype, "text_down")(gate_up_t(h_t)), "mlp_out")
            x_t = x_t + _gate(mod_t, 5) * f_t
            # Padded text tokens are ignored as queries: keep their stream at zero.
            x_t = nn.with_logical_constraint(jnp.where(text_valid[..., None], x_t, 0.0), TOKEN_NAMES)
        return x_v, x_t
