"""Text encoders behind one interface: texts -> (embeddings (B, L, D), mask (B, L) bool).

`L` is the encoder's fixed `max_len` (shorter texts are padded, longer ones truncated) and
`mask` is True on real tokens. Embeddings at padded positions are exactly zero.

The embedded default is `TextEncoder`, a tiny trainable transformer (token + learned
position embeddings, `num_layers` pre-LN blocks, final LayerNorm) over the fixed word
vocabulary of `tokenizer.WordTokenizer`; it is trained jointly with the DiT. The config's
`tokenizer` names that vocabulary (default `vocabulary.DEFAULT`); a run records it with its
config, so it keeps its vocabulary (and its embedding rows' meaning) after the default moves.

`build_text_encoder(config)` returns a `TextEncoderBundle` (tokenizer + Linen module +
max_len + width) so callers never depend on which encoder it is:

    enc = build_text_encoder(config.model.text)
    params = enc.init(key)
    ids, mask = enc.tokenize(["a red circle moving left on a black background"])  # host
    emb, mask = enc.apply(params, ids, mask)                                       # jittable

Pretrained T5 / UMT5 (planned, not implemented): `config.kind = 't5'` with
`config.path` a local directory in Hugging Face layout (`config.json`,
`model.safetensors`, `spiece.model`). It slots into the same bundle: `tokenize` would run
the sentencepiece model and append </s> (same (ids, mask) contract, padded to max_len);
the module would be a Linen T5 encoder stack (relative-position buckets, RMSNorm, gated-GELU
FFN) whose param tree is filled from the safetensors names, returning the final hidden
states zeroed at padding; `trainable = False`, so the DiT task keeps it out of the
optimizer (and the latent cache may store its embeddings instead of recomputing them).
The DiT only sees `(emb, mask)` with `emb.shape[-1] == bundle.width`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections as mc
from flax import linen as nn

from seaweed_jax.models.text.tokenizer import WordTokenizer
from seaweed_jax.models.text.vocabulary import DEFAULT as DEFAULT_VOCABULARY
from seaweed_jax.parallel.remat import checkpoint_name

Dtype = Any
TOKEN_AXES = ("batch", "length", "embed")


def text_config(**overrides) -> mc.ConfigDict:
    """Defaults for `config.model.text` (the tiny encoder; fits moving_shapes captions,
    which are at most 9 words + <eos>)."""
    c = mc.ConfigDict()
    c.kind = "tiny"          # 'tiny' (trainable, embedded); 't5' is planned (see module doc)
    c.path = ""              # local pretrained dir for kind='t5'
    c.tokenizer = DEFAULT_VOCABULARY   # kind='tiny': a name in vocabulary.VOCABULARIES
    c.max_len = 16
    c.width = 64
    c.num_layers = 2
    c.num_heads = 4
    c.mlp_dim = 256
    c.update(overrides)
    return c


def _param(module: nn.Module, name: str, init, shape, names, dtype):
    return module.param(name, nn.with_logical_partitioning(init, names), shape, dtype)


def _layer_norm(module: nn.Module, x, name: str, eps: float = 1e-6):
    d = x.shape[-1]
    scale = _param(module, f"{name}_scale", nn.initializers.ones_init(), (d,), ("norm",), jnp.float32)
    bias = _param(module, f"{name}_bias", nn.initializers.zeros_init(), (d,), ("norm",), jnp.float32)
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps) * scale + bias).astype(x.dtype)


class TextBlock(nn.Module):
    """Pre-LN transformer block: masked self-attention + GELU MLP."""
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    num_layers_hint: int = 1   # scales the residual-branch output init down with depth

    @nn.compact
    def __call__(self, x, mask):
        d = x.shape[-1]
        if d % self.num_heads:
            raise ValueError(f"text width {d} must be divisible by num_heads={self.num_heads}")
        hd = d // self.num_heads
        init = nn.initializers.normal(stddev=d ** -0.5)
        x = checkpoint_name(x, "block_in")
        h = _layer_norm(self, x, "ln_attn").astype(self.dtype)
        w = {n: _param(self, n, init, (d, self.num_heads, hd), ("embed", "heads", "head_dim"),
                       jnp.float32).astype(self.dtype) for n in ("query", "key", "value")}
        q, k, v = (checkpoint_name(jnp.einsum("bld,dhk->blhk", h, w[n]), "qkv")
                   for n in ("query", "key", "value"))
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32) * hd ** -0.5
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        attn = jnp.einsum("bhqs,bshk->bqhk", probs, v)
        w_out = _param(self, "attn_out", nn.initializers.normal(stddev=(d * self.num_layers_hint) ** -0.5),
                       (self.num_heads, hd, d), ("heads", "head_dim", "embed"), jnp.float32)
        x = x + checkpoint_name(jnp.einsum("blhk,hkd->bld", attn, w_out.astype(self.dtype)), "attn_out")
        x = nn.with_logical_constraint(x, TOKEN_AXES)

        h = _layer_norm(self, x, "ln_mlp").astype(self.dtype)
        w1 = _param(self, "mlp_in", init, (d, self.mlp_dim), ("embed", "mlp"), jnp.float32)
        b1 = _param(self, "mlp_in_bias", nn.initializers.zeros_init(), (self.mlp_dim,), ("mlp",), jnp.float32)
        h = checkpoint_name(jax.nn.gelu(h @ w1.astype(self.dtype) + b1.astype(self.dtype)), "mlp_in")
        w2 = _param(self, "mlp_out",
                    nn.initializers.normal(stddev=(self.mlp_dim * self.num_layers_hint) ** -0.5),
                    (self.mlp_dim, d), ("mlp", "embed"), jnp.float32)
        b2 = _param(self, "mlp_out_bias", nn.initializers.zeros_init(), (d,), ("embed",), jnp.float32)
        x = x + checkpoint_name(h @ w2.astype(self.dtype) + b2.astype(self.dtype), "mlp_out")
        return nn.with_logical_constraint(x, TOKEN_AXES)


class TextEncoder(nn.Module):
    """Tiny trainable text encoder: (ids (B, L) int32, mask (B, L) bool) -> (emb, mask)."""
    vocab_size: int
    max_len: int
    width: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids, mask):
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(f"ids {ids.shape} and mask {mask.shape} must both be (B, L)")
        if ids.shape[1] != self.max_len:
            raise ValueError(f"text length {ids.shape[1]} != max_len={self.max_len}; tokenize with "
                             f"max_len={self.max_len}")
        mask = mask.astype(bool)
        tok = _param(self, "token_embed", nn.initializers.normal(stddev=1.0),
                     (self.vocab_size, self.width), ("vocab", "embed"), jnp.float32)
        pos = _param(self, "pos_embed", nn.initializers.normal(stddev=0.02),
                     (self.max_len, self.width), (None, "embed"), jnp.float32)
        # One-hot matmul, not a gather: with the table sharded over `vocab` (tensor) XLA's
        # partitioned gather gave NaN gradients for a replicated batch-1 lookup (the null
        # caption); the matmul is exact (one 1.0 per row) and partitions cleanly.
        one_hot = jax.nn.one_hot(ids, self.vocab_size, dtype=tok.dtype)
        x = (jnp.einsum("blv,vd->bld", one_hot, tok) + pos[None]).astype(self.dtype)
        x = nn.with_logical_constraint(x, TOKEN_AXES)
        for i in range(self.num_layers):
            x = TextBlock(self.num_heads, self.mlp_dim, self.dtype,
                          num_layers_hint=self.num_layers, name=f"block_{i}")(x, mask)
        x = _layer_norm(self, x, "ln_final").astype(jnp.float32)
        return jnp.where(mask[..., None], x, 0.0), mask


@dataclasses.dataclass(frozen=True)
class TextEncoderBundle:
    """A tokenizer and a Linen encoder with the shared (emb, mask) contract."""
    kind: str
    tokenizer: Any             # .tokenize(texts, max_len) -> (ids, mask); .name
    module: nn.Module          # apply({'params': p}, ids, mask) -> (emb, mask)
    max_len: int
    width: int
    trainable: bool = True

    def tokenize(self, texts: Sequence[str] | str):
        return self.tokenizer.tokenize(texts, self.max_len)

    def init(self, key, unbox: bool = True):
        """Params; `unbox=False` keeps the nn.Partitioned boxes (logical axis names), e.g.
        for `jax.eval_shape` -> `parallel.sharding.logical_to_shardings`."""
        params = self._jit_init(key)["params"]
        return nn.meta.unbox(params) if unbox else params

    @functools.cached_property
    def _jit_init(self):
        ids, mask = self.tokenize([""])
        return jax.jit(lambda key: self.module.init(key, jnp.asarray(ids), jnp.asarray(mask)))

    def apply(self, params, ids, mask):
        """(emb, mask); traceable (use inside jit / grad)."""
        return self.module.apply({"params": params}, ids, mask)

    @functools.cached_property
    def _jit_apply(self):
        return jax.jit(self.apply)

    def encode(self, params, texts: Sequence[str] | str):
        """Host convenience: tokenize + apply."""
        ids, mask = self.tokenize(texts)
        return self._jit_apply(params, jnp.asarray(ids), jnp.asarray(mask))

    def null_embedding(self, params):
        """The empty prompt's (emb (1, L, D), mask (1, L)): the unconditional branch of CFG
        and the replacement used by text dropout."""
        return self.encode(params, [""])

    def describe(self) -> dict:
        """What a workdir records to rebuild this encoder."""
        return dict(kind=self.kind, tokenizer=getattr(self.tokenizer, "name", ""),
                    max_len=self.max_len, width=self.width)


def build_text_encoder(config, dtype: Dtype = jnp.float32) -> TextEncoderBundle:
    """`config` as from `text_config()` (a ConfigDict or a dict)."""
    c = text_config(**dict(config))
    if c.kind == "tiny":
        tok = WordTokenizer(c.tokenizer)
        module = TextEncoder(vocab_size=tok.vocab_size, max_len=c.max_len, width=c.width,
                             num_layers=c.num_layers, num_heads=c.num_heads, mlp_dim=c.mlp_dim,
                             dtype=dtype)
        if c.max_len < 1 or c.width < 1 or c.num_heads < 1 or c.width % c.num_heads:
            raise ValueError(f"text encoder: max_len={c.max_len} and width={c.width} must be >= 1 "
                             f"and width divisible by num_heads={c.num_heads}")
        return TextEncoderBundle("tiny", tok, module, c.max_len, c.width, trainable=True)
    if c.kind in ("t5", "umt5"):
        raise NotImplementedError(
            f"text encoder kind={c.kind!r} (pretrained from a local safetensors dir) is planned but "
            "not implemented yet; use kind='tiny'")
    raise ValueError(f"text encoder kind={c.kind!r}; use 'tiny'")
