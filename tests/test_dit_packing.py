"""Packed sequences through the DiT: each sample's output, loss and gradients equal the
sample run alone (its own grid, timestep, text and RoPE positions)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _dit_helpers as H
from seaweed_jax.models.dit import DiT, tiny_config
from seaweed_jax.models.dit.dit import Packing, patchify
from seaweed_jax.models.dit.rope import video_positions

# Three samples of one sequence: an image, a short clip, a wide image; their own text lengths.
GRIDS = [(1, 4, 4), (2, 4, 2), (1, 2, 6)]          # latent (T, H, W); patch (1, 2, 2)
TEXT_LENS = [3, 5, 2]
T_VALUES = [0.15, 0.5, 0.85]
PAD_VIDEO, PAD_TEXT = 3, 2                          # trailing padding (segment 0)


def _config(backend="xla"):
    return tiny_config(num_layers=2, attention_backend=backend, attention_block_sizes=(128, 128))


def _samples(cfg, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for grid, n_text, t in zip(GRIDS, TEXT_LENS, T_VALUES):
        x = jnp.asarray(rng.standard_normal((1, *grid, cfg.latent_channels)), jnp.float32)
        text = jnp.asarray(rng.standard_normal((1, n_text, cfg.text_dim)), jnp.float32)
        out.append((x, jnp.array([t]), text, jnp.ones((1, n_text), bool)))
    return out


def _pack(cfg, samples):
    """One packed sequence (B = 1) of the samples, plus padding at the end of both streams."""
    tokens, v_seg, v_pos, texts, t_seg, t_pos = [], [], [], [], [], []
    for i, (x, _, text, _) in enumerate(samples, start=1):
        tok, grid = patchify(x, tuple(cfg.patch_size))
        tokens.append(tok[0])
        v_seg.append(np.full(tok.shape[1], i))
        v_pos.append(np.asarray(video_positions(grid, 0)))
        texts.append(text[0])
        t_seg.append(np.full(text.shape[1], i))
        t_pos.append(np.arange(text.shape[1]))
    tokens.append(jnp.full((PAD_VIDEO, tokens[0].shape[1]), 9.0))       # garbage padding
    v_seg.append(np.zeros(PAD_VIDEO, int))
    v_pos.append(np.zeros((PAD_VIDEO, 3), int))
    texts.append(jnp.full((PAD_TEXT, cfg.text_dim), -9.0))
    t_seg.append(np.zeros(PAD_TEXT, int))
    t_pos.append(np.zeros(PAD_TEXT, int))
    packing = Packing(video_segment=jnp.asarray(np.concatenate(v_seg))[None],
                      video_positions=jnp.asarray(np.concatenate(v_pos), jnp.int32)[None],
                      text_segment=jnp.asarray(np.concatenate(t_seg))[None],
                      text_positions=jnp.asarray(np.concatenate(t_pos), jnp.int32)[None])
    t = jnp.array([T_VALUES])
    return jnp.concatenate(tokens)[None], t, jnp.concatenate(texts)[None], packing


@pytest.mark.parametrize("backend", ["xla", pytest.param("splash", marks=pytest.mark.slow)])
def test_each_packed_sample_equals_the_sample_alone(backend):
    cfg = _config(backend)
    samples = _samples(cfg)
    params = H.perturbed_init(cfg, samples[0])
    model = DiT(cfg)
    x, t, text, packing = _pack(cfg, samples)
    seg = np.asarray(packing.video_segment[0])

    def alone_loss(p, i):
        xs, ts, texts, masks = samples[i]
        out, _ = patchify(model.apply({"params": p}, xs, ts, texts, masks), tuple(cfg.patch_size))
        return jnp.mean(jnp.sin(out)), out[0]

    def packed_loss(p, i):
        out = model.apply({"params": p}, x, t, text, None, packing=packing)[0]
        rows = jnp.asarray(seg == i + 1)
        return jnp.sum(jnp.where(rows[:, None], jnp.sin(out), 0.0)) / (rows.sum() * out.shape[1]), out

    alone_step = jax.jit(jax.value_and_grad(alone_loss, has_aux=True), static_argnums=1)
    packed_step = jax.jit(jax.value_and_grad(packed_loss, has_aux=True))   # one compile, i traced
    for i in range(len(samples)):
        (loss_a, out_a), grads_a = alone_step(params, i)
        (loss_p, out_p), grads_p = packed_step(params, i)
        assert H.tree_rel_err(out_p[seg == i + 1], out_a) <= 1e-5, i
        np.testing.assert_allclose(float(loss_p), float(loss_a), rtol=1e-5)
        for (path, gp), ga in zip(jax.tree_util.tree_leaves_with_path(grads_p), jax.tree.leaves(grads_a)):
            gp, ga = np.asarray(gp), np.asarray(ga)   # NumPy: no kernel compiled per leaf shape
            scale = float(np.max(np.abs(ga)))
            assert float(np.max(np.abs(gp - ga))) <= 1e-5 * max(scale, 1e-30) or scale == 0 and \
                float(np.max(np.abs(gp))) == 0, (i, jax.tree_util.keystr(path))


def test_packing_with_window_layers_is_refused():
    cfg = tiny_config(num_layers=2, attention="space_full")
    samples = _samples(cfg)
    x, t, text, packing = _pack(cfg, samples)
    with pytest.raises(ValueError, match="packed sequences need model.attention='full'.*turn packing off"):
        jax.eval_shape(DiT(cfg).init, jax.random.key(0), x, t, text, None, packing=packing)
