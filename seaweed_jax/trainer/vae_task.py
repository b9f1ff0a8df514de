"""`VAETask`: train the causal video VAE (config.task = "vae").

Generator loss (the VAE), all in fp32:

    L_G = l1_weight * |x - x̂|            mean over pixels
        + l2_weight * (x - x̂)^2          optional, mean over pixels (0 by default)
        + lpips_weight * LPIPS(x, x̂)     'vgg' v0.1 (eval/lpips.py), mean over clips and frames;
                                          weights from loss.lpips_weights_path; 0 by default
        + kl_weight * KL                  KL(q(z|x) || N(0, I)) summed over a clip's latent,
                                          mean over clips, / P (see below)
        + wl_weight * WL                  wavelet arch only: |predicted - true Haar subbands|
                                          (the decoder's vs the encoder's, levels l1 and l2)
                                          summed over a clip's subbands and levels, mean over
                                          clips, / P
        + lambda * L_adv                  after disc_start_step: hinge generator loss
                                          -E[D(x̂)] summed over the enabled discriminators

P = loss.reg_norm (issue 19):
  'frame' P = H*W*C, the pixels of ONE frame (the default). WF-VAE's loss (causalvideovae/model/
          losses/perceptual_loss.py, LPIPSWithDiscriminator3D) reduces the reconstruction as
          sum / (B*T) over the (b t)-flattened frames, the KL as sum / B and each wavelet level
          as sum / B; dividing all of them by H*W*C turns its reconstruction term into our
          per-pixel mean and keeps its KL : rec and WL : rec ratios, so kl_weight = 1e-6 and
          wl_weight = 0.1 mean what they mean there (for T = 1 this is also LDM's image loss).
  'clip'  the convention before issue 19: KL / (T*H*W*C), the pixels of the clip (T x weaker
          than 'frame'), WL = the sum over levels of the MEAN |predicted - true| of the level.
          Kept by the CPU recipe (configs/vae/common.py cpu_config), whose kl_weight was tuned
          under it.

with the VQGAN adaptive weight lambda = adv_weight * clip(|grad_W L_rec| / (|grad_W L_adv| +
1e-4), 0, adaptive_weight_max), W = the decoder's last conv kernel (`loss.last_layer`),
L_rec = the L1 (+ LPIPS) term. Discriminators (`models/vae/discriminator.py`): a per-frame 2D
and a 3D PatchGAN, spectral norm on every conv, no BatchNorm, hinge loss.

One train step = G update, then D update on the same batch (D sees x and stop_grad(x̂)).
Before `disc_start_step` the step is VAE-only: no discriminator forward, no D update, so early
steps cost what a plain VAE step costs. The switch is a static phase (`step_phase`: the loop
compiles one step per phase) rather than a `lax.cond`, which XLA:CPU ran 19x slower here
(9.5 s vs 0.5 s per tiny-VAE step, the conv-heavy branch inside a conditional). The step uses a single VAE
forward; the last-layer gradient norms come from the same VJP (XLA drops the parts of those
backward passes that do not reach the last layer).

State: params / opt_state / EMA of the VAE in TrainState; the discriminators' params,
spectral-norm vectors and optimizer state in `state.extra` = {"disc_params",
"disc_stats", "disc_opt_state"} (absent when adversarial training is off:
adv_weight == 0 or both disc weights 0); with lpips_weight > 0 the frozen LPIPS network's
weights in `state.extra["lpips"]` (never trained: no gradient or optimizer state). Being
state, they enter the jitted step as (replicated) arguments rather than as jit constants
(~59 MB of VGG16 baked into every compiled step otherwise). `init` gives them zeros of the
file's shapes; `on_fresh_start` loads loss.lpips_weights_path into them; a resume restores them
from the checkpoint, like the distillation teacher (see `on_fresh_start` for why).

`config.loss` fields (defaults in LOSS_DEFAULTS): see that dict. Evaluation: PSNR / SSIM on
data.val_examples validation clips (EMA params when present): `psnr` is the papers' per-frame
PSNR averaged (eval/reconstruction.py), `psnr_video` the per-video one. After the last step,
`on_train_end` writes W/latent_stats.json (per-channel latent mean / std over the train split).

`config.tail_init_from` (optional, "" = off): a 2D image VAE whose params start a fresh run
through OD-VAE tail initialization (`models/vae/tail_init.py`): either the workdir of an
image-VAE run (its latest checkpoint; EMA params when it kept them) or a diffusers
AutoencoderKL directory (config.json + *.safetensors, `diffusers_io.load_autoencoderkl`).
Applied in `on_fresh_start` (never on resume: the checkpoint wins); EMA starts as a copy,
the optimizer state stays fresh. Exclusive with `config.init_from`.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import optax
from flax import linen as nn

from seaweed_jax import checkpoint, paths
from seaweed_jax.data import pipeline
from seaweed_jax.eval import lpips as lpips_lib
from seaweed_jax.eval import reconstruction
from seaweed_jax.models.vae import autoencoder, codec as codec_lib, diffusers_io, tail_init
from seaweed_jax.models.vae.discriminator import (SPECTRAL, VideoDiscriminators, hinge_d_loss,
                                                  hinge_g_loss)
from seaweed_jax.trainer import optimizers
from seaweed_jax.trainer.state import TrainState
from seaweed_jax.trainer.task import Task

LOSS_DEFAULTS = dict(
    l1_weight=1.0,
    l2_weight=0.0,               # optional MSE term (mean-seeking: helps small objects early)
    lpips_weight=0.0,            # > 0 needs lpips_weights_path
    lpips_weights_path="",       # LPIPS .npz (scripts/convert_lpips.py writes it from the torch files)
    kl_weight=1e-6,
    wl_weight=0.1,               # wavelet arch only
    reg_norm="frame",            # KL / WL divisor: 'frame' (WF-VAE's ratios) | 'clip' (before
                                 # issue 19); see the module docstring
    sample_posterior=True,       # decode z ~ q(z|x) in training (False: the mean)
    adv_weight=0.5,              # multiplier of the adaptive weight; 0 disables the GAN
    adaptive_weight=True,        # False: lambda = adv_weight
    adaptive_weight_max=1e4,
    disc_start_step=2000,        # loop step at which the adversarial term and D updates start
    disc_2d_weight=1.0,          # per-frame PatchGAN (0 disables it)
    disc_3d_weight=1.0,          # video PatchGAN (0 disables it)
    disc_channels=64,
    disc_layers=3,
    disc_power_iterations=1,
    disc_lr=0.0,                 # 0 = optimizer.lr
    disc_b1=0.5,
    disc_b2=0.9,
    disc_warmup_steps=0,
    last_layer="decoder/conv_out/kernel",
    latent_stats_examples=1024,  # train clips for latent_stats.json at the end of training
)


REG_NORMS = ("frame", "clip")


def default_loss_config(**overrides) -> mc.ConfigDict:
    """Every `config.loss` field with its default (so `--config.loss.X=...` works for all of
    them), updated with `overrides`; for config files."""
    unknown = sorted(set(overrides) - set(LOSS_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown loss fields {unknown}; known: {sorted(LOSS_DEFAULTS)}")
    return mc.ConfigDict({**LOSS_DEFAULTS, **overrides})


def loss_config(config) -> mc.FrozenConfigDict:
    """config.loss over LOSS_DEFAULTS; unknown fields are an error (typos)."""
    given = dict(config.get("loss", None) or {})
    unknown = sorted(set(given) - set(LOSS_DEFAULTS))
    if unknown:
        raise ValueError(f"config.loss has unknown fields {unknown}; known: {sorted(LOSS_DEFAULTS)}")
    merged = dict(LOSS_DEFAULTS)
    merged.update(given)
    if merged["reg_norm"] not in REG_NORMS:
        raise ValueError(f"config.loss.reg_norm={merged['reg_norm']!r} must be one of {REG_NORMS}: "
                         f"'frame' (WF-VAE's KL / WL ratios) or 'clip' (the pre-issue-19 one)")
    return mc.FrozenConfigDict(merged)


def _get_path(tree, path: str):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def tail_init_params(video_config, source: str) -> tuple[Any, str]:
    """(video params (unboxed, host), what was loaded) for `config.tail_init_from=source`:
    the image VAE of `source` (an image-VAE run's workdir or a diffusers AutoencoderKL
    directory) inflated into `video_config`'s model by `tail_init.tail_init`. Errors name the
    field."""
    field = f"config.tail_init_from={source}"
    try:
        tail_init.image_config_for(video_config)   # this model has an image counterpart
    except ValueError as e:
        raise ValueError(f"{field}: this model cannot be tail-initialized: {e}") from None
    if not diffusers_io.is_autoencoderkl_dir(source) and not paths.run_path(source).is_dir():
        raise ValueError(f"{field}: no such directory; point it at an image-VAE run's workdir "
                         f"(trained with e.g. configs/vae/odvae_tiny.py:stage=image) or a diffusers "
                         f"AutoencoderKL directory (config.json + *.safetensors)")
    if diffusers_io.is_autoencoderkl_dir(source):
        image_cfg, image_params = diffusers_io.load_autoencoderkl(source)
        what = f"diffusers AutoencoderKL {source}"
    else:
        try:
            image = codec_lib.load(source, raw=True)   # EMA params when the run kept them
        except FileNotFoundError as e:
            raise ValueError(f"{field}: {e}; point it at an image-VAE run's workdir (trained with "
                             f"e.g. configs/vae/odvae_tiny.py:stage=image) or a diffusers "
                             f"AutoencoderKL directory (config.json + *.safetensors)") from None
        except ValueError as e:
            raise ValueError(f"{field}: {e}") from None
        image_cfg, image_params = image.config, image.params
        what = f"image VAE run {source} step {image.step} ({image.params_key})"
    section = autoencoder.model_section(video_config)
    scanned = bool(section.scan_blocks)
    unrolled_cfg = mc.FrozenConfigDict({**section.to_dict(), "scan_blocks": False})
    try:
        # Host-side maths: outside the loop's mesh, where unboxing tail_init's abstract target
        # (ShapeDtypeStructs) would apply sharding constraints to them (a TypeError). The
        # image names map onto the unrolled layout; a scan_blocks model stacks them after.
        with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
            params = nn.unbox(tail_init.tail_init(image_params, unrolled_cfg, image_cfg))
        if scanned:
            params = autoencoder.scan_params(params, video_config)
    except ValueError as e:
        raise ValueError(f"{field}: {e}; the image run's model must be "
                         f"tail_init.image_config_for(this model)") from None
    return params, what


def kl_divergence(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over all but the batch axis -> (B,)."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl.reshape(kl.shape[0], -1), axis=1)


def wavelet_loss(pred: Mapping[str, Any], true: Mapping[str, Any], *,
                 frame_pixels: int | None = None):
    """|predicted - true| subbands over the levels present in both (each (B, ...)).

    frame_pixels=P (loss.reg_norm='frame', WF-VAE): summed over a clip's subbands and levels,
    mean over clips, / P. None ('clip', before issue 19): the sum over levels of the mean."""
    keys = sorted(set(pred) & set(true))
    if not keys:
        return jnp.zeros((), jnp.float32)
    errs = [jnp.abs(pred[k].astype(jnp.float32) - true[k].astype(jnp.float32)) for k in keys]
    if frame_pixels is None:
        return sum(jnp.mean(e) for e in errs)
    return sum(jnp.sum(e) for e in errs) / (errs[0].shape[0] * frame_pixels)


class VAETask(Task):
    """Causal video VAE with L1 / KL / WL / 2D+3D PatchGAN (spectral norm) losses."""

    # Subclass hook: define `perceptual_loss(self, recon, x)` -> scalar to score the LPIPS term
    # with your own network (it brings its own weights: none are loaded). None: the built-in
    # LPIPS with the frozen weights in state.extra["lpips"] (see `_perceptual_term`).
    perceptual_loss: Callable[[Any, Any], Any] | None = None

    def __init__(self, config, mesh):
        super().__init__(config, mesh)
        autoencoder.validate_model_config(config.model)
        self.lc = lc = loss_config(config)
        self.model = autoencoder.CausalVAE(autoencoder.model_section(config.model))
        self.wavelet = config.model.arch == "wavelet"
        # Host (numpy) copy of the LPIPS weights: its shapes shape state.extra["lpips"] in
        # `init`, its values go there in `on_fresh_start`. None when the LPIPS term is off or a
        # subclass defines `perceptual_loss` (then it brings its own network).
        self.lpips_host = None
        if lc.lpips_weight > 0 and self.perceptual_loss is None:
            if not lc.lpips_weights_path:
                raise ValueError(
                    f"config.loss.lpips_weight={lc.lpips_weight} needs config.loss.lpips_weights_path "
                    f"(an LPIPS .npz written by scripts/convert_lpips.py); or set loss.lpips_weight=0")
            try:
                self.lpips_host = jax.tree.map(np.asarray, lpips_lib.load(lc.lpips_weights_path))
            except (FileNotFoundError, ValueError) as e:
                raise ValueError(f"config.loss.lpips_weights_path={lc.lpips_weights_path}: {e}") from None
        if lc.disc_start_step < 0:
            raise ValueError(f"config.loss.disc_start_step={lc.disc_start_step} must be >= 0")
        self.adversarial = lc.adv_weight > 0 and (lc.disc_2d_weight > 0 or lc.disc_3d_weight > 0)
        self.disc = VideoDiscriminators(
            use_2d=lc.disc_2d_weight > 0, use_3d=lc.disc_3d_weight > 0, channels=lc.disc_channels,
            num_layers=lc.disc_layers, power_iterations=lc.disc_power_iterations,
            dtype=jnp.dtype(config.model.dtype))
        self.disc_tx = self._make_disc_optimizer(config, lc)
        self.tail_init_from = str(config.get("tail_init_from", "") or "")
        if self.tail_init_from and config.get("init_from"):
            raise ValueError(
                f"config.init_from={config.init_from} and config.tail_init_from={self.tail_init_from} "
                f"are both set; a fresh run starts from one of them: clear one")

    @staticmethod
    def _make_disc_optimizer(config, lc):
        opt = mc.ConfigDict(config.optimizer.to_dict() if hasattr(config.optimizer, "to_dict")
                            else dict(config.optimizer))
        opt.lr = float(lc.disc_lr or config.optimizer.lr)
        opt.b1, opt.b2 = float(lc.disc_b1), float(lc.disc_b2)
        opt.schedule = "constant"
        opt.warmup_steps = int(lc.disc_warmup_steps)
        opt.weight_decay = 0.0
        # D accumulates like G, so it updates once per generator update (not every micro-step)
        opt.grad_accum_steps = int(config.optimizer.get("grad_accum_steps", 1) or 1)
        return optimizers.make_optimizer(opt, max(1, config.num_steps - lc.disc_start_step))

    # ------------------------------------------------------------------ data / init

    def make_train_iterator(self, *, data_dir, process_index, process_count):
        return pipeline.make_iterator(self.config.data, data_dir=data_dir,
                                      process_index=process_index, process_count=process_count)

    def example_batch(self, video_shape=None, batch_size: int = 1) -> dict:
        """Zero batch of clips (T, H, W) (default: the smallest valid one); param shapes do not
        depend on the clip size. `train --compile_only --video_shape=T,H,W` compiles with it."""
        if video_shape is None:
            return {"video": jnp.zeros(autoencoder.min_video_shape(self.config.model, batch_size), jnp.float32)}
        shape = (batch_size, *video_shape, int(self.config.model.in_channels))
        autoencoder.check_video_shape(shape, self.config.model)
        return {"video": jnp.zeros(shape, jnp.float32)}

    def init(self, rng, batch):
        x = batch["video"]
        # Param init draws from an RBG key derived from `rng` (deterministic): XLA:CPU compiles
        # threefry-based initializers ~10x slower (39 s vs 4 s for 8 conv kernels here).
        rng = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")
        k_vae, k_disc = jax.random.split(rng)
        params = self.model.init({"params": k_vae}, jnp.zeros((1,) + x.shape[1:], jnp.float32))["params"]
        try:
            _get_path(nn.unbox(params), self.lc.last_layer)
        except (KeyError, TypeError):
            raise ValueError(f"config.loss.last_layer={self.lc.last_layer!r} is not a param path of "
                             f"this VAE (expected e.g. 'decoder/conv_out/kernel')") from None
        extra = {}
        if self.adversarial:
            dvars = self.disc.init({"params": k_disc}, jnp.zeros((1,) + x.shape[1:], jnp.float32))
            extra = {"disc_params": dvars["params"], "disc_stats": dvars[SPECTRAL],
                     "disc_opt_state": self.disc_tx.init(dvars["params"])}
        if self.lpips_host is not None:   # placeholders (unboxed: replicated); on_fresh_start fills them
            # NaN, not zeros: a state that skipped on_fresh_start would train with LPIPS = 0
            # silently; with NaN every update is rejected as non-finite, loudly.
            extra["lpips"] = jax.tree.map(lambda a: jnp.full(a.shape, jnp.nan, jnp.float32), self.lpips_host)
        return TrainState.create(params=params, tx=self.tx, ema_decay=self.ema_decay, extra=extra)

    def restore_init_from(self, workdir: str, params, key: str = "params"):
        """As Task's, also across the unrolled / scanned ResBlock layouts (`model.scan_blocks`
        differing between the source run and this one): restored in the source's layout, then
        converted (autoencoder.scan_params / unscan_params)."""
        source = checkpoint.load_config(workdir).get("model", None)
        scanned = bool(autoencoder.model_section(self.config.model).get("scan_blocks", False))
        if source is None or bool(source.get("scan_blocks", False)) == scanned:
            return super().restore_init_from(workdir, params, key=key)
        cfg = self.config.model
        to_source, back = ((autoencoder.unscan_params, autoencoder.scan_params) if scanned
                           else (autoencoder.scan_params, autoencoder.unscan_params))
        restored, step, missing = super().restore_init_from(workdir, to_source(params, cfg), key=key)
        ours = back(restored, cfg)   # back onto this run's shardings
        ours = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), ours, params)
        return ours, step, missing

    def with_lpips_weights(self, state: TrainState) -> TrainState:
        """state.extra['lpips'] = the weights of loss.lpips_weights_path, placed on the shardings
        `init` gave them (replicated); the state unchanged when LPIPS is not in it."""
        if self.lpips_host is None:
            return state
        lpips = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding),
                             self.lpips_host, state.extra["lpips"])
        return state.replace(extra={**state.extra, "lpips": lpips})

    def on_fresh_start(self, state: TrainState) -> TrainState:
        """The LPIPS weights into state.extra['lpips'] (with lpips_weight > 0). With
        config.tail_init_from: the tail-inflated image-VAE params, placed on the state's
        shardings; EMA reset to them; optimizer state (built from shapes) stays fresh.

        The LPIPS weights are then checkpointed with the state and a resume restores them from
        there, as the distillation teacher's params are (distill_task.py), rather than reloaded
        from the file: the loop restores the whole TrainState onto `init`'s shapes and calls no
        task hook on resume, so leaving them out would need a save filter plus a resume hook in
        the loop; and a checkpoint then holds exactly the weights its run trained against, even
        if the file's values change later (the file must still exist: `__init__` reads it for
        the shapes). Cost: 59 MB (VGG16 + heads, fp32) per checkpoint,
        ~2% of a configs/vae/wfvae.py one (2.5 GB of params + Adam moments + EMA)."""
        state = self.with_lpips_weights(state)
        if not self.tail_init_from:
            return state
        params, what = tail_init_params(self.config.model, self.tail_init_from)
        # host values -> the state's shardings (a host array puts on a global sharding too)
        params = jax.tree.map(lambda new, old: jax.device_put(np.asarray(new, old.dtype), old.sharding),
                              params, state.params)
        ema = None if state.ema_params is None else jax.tree.map(jnp.copy, params)
        if jax.process_index() == 0:
            print(f"tail_init_from: {what}, inflated into this model's "
                  f"{len(jax.tree.leaves(params))} param arrays", flush=True)
        return state.replace(params=params, ema_params=ema)

    # ------------------------------------------------------------------ losses

    def _perceptual_term(self, recon, x, extra):
        """The LPIPS term of x̂ vs x: a subclass's `perceptual_loss(recon, x)` when it defines
        one, else LPIPS (seaweed_jax/eval/lpips.py, the mean over clips and frames) with the
        frozen weights extra['lpips'] = state.extra['lpips'] (step arguments, not jit constants)."""
        if self.perceptual_loss is not None:
            return self.perceptual_loss(recon, x)
        if not extra or "lpips" not in extra:
            raise ValueError("loss.lpips_weight > 0: pass extra=state.extra (it holds the LPIPS "
                             "weights under 'lpips') to the VAE loss functions")
        return lpips_lib.perceptual_loss(extra["lpips"], recon, x)

    def _rec_terms(self, outs, x, extra=None):
        """{'l1': .., ['lpips': ..]}: the terms the adaptive weight balances against. `extra`
        (state.extra) carries the LPIPS weights when lpips_weight > 0."""
        err = outs["recon"].astype(jnp.float32) - x
        terms = {"l1": jnp.mean(jnp.abs(err))}
        if self.lc.l2_weight > 0:
            terms["l2"] = jnp.mean(jnp.square(err))
        if self.lc.lpips_weight > 0:
            terms["lpips"] = self._perceptual_term(outs["recon"], x, extra)
        return terms

    def _rec_loss(self, outs, x, extra=None):
        t = self._rec_terms(outs, x, extra)
        return (self.lc.l1_weight * t["l1"] + self.lc.l2_weight * t.get("l2", 0.0)
                + self.lc.lpips_weight * t.get("lpips", 0.0))

    def _reg_terms(self, outs, x):
        """{'kl': .., ['wl': ..]} normalized by loss.reg_norm (module docstring): relative to the
        per-pixel reconstruction terms they have WF-VAE's ratios with 'frame'."""
        frame = self.lc.reg_norm == "frame"
        kl_clip = jnp.mean(kl_divergence(outs["mean"], outs["logvar"]))   # sum per clip, mean
        frame_pixels = int(np.prod(x.shape[2:]))                         # H*W*C of (B,T,H,W,C)
        terms = {"kl": kl_clip / (frame_pixels if frame else x[0].size)}
        if self.wavelet:
            terms["wl"] = wavelet_loss(outs["subbands_pred"], outs["subbands_true"],
                                       frame_pixels=frame_pixels if frame else None)
        return terms

    def _reg_loss(self, outs, x):
        t = self._reg_terms(outs, x)
        return self.lc.kl_weight * t["kl"] + self.lc.wl_weight * t.get("wl", 0.0)

    def _disc_logits(self, extra, video, *, update: bool):
        variables = {"params": extra["disc_params"], SPECTRAL: extra["disc_stats"]}
        if update:
            return self.disc.apply(variables, video, update_stats=True, mutable=[SPECTRAL])
        return self.disc.apply(variables, video), None

    def _disc_weights(self):
        return {"2d": self.lc.disc_2d_weight, "3d": self.lc.disc_3d_weight}

    def _g_adv(self, extra, recon):
        logits, _ = self._disc_logits(extra, recon, update=False)
        w = self._disc_weights()
        return sum(w[k] * hinge_g_loss(v) for k, v in logits.items())

    def _forward(self, params, x, rng):
        sample = jax.random.fold_in(rng, 1) if self.lc.sample_posterior else None
        return self.model.apply({"params": params}, x, sample_rng=sample)

    # ------------------------------------------------------------------ steps

    def _metrics(self, outs, x, extra, *, loss, grads, extra_metrics):
        m = {"loss": loss, "grad_norm": optimizers.global_norm(grads)}
        m.update({f"loss_{k}": v for k, v in self._rec_terms(outs, x, extra).items()})
        m.update({f"loss_{k}": v for k, v in self._reg_terms(outs, x).items()})
        m["latent_std"] = jnp.std(outs["mean"])
        m.update(extra_metrics)
        return m

    def _zero_adv_metrics(self):
        names = ["loss_g_adv", "adv_lambda", "disc_loss", "disc_grad_norm", "disc_active"]
        names += [f"disc_{k}_{s}" for k in ("2d", "3d") if self._disc_weights()[k] > 0
                  for s in ("real", "fake")]
        return {n: jnp.zeros((), jnp.float32) for n in names}

    def _vae_step(self, state, x, rng):
        def loss_fn(p):
            outs = self._forward(p, x, rng)
            return self._rec_loss(outs, x, state.extra) + self._reg_loss(outs, x), outs

        (loss, outs), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new = state.apply_gradients(grads)
        extra = self._zero_adv_metrics() if self.adversarial else {}
        return new, self._metrics(outs, x, state.extra, loss=loss, grads=grads, extra_metrics=extra)

    def _gan_step(self, state, x, rng):
        lc = self.lc
        outs, vjp = jax.vjp(lambda p: self._forward(p, x, rng), state.params)
        rec, cot_rec = jax.value_and_grad(self._rec_loss)(outs, x, state.extra)   # d/d outs only
        reg, cot_reg = jax.value_and_grad(self._reg_loss)(outs, x)
        adv, cot_adv_recon = jax.value_and_grad(lambda r: self._g_adv(state.extra, r))(outs["recon"])
        cot_adv = jax.tree.map(jnp.zeros_like, outs)
        cot_adv["recon"] = cot_adv_recon
        if lc.adaptive_weight:
            # Only the last-layer leaf of these two VJPs is used: XLA prunes the rest.
            g_rec = _get_path(vjp(cot_rec)[0], lc.last_layer)
            g_adv = _get_path(vjp(cot_adv)[0], lc.last_layer)
            lam = jnp.linalg.norm(g_rec) / (jnp.linalg.norm(g_adv) + 1e-4)
            lam = lc.adv_weight * jnp.clip(lam, 0.0, lc.adaptive_weight_max)
        else:
            lam = jnp.asarray(lc.adv_weight, jnp.float32)
        lam = jax.lax.stop_gradient(lam)
        cot = jax.tree.map(lambda a, b, c: a + b + lam * c, cot_rec, cot_reg, cot_adv)
        (grads,) = vjp(cot)
        loss = rec + reg + lam * adv
        new = state.apply_gradients(grads)

        # D update on real x and the (fixed) reconstruction, spectral-norm vectors advanced.
        fake = jax.lax.stop_gradient(outs["recon"]).astype(jnp.float32)
        both = jnp.concatenate([x, fake], axis=0)
        n = x.shape[0]
        weights = self._disc_weights()

        def d_loss_fn(dparams):
            extra = dict(state.extra, disc_params=dparams)
            logits, updates = self._disc_logits(extra, both, update=True)
            terms = {k: hinge_d_loss(v[:n], v[n:]) for k, v in logits.items()}
            aux = {f"disc_{k}_real": jnp.mean(v[:n]) for k, v in logits.items()}
            aux.update({f"disc_{k}_fake": jnp.mean(v[n:]) for k, v in logits.items()})
            return sum(weights[k] * t for k, t in terms.items()), (updates, aux)

        (d_loss, (updates, d_aux)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
            state.extra["disc_params"])
        d_upd, d_opt = self.disc_tx.update(d_grads, state.extra["disc_opt_state"],
                                           state.extra["disc_params"])
        new_extra = {**state.extra,   # + the frozen LPIPS weights, passed through unchanged
                     "disc_params": optax.apply_updates(state.extra["disc_params"], d_upd),
                     "disc_stats": updates[SPECTRAL], "disc_opt_state": d_opt}
        new = new.replace(extra=new_extra)
        extra_metrics = {"loss_g_adv": adv, "adv_lambda": lam, "disc_loss": d_loss,
                         "disc_grad_norm": optimizers.global_norm(d_grads),
                         "disc_active": jnp.ones((), jnp.float32), **d_aux}
        return new, self._metrics(outs, x, state.extra, loss=loss, grads=grads,
                                  extra_metrics=extra_metrics)

    def step_phase(self, step: int):
        """'vae' before loss.disc_start_step, 'gan' from it on (None without a GAN)."""
        if not self.adversarial:
            return None
        return "gan" if step >= self.lc.disc_start_step else "vae"

    def train_step(self, state, batch, rng, phase=None):
        """phase 'gan': G update with the adversarial term, then D update; 'vae' (or None
        with the GAN off): VAE losses only, D untouched. Without a phase (direct callers) it
        is chosen from state.step with a lax.cond (correct, but slow on CPU)."""
        x = batch["video"].astype(jnp.float32)
        if not self.adversarial or phase == "vae":
            return self._vae_step(state, x, rng)
        if phase == "gan":
            return self._gan_step(state, x, rng)
        if phase is not None:
            raise ValueError(f"unknown VAE train phase {phase!r}; expected 'vae' or 'gan'")
        return jax.lax.cond(state.step >= self.lc.disc_start_step,
                            self._gan_step, self._vae_step, state, x, rng)

    # ------------------------------------------------------------------ host side

    def flops_per_step(self, batch):
        """XLA cost analysis of the VAE-only step (forward + backward); the adversarial branch
        adds the discriminators (small next to the VAE) and the last-layer VJPs."""
        try:
            x = jax.ShapeDtypeStruct(batch["video"].shape, jnp.float32)
            params = jax.eval_shape(lambda: nn.unbox(self.model.init(
                {"params": jax.random.key(0)}, jnp.zeros((1,) + x.shape[1:]))["params"]))

            extra = {} if self.lpips_host is None else {"lpips": jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32), self.lpips_host)}

            def f(p, x, extra):
                def loss_fn(p):
                    outs = self._forward(p, x, jax.random.key(0))
                    return self._rec_loss(outs, x, extra) + self._reg_loss(outs, x)
                return jax.grad(loss_fn)(p)
            cost = jax.jit(f).lower(params, x, extra).cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            return float(cost.get("flops", 0.0)) or None
        except Exception:  # best effort: the loop falls back to its own estimate
            return None

    def eval_params(self, state):
        return state.ema_params if state.ema_params is not None else state.params

    def codec(self, state) -> codec_lib.VAECodec:
        """The VAE being trained as a codec (EMA params when kept; identity normalization)."""
        return codec_lib.VAECodec(self.config.model, self.eval_params(state), mesh=self.mesh)

    def evaluate(self, state, *, data_dir, workdir, step):
        del workdir, step
        out = reconstruction.evaluate_split(self.codec(state).reconstruct, self.config.data,
                                            data_dir=data_dir)
        # psnr: per frame, averaged (the papers'); psnr_video: per video (MSE over the clip)
        return {"psnr": out["psnr"], "psnr_video": out["psnr_video"],
                "ssim": out["ssim"] if out["ssim"] is not None else float("nan")}

    def on_train_end(self, state, *, workdir, data_dir):
        """Write W/latent_stats.json from the final (EMA) params."""
        stats = reconstruction.latent_stats(self.codec(state).posterior_means, self.config.data,
                                            data_dir=data_dir,
                                            num_examples=int(self.lc.latent_stats_examples))
        stats.update(step=int(state.step), params="ema" if state.ema_params is not None else "params")
        path = codec_lib.write_stats(workdir, stats)
        if jax.process_index() == 0:
            print(f"latent stats ({stats['num_examples']} train clips) -> {path}", flush=True)
