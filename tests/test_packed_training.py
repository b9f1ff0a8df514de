"""Sequence packing end to end: the layout matches the model's patchify / RoPE, the Grain
transform reads every example exactly once and restores bit-identically (from an Orbax
checkpoint), the task's packed loss equals the samples' unpacked losses and gradients, and
a packed run of images + clips trains through the trainer. Tiny sizes: tests/_dit_helpers.py."""
from __future__ import annotations

import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _dit_helpers as H
from seaweed_jax import checkpoint as ckpt_lib
from seaweed_jax import config_lib
from seaweed_jax.data import packed, packing
from seaweed_jax.diffusion import flow
from seaweed_jax.models.dit import patchify, unpatchify
from seaweed_jax.models.dit.rope import video_positions
from seaweed_jax.parallel import make_mesh
from seaweed_jax.parallel.sharding import unbox
from seaweed_jax.trainer import loop
from seaweed_jax.trainer.dit_task import DiTTask, validate_task_config

IMAGES = "moving_shapes/16x16_f1"


# ----------------------------------------------------------------------------- layout

def test_layout_matches_patchify_and_rope_positions():
    x = np.random.default_rng(0).standard_normal((3, 4, 6, 5)).astype(np.float32)
    tokens, grid = packing.patch_tokens(x, (1, 2, 2))
    ref, ref_grid = patchify(jnp.asarray(x)[None], (1, 2, 2))
    assert grid == ref_grid
    np.testing.assert_array_equal(tokens, np.asarray(ref[0]))
    np.testing.assert_array_equal(packing.grid_positions(grid), np.asarray(video_positions(grid, 0)))


def test_fill_bins_respects_capacity_and_puts_waiting_samples_first():
    cap = packing.Capacity(video_tokens=10, text_tokens=6, samples=3)
    rng = np.random.default_rng(0)
    for _ in range(30):
        items = [packing.Item(i, int(rng.integers(1, 11)), int(rng.integers(1, 4)), int(rng.integers(0, 2)))
                 for i in range(int(rng.integers(1, 20)))]
        bins, left = packing.fill_bins(items, 3, cap)
        placed = [it.key for b in bins for it in b]
        assert sorted(placed + [it.key for it in left]) == list(range(len(items)))   # each once
        for b in bins:
            assert sum(it.video for it in b) <= 10 and sum(it.text for it in b) <= 6 and len(b) <= 3
        assert all(it.age == items[it.key].age + 1 for it in left)
        # a waiting (older) sample is never left out while a newer one of the same lengths is placed
        for it in left:
            assert not any(p.age < items[it.key].age and (p.video, p.text) == (it.video, it.text)
                           for b in bins for p in b)


class _Examples:
    """Random-access examples of four latent shapes and random caption lengths."""
    shapes = [(1, 4, 4), (2, 4, 4), (3, 4, 4), (1, 8, 8)]

    def __len__(self):
        return 2000

    def __getitem__(self, i):
        r = np.random.default_rng(i)
        mask = np.arange(12) < int(r.integers(1, 9))
        return {"latents": r.standard_normal((*self.shapes[i % 4], 4)).astype(np.float32),
                "text_ids": np.where(mask, r.integers(1, 50, 12), 0).astype(np.int32), "text_mask": mask,
                "source": np.int32(i % 4), "index": np.int32(i)}


SPEC = packed.PackSpec(num_sequences=2, capacity=packing.Capacity(64, 40, 8), patch=(1, 2, 2),
                       min_text_tokens=2)


def test_every_example_is_packed_once_within_two_steps_and_rebuilds_exactly():
    examples = _Examples()
    it = iter(packed.PackedDataset(grain.MapDataset.source(examples), SPEC))
    seen, read_at = [], {}
    for step in range(40):
        before = it.get_state()["next"]
        batch = next(it)
        for i in range(before, it.get_state()["next"]):
            read_at[i] = step
        for row in range(2):
            n = int((batch["sample_frames"][row] > 0).sum())
            v = t = 0
            for j in range(n):   # each sample's tokens, positions and text are its own
                i = int(batch["index"][row, j])
                ex = examples[i]
                tokens, grid = packing.patch_tokens(ex["latents"], (1, 2, 2))
                sl = slice(v, v + len(tokens))
                np.testing.assert_array_equal(batch["video_tokens"][row, sl], tokens)
                assert (batch["video_segment"][row, sl] == j + 1).all()
                np.testing.assert_array_equal(batch["video_positions"][row, sl], packing.grid_positions(grid))
                n_text = packing.text_slots(ex["text_mask"], 2)
                assert (batch["text_segment"][row, t:t + n_text] == j + 1).all()
                np.testing.assert_array_equal(batch["text_ids"][row, j], ex["text_ids"])
                assert batch["sample_tokens"][row, j] == len(tokens)
                v, t = v + len(tokens), t + n_text
                seen.append(i)
                assert step - read_at[i] <= 2, (i, read_at[i], step)
            assert (batch["video_segment"][row, v:] == 0).all() and (batch["text_segment"][row, t:] == 0).all()
    assert len(seen) == len(set(seen)) and set(seen) <= set(read_at)
    waiting = {k for k, _ in it.get_state()["waiting"]}
    assert set(seen) | waiting == set(read_at)          # nothing read is lost


def test_example_longer_than_a_sequence_is_refused_with_the_fix():
    spec = packed.PackSpec(num_sequences=1, capacity=packing.Capacity(10, 40, 8), patch=(1, 2, 2))
    it = iter(packed.PackedDataset(grain.MapDataset.source(_Examples()), spec))
    with pytest.raises(ValueError, match="example 2 .* 12 video .*raise data.packing.max_tokens"):
        next(it)


def test_config_fields_and_errors():
    c = config_lib.base_config().data
    assert packed.spec_from_config(c, process_count=1, patch=(1, 2, 2), text_len=12, min_text_tokens=2) is None
    c.packing = packed.default_config()
    c.packing.enabled = True
    with pytest.raises(ValueError, match="data.packing.max_tokens >= 1"):
        packed.spec_from_config(c, process_count=1, patch=(1, 2, 2), text_len=12, min_text_tokens=2)
    c.packing.max_tokens, c.packing.max_samples = 64, 4
    c.global_batch_size = 4
    spec = packed.spec_from_config(c, process_count=2, patch=(1, 2, 2), text_len=12, min_text_tokens=2)
    assert spec.num_sequences == 2 and spec.capacity == packing.Capacity(64, 48, 4)
    c.packing.text_tokens = 8            # a 12-token caption could never be placed
    with pytest.raises(ValueError, match="text_tokens=8 cannot hold one sample's longest text"):
        packed.spec_from_config(c, process_count=1, patch=(1, 2, 2), text_len=12, min_text_tokens=2)


# ----------------------------------------------------------------------------- task + data

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return H.shared_setup(tmp_path_factory)


def _mesh1():
    import ml_collections as mc
    return make_mesh(mc.ConfigDict({"shape": {"data": 1}}), devices=jax.devices()[:1])


def packed_config(vae, **overrides):
    """Images (1 latent frame, 4 tokens) and 5-frame clips (2 latent frames, 8 tokens)."""
    c = H.dit_config(vae, **overrides)
    c.data.sources = [{"name": IMAGES, "split": "train", "weight": 0.5},
                      {"name": H.DATASET, "split": "train", "weight": 0.5}]
    c.data.global_batch_size = 2
    c.data.packing = packed.default_config()
    c.data.packing.update(enabled=True, max_tokens=32, max_samples=6, text_tokens=48)
    return c


def test_packed_iterator_restores_exactly_from_an_orbax_checkpoint(shared, tmp_path):
    task = DiTTask(config_lib.freeze(packed_config(shared["vae"])), _mesh1())
    make = lambda: task.make_train_iterator(data_dir=shared["data_dir"], process_index=0, process_count=1)  # noqa: E731
    it = make()
    for _ in range(7):
        batch = next(it)
    assert set(np.unique(batch["sample_frames"])) <= {0, 1, 2}
    manager = ckpt_lib.make_manager(str(tmp_path), async_save=False)
    ckpt_lib.save(manager, 7, {"step": jnp.int32(7)}, iterator=it)
    manager.wait_until_finished()
    after = [next(it) for _ in range(5)]
    restored = ckpt_lib.restore_iterator(str(tmp_path), make(), step=7)
    for a in after:
        b = next(restored)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    manager.close()


def _unpacked_losses(task, params, samples):
    """Per-sample losses of samples of one latent shape as an unpacked batch with the given
    draws: samples = [(t, eps (1, T, H, W, C), num_cond, dropped, example)]."""
    x0 = jnp.stack([jnp.asarray(ex["latents"]) for *_, ex in samples])
    null_ids, null_mask = np.asarray(task.null_ids)[0], np.asarray(task.null_mask)[0]
    ids = jnp.asarray(np.stack([null_ids if drop else np.asarray(ex["text_ids"]) for *_, drop, ex in samples]))
    mask = jnp.asarray(np.stack([null_mask if drop else np.asarray(ex["text_mask"]) for *_, drop, ex in samples]))
    t = jnp.asarray([t for t, *_ in samples])
    eps = jnp.concatenate([e for _, e, *_ in samples])
    emb, m = task.encode_text(params, ids, mask)
    cond, loss_mask = flow.build_condition(x0, jnp.asarray([k for _, _, k, *_ in samples]))
    v = task.velocity(params, flow.interpolate(x0, eps, t), t, emb, m, cond)
    return flow.flow_matching_loss(v, flow.velocity_target(x0, eps), loss_mask, return_per_example=True)[1]


@pytest.mark.slow   # ~70 s of compiles here; the fast suite packs through the trainer below
def test_packed_loss_and_gradients_equal_the_samples_run_alone(shared):
    c = packed_config(shared["vae"])
    c.data.global_batch_size = 1        # one sequence: ~5 samples, each its own unpacked program
    task = DiTTask(config_lib.freeze(c), _mesh1())
    it = task.make_train_iterator(data_dir=shared["data_dir"], process_index=0, process_count=1)
    batch = next(it)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    params = unbox(jax.jit(task.init)(jax.random.key(0), batch).params)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(42), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])

    frames = np.asarray(batch["sample_frames"])
    rng = np.random.default_rng(0)
    t = jnp.asarray(rng.uniform(0.05, 0.95, frames.shape), jnp.float32)
    num_cond = jnp.asarray(np.where(frames == 2, rng.integers(0, 2, frames.shape), 0), jnp.int32)
    dropped = jnp.asarray(rng.random(frames.shape) < 0.3)
    eps = jnp.asarray(rng.standard_normal(batch["video_tokens"].shape), jnp.float32)
    assert (frames == 1).any() and (frames == 2).any() and bool(num_cond.any()) and bool(dropped.any())

    def packed_fn(p):
        loss, per, has, _ = task.packed_loss_given(p, batch, t=t, eps=eps, num_cond=num_cond, dropped=dropped)
        return loss, (per, has)

    (loss_p, (per_p, has_p)), grads_p = jax.jit(jax.value_and_grad(packed_fn, has_aux=True))(params)

    # the same samples unpacked, with the same draws (eps cut out of the packed noise)
    samples = []
    seg = np.asarray(batch["video_segment"])
    for row, col in zip(*np.nonzero(frames)):
        ex = {"latents": None, "text_ids": batch["text_ids"][row, col], "text_mask": batch["text_mask"][row, col]}
        rows = seg[row] == col + 1
        grid = (int(frames[row, col]), *[int(n) for n in np.asarray(batch["video_positions"][row][rows]).max(0)[1:] + 1])
        shape = (1, grid[0], 2 * grid[1], 2 * grid[2], 4)   # token grid x patch (1, 2, 2)
        ex["latents"] = unpatchify(batch["video_tokens"][row][rows][None], grid, (1, 2, 2), 4)[0]
        e = unpatchify(eps[row][rows][None], grid, (1, 2, 2), 4)
        assert e.shape == shape
        samples.append((float(t[row, col]), e, int(num_cond[row, col]), bool(dropped[row, col]), ex))

    shapes = sorted({tuple(ex["latents"].shape) for *_, ex in samples})
    order = [i for sh in shapes for i, (*_, ex) in enumerate(samples) if tuple(ex["latents"].shape) == sh]

    def alone_fn(p):   # one unpacked batch per latent shape, back in packed order
        losses = jnp.concatenate([_unpacked_losses(task, p, [x for x in samples if tuple(x[-1]["latents"].shape) == sh])
                                  for sh in shapes])
        losses = losses[np.argsort(order)]
        return jnp.mean(losses), losses

    (loss_a, per_a), grads_a = jax.jit(jax.value_and_grad(alone_fn, has_aux=True))(params)
    np.testing.assert_allclose(np.asarray(per_p)[np.asarray(has_p)], np.asarray(per_a), rtol=1e-5)
    np.testing.assert_allclose(float(loss_p), float(loss_a), rtol=1e-5)
    for (path, gp), ga in zip(jax.tree_util.tree_leaves_with_path(grads_p), jax.tree.leaves(grads_a)):
        scale = float(jnp.max(jnp.abs(ga)))
        assert float(jnp.max(jnp.abs(gp - ga))) <= 1e-5 * scale, jax.tree_util.keystr(path)


@pytest.mark.parametrize("scope", ["host", "global"])
def test_packed_run_trains_through_the_trainer(shared, tmp_path, scope):
    c = packed_config(shared["vae"], num_steps=6)
    c.log_every, c.eval_every, c.ckpt_every = 2, 0, 3
    c.data.global_batch_size = 8        # sequences: one per device of the 8-device data mesh
    # Global scope (cross-host balance; one process here) puts each row's cost in the batch
    # and the step logs max / mean row cost.
    if scope == "global":
        c.data.packing.update(balance=True, scope="global")
    config = config_lib.freeze(c)
    state = loop.train(config, str(tmp_path / "run"), data_dir=shared["data_dir"])
    assert int(state.step) == 6 and int(state.nonfinite_steps) == 0
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        metrics = [r for r in map(json.loads, f) if "loss" in r]
    assert metrics and all(np.isfinite(r["loss"]) for r in metrics)
    assert all(r["samples"] > 2 for r in metrics)           # several samples per sequence
    if scope == "host":
        assert not any("row_imbalance" in r for r in metrics)
        return
    # one process: host scope would pack the same rows, so before == after, and >= 1
    assert all(r["row_imbalance"] == pytest.approx(r["row_imbalance_host"]) and r["row_imbalance"] >= 1.0
               for r in metrics)


def test_packing_with_window_attention_is_refused(shared):
    c = packed_config(shared["vae"])
    c.model.attention = "space_full"
    with pytest.raises(ValueError, match="data.packing.enabled=True needs model.attention='full'"):
        DiTTask(config_lib.freeze(c), _mesh1())


def _config_module(rel):
    import importlib.util
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_"), f"{H.REPO}/{rel}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("rel, arg, capacity, sequences", [
    ("configs/dit/moving_shapes.py", "stage0", packing.Capacity(128, 80, 8), 4),
    ("configs/dit/seaweed_7b.py", "stage=stage0", packing.Capacity(4096, 2048, 16), 64)])
def test_stage0_configs_pack(rel, arg, capacity, sequences):
    c = _config_module(rel).get_config(arg)
    c.model.latent_channels = c.model.latent_channels or 8
    c.model.in_channels = c.model.in_channels or 17
    c.vae_workdir = c.get("vae_workdir") or "/a/vae/run"   # the 7B config names no VAE yet
    validate_task_config(c)                                 # full attention, latent cache
    spec = packed.spec_from_config(c.data, process_count=1, patch=c.model.patch_size,
                                   text_len=c.text_encoder.max_len if "text_encoder" in c else 256,
                                   min_text_tokens=1)
    assert spec.capacity == capacity and spec.num_sequences == sequences


def test_packed_condition_equals_the_unpacked_one_with_temporal_patches():
    """Extension with k = 3 conditioned latent frames and patch (2, 2, 2): a token spans two
    frames, one given and one generated; the token-layout condition is `flow.build_condition`
    patchified, and its loss weight the patchified loss mask."""
    from seaweed_jax.diffusion import packed as packed_flow
    patch = (2, 2, 2)
    x0 = jnp.asarray(np.random.default_rng(0).standard_normal((1, 6, 4, 4, 3)), jnp.float32)
    cond_ref, loss_mask = flow.build_condition(x0, jnp.array([3]))
    want, grid = patchify(cond_ref, patch)
    tokens, _ = patchify(x0, patch)
    positions = jnp.asarray(packing.grid_positions(grid))[None]
    frame = packed_flow.token_frames(positions, patch)
    cond, is_cond = packed_flow.build_condition(tokens.reshape(1, tokens.shape[1], 8, 3), frame,
                                                jnp.full(tokens.shape[:2], 3))
    np.testing.assert_array_equal(np.asarray(cond.reshape(want.shape)), np.asarray(want))
    mask_tokens, _ = patchify(jnp.broadcast_to(loss_mask[:, :, None, None, None], (1, 6, 4, 4, 1)), patch)
    np.testing.assert_array_equal(np.asarray(~is_cond, np.float32), np.asarray(mask_tokens[0])[None])
