"""`RefineTask` ("refine"): the FlashVideo Stage II refiner (math in diffusion/refine.py).

A DiT of the project's family (3D MM-RoPE, so it runs at sizes it never saw; text
conditioning; a zero-initialized embedding of the degradation level, `model.level_embed`)
learns the straight flow from a degraded latent (t = 0) to the clean high-resolution latent
(t = 1) — the opposite direction of the base model's t:

  pairs   every training clip x (high resolution, e.g. 64x64) is stored in the latent cache
          as [clean | V degraded variants] (data/degrade.py: blur, down-sample by f ~
          U[refine.pixel.scale] and back, noise, JPEG; each variant encoded by the VAE), so
          training never runs the VAE;
  step    pick a variant z_ref per example; x0 = sqrt(abar_k) z_ref + sqrt(1 - abar_k) eps with
          k ~ U{refine.level_range} on the DDPM schedule `refine.schedule` (no latent noise when
          refine.latent_degradation=False); x1 = the clean latent; t ~ logit-normal (or
          uniform), then `refine_shift` (s > 1 favours the degraded start t = 0);
          x_t = (1 - t) x0 + t x1; loss = mean ||v(x_t, t, text, k) - (x1 - x0)||^2.

Params `{"dit", "text"}` like a DiT run (the tiny text encoder trains jointly, with
`refine.text_dropout` of empty prompts). `evaluate`: validation loss at fixed t, level
`refine.eval_level`, variant 0 and fixed noise (deterministic). Sampling: inference/refiner.py
(`refine.sample_steps` Euler steps from level `refine.sample_level`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections as mc

from seaweed_jax.data import degrade
from seaweed_jax.diffusion import flow, refine
from seaweed_jax.trainer import dit_task, optimizers
from seaweed_jax.trainer.dit_task import DiTTask

TIMESTEPS = ("logit_normal", "uniform")


def default_refine_config(**overrides) -> mc.ConfigDict:
    c = mc.ConfigDict()
    c.pixel = degrade.default_pixel_config()   # scale / blur / noise / jpeg ranges (data/degrade.py)
    c.variants = 2                      # degraded variants cached per clip
    c.pixel_seed = 0
    c.latent_degradation = True         # x0 = sqrt(abar_k) z_ref + sqrt(1 - abar_k) eps
    c.schedule = "scaled_linear"        # DDPM betas: scaled_linear | linear
    c.schedule_steps = 1000
    c.beta_start = 0.00085
    c.beta_end = 0.012
    c.level_range = (600, 750)          # training levels k (FlashVideo: 600-750)
    c.timesteps = "logit_normal"        # logit_normal | uniform
    c.logit_mean = 0.0
    c.logit_std = 1.0
    c.shift = 1.0                       # refine_shift: s > 1 favours t near 0 (the degraded start)
    c.text_dropout = 0.1
    c.eval_t = (0.1, 0.3, 0.5, 0.7, 0.9)
    c.eval_level = 675
    c.eval_seed = 1234
    c.sample_steps = 4                  # Euler steps (= NFE) of `sample --refiner_workdir`
    c.sample_level = 675                # FlashVideo inference: 650-750
    c.sample_shift = 1.0
    c.update(overrides)
    return c


def refine_config(config) -> mc.FrozenConfigDict:
    return dit_task._section(config, "refine", default_refine_config)


def validate_refine_config(config) -> None:
    r = refine_config(config)
    degrade.validate_pixel_config(r.pixel)
    if int(r.variants) < 1:
        raise ValueError(f"refine.variants={r.variants} must be >= 1 (degraded versions cached per clip)")
    refine.ddpm_alpha_bar(r.schedule, int(r.schedule_steps), float(r.beta_start), float(r.beta_end))
    for name in ("level_range",):
        lo, hi = (int(v) for v in r[name])
        if not 0 <= lo <= hi < int(r.schedule_steps):
            raise ValueError(f"refine.{name}=({lo}, {hi}) must satisfy 0 <= low <= high < "
                             f"refine.schedule_steps={r.schedule_steps}")
    for name in ("eval_level", "sample_level"):
        if not -1 <= int(r[name]) < int(r.schedule_steps):
            raise ValueError(f"refine.{name}={r[name]} must be in [0, {int(r.schedule_steps) - 1}] "
                             "(-1: no latent degradation)")
    if r.timesteps not in TIMESTEPS:
        raise ValueError(f"refine.timesteps={r.timesteps!r}; use one of {TIMESTEPS}")
    if float(r.shift) <= 0 or float(r.sample_shift) <= 0:
        raise ValueError(f"refine.shift={r.shift} and sample_shift={r.sample_shift} must be > 0 (1 = no shift)")
    if int(r.sample_steps) < 1:
        raise ValueError(f"refine.sample_steps={r.sample_steps} must be >= 1")
    if not 0.0 <= float(r.text_dropout) < 1.0:
        raise ValueError(f"refine.text_dropout={r.text_dropout} must be in [0, 1)")
    m = config.model
    if int(m.in_channels) != int(m.latent_channels):
        raise ValueError(f"model.in_channels={m.in_channels} must equal model.latent_channels="
                         f"{m.latent_channels}: the refiner's input is the latent alone (leave "
                         "in_channels None to fill it)")
    if bool(r.latent_degradation) and not m.get("level_embed", False):
        raise ValueError("refine.latent_degradation=True needs model.level_embed=True (the model is "
                         "told the degradation level k)")
    if dit_task.packing_enabled(config):
        raise ValueError("data.packing is not supported by the refiner; set data.packing.enabled=False")


def level_input(levels: jax.Array, schedule_steps: int) -> jax.Array:
    """The model's level input: k / schedule_steps (0 for 'no latent degradation', k = -1)."""
    return jnp.maximum(levels, 0).astype(jnp.float32) / float(schedule_steps)


class RefineTask(DiTTask):
    """See the module docstring."""

    # A refiner may start from a DiT run (`init_from`) without a level embedding. (A base DiT
    # has in_channels 2C + 1 and the opposite t direction: its patch embedding does not fit,
    # so such a start needs model.in_channels = C in the source too.)
    new_params = ("dit/level_embed",)

    @classmethod
    def resolve_config(cls, config) -> None:
        """model.latent_channels (None) <- the VAE run's; model.in_channels (None) <- C."""
        if config.model.get("in_channels") is None and config.model.get("latent_channels") is None \
                and config.get("vae_workdir"):
            super().resolve_config(config)        # fills latent_channels (and 2C + 1)
            config.model.in_channels = int(config.model.latent_channels)
        elif config.model.get("in_channels") is None and config.model.get("latent_channels"):
            config.model.in_channels = int(config.model.latent_channels)

    def __init__(self, config, mesh):
        super().__init__(config, mesh)
        validate_refine_config(config)
        self.rcfg = refine_config(config)
        self.alpha_bar = refine.ddpm_alpha_bar(self.rcfg.schedule, int(self.rcfg.schedule_steps),
                                               float(self.rcfg.beta_start), float(self.rcfg.beta_end))
        self.channels = int(config.model.latent_channels)
        # DiTTask.validation_losses reads its t values from self.diff.
        self.diff = mc.FrozenConfigDict(dict(self.diff.to_dict(), eval_t=tuple(self.rcfg.eval_t)))

    def _possible_tasks(self):
        return ()     # one task; no per-task loss metrics

    # ------------------------------------------------------------------ data
    def latent_encoder(self):
        """[clean | variants] latents per clip (data/degrade.PairEncoder over the VAE)."""
        return degrade.PairEncoder(self.vae.latent_encoder(), dict(self.rcfg.pixel),
                                   int(self.rcfg.variants), int(self.rcfg.pixel_seed)).latent_encoder()

    # ------------------------------------------------------------------ model
    def init(self, rng, batch):
        batch = dict(batch, latents=batch["latents"][..., :self.channels])
        return super().init(rng, batch)

    def refiner_velocity(self, params, x_t, t, emb, mask, levels):
        """v(x_t, t) of the refiner (float32); levels (B,) int DDPM levels (-1 = none)."""
        return self.model.apply({"params": params["dit"]}, x_t, t, emb, mask,
                                level=level_input(levels, int(self.rcfg.schedule_steps)))

    def pairs(self, latents, variant):
        """(x1 clean, z_ref) from cached [clean | variants] latents; variant (B,) int."""
        c, v = self.channels, int(self.rcfg.variants)
        x1 = latents[..., :c]
        z = latents[..., c:c * (v + 1)].reshape(latents.shape[:-1] + (v, c))
        z_ref = jnp.take_along_axis(z, variant.reshape((-1,) + (1,) * (z.ndim - 1)), axis=-2)[..., 0, :]
        return x1, z_ref

    def degraded_start(self, z_ref, levels, eps):
        if not bool(self.rcfg.latent_degradation):
            return z_ref
        return refine.degrade_latent(z_ref, levels, self.alpha_bar, eps)

    def _loss(self, params, batch, rng):
        r = self.rcfg
        latents = batch["latents"].astype(jnp.float32)
        b = latents.shape[0]
        k_drop, k_var, k_level, k_t, k_noise = jax.random.split(rng, 5)
        x1, z_ref = self.pairs(latents, jax.random.randint(k_var, (b,), 0, int(r.variants)))
        levels = (refine.sample_levels(k_level, b, r.level_range) if bool(r.latent_degradation)
                  else jnp.full((b,), -1, jnp.int32))
        x0 = self.degraded_start(z_ref, levels, jax.random.normal(k_noise, x1.shape, jnp.float32))

        emb, mask = self.encode_text(params, batch["text_ids"], batch["text_mask"])
        null_emb, null_mask = self.encode_text(params, jnp.asarray(self.null_ids), jnp.asarray(self.null_mask))
        emb, mask, _ = flow.drop_text(k_drop, emb, mask, null_emb[0], null_mask[0], float(r.text_dropout))

        t = flow.sample_timesteps(k_t, b, r.timesteps, float(r.logit_mean), float(r.logit_std))
        t = refine.refine_shift(t, float(r.shift)) if float(r.shift) != 1.0 else t
        v = self.refiner_velocity(params, refine.interpolate(x0, x1, t), t, emb, mask, levels)
        loss = flow.flow_matching_loss(v, refine.velocity_target(x0, x1))
        return loss, {"t_mean": t.mean()}

    def train_step(self, state, batch, rng):
        (loss, aux), grads = jax.value_and_grad(self._loss, has_aux=True)(state.params, batch, rng)
        state = state.apply_gradients(grads)
        return state, {"loss": loss, "grad_norm": optimizers.global_norm(grads), **aux}

    # ------------------------------------------------------------------ evaluation
    def _eval_fn(self):
        if getattr(self, "_eval_jit", None) is None:
            seed, level = int(self.rcfg.eval_seed), int(self.rcfg.eval_level)

            def per_example_loss(params, latents, ids, mask, source, index, t_value):
                latents = latents.astype(jnp.float32)
                b = latents.shape[0]
                x1, z_ref = self.pairs(latents, jnp.zeros((b,), jnp.int32))
                base = jax.random.fold_in(jax.random.key(seed), source)
                keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(index)
                eps = jax.vmap(lambda k: jax.random.normal(k, x1.shape[1:], jnp.float32))(keys)
                levels = jnp.full((b,), level if bool(self.rcfg.latent_degradation) else -1, jnp.int32)
                x0 = self.degraded_start(z_ref, levels, eps)
                t = jnp.full((b,), t_value, jnp.float32)
                emb, m = self.encode_text(params, ids, mask)
                v = self.refiner_velocity(params, refine.interpolate(x0, x1, t), t, emb, m, levels)
                _, pe = flow.flow_matching_loss(v, refine.velocity_target(x0, x1), return_per_example=True)
                return pe

            self._eval_jit = jax.jit(per_example_loss)
        return self._eval_jit
