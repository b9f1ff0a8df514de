"""`DiTSampler`: a trained DiT run ready to sample (params, text encoder, its VAE).

    sampler = DiTSampler("runs/dit")
    videos, info = sampler.generate(["a red circle moving right on a black background"])
    write_outputs("out", videos, prompts)

Everything comes from the run's workdir: the DiT params (EMA by default; read alone with
`checkpoint.restore_params`, no optimizer state), the text encoder its config names, and the
VAE run it recorded (`VAECodec.load`). Sampling solves the flow ODE with
`diffusion.samplers` (Euler / Heun, CFG, timestep shift); image-to-video keeps the
conditioned latent frame on its exact path. A CFG-distilled run (`model.cfg_scale_embed`
and `model.negative_embed`) takes the guidance scale and the negative prompt as
inputs: one model call per step instead of two, and its config's sample.steps (= its
segments after TSCD) is the default.
"""
from __future__ import annotations

import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jax.tree_util import Partial
from tqdm import tqdm

from seaweed_jax import checkpoint, paths
from seaweed_jax.data import video_io
from seaweed_jax.diffusion import distill, samplers
from seaweed_jax.models.vae import codec as codec_lib
from seaweed_jax.parallel import make_mesh
from seaweed_jax.parallel.sharding import unbox
from seaweed_jax.trainer import dit_task, distill_task
from seaweed_jax.trainer.loop import init_rng
from seaweed_jax.trainer.task import get_task

SAMPLED_TASKS = ("dit", "distill")


def load_params(workdir: str, *, step: int | None = None, use_ema: bool = True, mesh=None,
                tasks: tuple[str, ...] = SAMPLED_TASKS):
    """(config, task, params, step) of a DiT-family run (a task of `tasks`): only the params
    (EMA if asked and kept) are read, replicated on the local devices of `mesh` (default: a
    1-device mesh)."""
    config = checkpoint.load_config(workdir, step)
    if config.task not in tasks:
        raise ValueError(f"{workdir} is a {config.task!r} run, not a run of {tasks}")
    if mesh is None:
        mesh = make_mesh(mc.ConfigDict({"shape": {"data": 1, "fsdp": 1, "tensor": 1, "context": 1}}),
                         devices=jax.local_devices()[:1])
    task = get_task(config.task)(config, mesh)
    abstract = jax.eval_shape(task.init, init_rng(config.seed), task.example_batch())
    key = checkpoint.params_key(config, use_ema)
    target = checkpoint.abstract_on(unbox(abstract.params), NamedSharding(mesh, P()))
    params, got = checkpoint.restore_params(workdir, target, key=key, step=step)
    return config, task, params, got


class DiTSampler:
    """A DiT run ready to sample: params, text encoder, frozen VAE (from the run's config)."""

    def __init__(self, workdir: str, *, step: int | None = None, use_ema: bool = True):
        self.workdir = workdir
        self.config, self.task, self.params, self.step = load_params(
            workdir, step=step, use_ema=use_ema)
        self.vae = codec_lib.load(dit_task.resolve_vae_workdir(self.config, workdir),
                                  self.config.get("vae_step", None),
                                  bool(self.config.get("vae_use_ema", True)))
        if self.vae.latent_channels != int(self.config.model.latent_channels):
            raise ValueError(f"the VAE at {self.vae.workdir} has {self.vae.latent_channels} latent "
                             f"channels but the DiT expects {self.config.model.latent_channels}")
        self.sample_cfg = dit_task.sample_config(self.config)
        # Guidance embedded in the model (CFG-distilled): one call per step, w is an input.
        self.embedded_guidance = distill_task.embedded_guidance(self.config.model)
        task = self.task

        def velocity_fn(params, x, t, inputs):
            v = task.velocity(params, x, t, inputs["emb"], inputs["mask"], inputs.get("cond"),
                              inputs.get("w"), inputs.get("negative"))
            if "cond" in inputs:
                # Conditioned frames move along their exact path (1 - t) c + t noise, whose
                # velocity is noise - c: they end at c exactly and stay in-distribution.
                c, m = inputs["cond"][..., :-1], inputs["cond"][..., -1:]
                v = jnp.where(m > 0, inputs["noise"] - c, v)
            return v

        self._velocity_fn = velocity_fn
        self._sharding = jax.tree.leaves(self.params)[0].sharding
        self._encode_text = jax.jit(task.encode_text)

    # ------------------------------------------------------------------ helpers
    def default_size(self) -> tuple[int, int, int]:
        return dit_task.training_video_size(self.config)

    def latent_shape(self, num_frames: int, height: int, width: int):
        t, h, w, c = self.vae.latent_shape(num_frames, height, width)
        patch = tuple(self.config.model.patch_size)
        for name, size, p, f in zip(("num_frames", "height", "width"), (t, h, w), patch,
                                    self.vae.compression):
            if size % p:
                raise ValueError(
                    f"{name}: the latent {name} {size} is not divisible by the DiT patch size {p}; "
                    f"use a {name} whose latent size (÷{f}) is a multiple of {p}")
        return (t, h, w, c)

    def text(self, prompts: Sequence[str]):
        ids, mask = self.task.text.tokenize(list(prompts))
        return self._encode_text(self.params, jnp.asarray(ids), jnp.asarray(mask))

    def condition_latents(self, image: np.ndarray, latent_shape) -> np.ndarray:
        """(t, h, w, C + 1) condition: the image's latent in frame 0 + mask channel."""
        if not dit_task.conditioning(self.config.model):
            raise ValueError("--image needs a model trained with conditioning (model.in_channels = "
                             "2 * latent_channels + 1); this run is text-to-video only")
        x = video_io.to_float(image)[None, None]
        z0 = self.vae.encode(x)[0, 0]                                   # (h, w, C)
        t, h, w, c = latent_shape
        cond = np.zeros((t, h, w, c + 1), np.float32)
        cond[0, ..., :c] = z0
        cond[0, ..., c] = 1.0
        return cond

    # ------------------------------------------------------------------ sampling
    def generate(self, prompts: Sequence[str], *, seed: int = 0, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, steps: int | None = None,
                 cfg_scale: float | None = None, negative_prompt: str = "",
                 image: np.ndarray | None = None, sampler: str | None = None,
                 shift: float | None = None, batch_size: int = 8, progress: bool = True, return_latents: bool = False):
        """uint8 videos (N, T, H, W, 3) for `prompts` (prompt i with seed + i) and an info
        dict (nfe, steps, cfg_scale, sampler, size). `info["nfe"]` counts every model call
        per sample: steps (Euler) or 2 steps - 1 (Heun), doubled with CFG."""
        d_t, d_h, d_w = self.default_size()
        num_frames, height, width = num_frames or d_t, height or d_h, width or d_w
        steps = int(self.sample_cfg.steps if steps is None else steps)   # 0 is an error, not 50
        cfg_scale = float(self.sample_cfg.cfg_scale if cfg_scale is None else cfg_scale)
        sampler = sampler or self.sample_cfg.sampler
        shift = float(self.sample_cfg.shift if shift is None else shift)
        if shift <= 0:
            raise ValueError(f"--shift={shift} must be > 0 (1 = unshifted timesteps)")
        if sampler not in samplers.METHODS:
            raise ValueError(f"--sampler={sampler!r}; use one of {samplers.METHODS}")
        if steps < 1:
            raise ValueError(f"--steps={steps} must be >= 1")
        if batch_size < 1:
            raise ValueError(f"--batch_size={batch_size} must be >= 1")
        lshape = self.latent_shape(num_frames, height, width)
        if image is not None and image.shape != (height, width, 3):
            raise ValueError(f"image is {image.shape}; expected ({height}, {width}, 3)")
        cond = None if image is None else self.condition_latents(image, lshape)

        neg_emb, neg_mask = self.text([negative_prompt])
        fn = Partial(self._velocity_fn, self.params)
        n = len(prompts)
        n_batches = -(-n // batch_size)
        bar = None
        if progress:
            bar = tqdm(total=n_batches * steps, desc="sampling", unit="step", file=sys.stderr,
                       dynamic_ncols=True, mininterval=0.5)
        out, latents_out, nfe = [], [], 0
        for b0 in range(0, n, batch_size):
            chunk = list(prompts[b0:b0 + batch_size])
            real = len(chunk)
            chunk += [chunk[-1]] * (batch_size - real) if n > batch_size else []  # one shape
            bsz = len(chunk)
            noise = jnp.stack([jax.random.normal(jax.random.key(seed + b0 + i), lshape, jnp.float32)
                               for i in range(bsz)])
            emb, mask = self.text(chunk)
            inputs = {"emb": emb, "mask": mask}
            uncond = {"emb": jnp.broadcast_to(neg_emb, emb.shape),
                      "mask": jnp.broadcast_to(neg_mask, mask.shape)}
            if self.embedded_guidance:
                inputs["w"] = jnp.full((bsz,), cfg_scale, jnp.float32)
                inputs["negative"] = jnp.broadcast_to(distill.mean_pool(neg_emb, neg_mask),
                                                      (bsz, neg_emb.shape[-1]))
            if cond is not None:
                c = jnp.broadcast_to(jnp.asarray(cond), (bsz,) + cond.shape)
                inputs.update(cond=c, noise=noise)
                uncond.update(cond=c, noise=noise)
            # Place everything like the params (outputs of the step are placed there too), so
            # the first solver step compiles the same executable as the later ones.
            noise, inputs, uncond = jax.device_put((noise, inputs, uncond), self._sharding)
            callback = (lambda i, total, t, x: bar.update(1)) if bar is not None else None
            two_pass = cfg_scale != 1.0 and not self.embedded_guidance
            res = samplers.sample(
                fn, noise, inputs,
                uncond if two_pass else None, num_steps=steps, method=sampler,
                cfg_scale=cfg_scale, shift=shift, callback=callback)
            nfe = res.nfe
            z = np.asarray(res.x)[:real]
            latents_out.append(z)
            out.append(video_io.to_uint8(self.vae.decode(z)))
        if bar is not None:
            bar.close()
        videos = np.concatenate(out)
        info = dict(nfe=nfe, steps=steps, cfg_scale=cfg_scale, sampler=sampler, shift=shift,
                    guidance="embedded" if self.embedded_guidance else "two-pass",
                    num_frames=num_frames, resolution=f"{height}x{width}",
                    latent_shape=list(lshape), i2v=image is not None, dit_step=self.step,
                    vae_step=self.vae.step)
        if return_latents:
            info["latents"] = np.concatenate(latents_out)
        return videos, info


def write_outputs(output_dir: str, videos: np.ndarray, prompts: Sequence[str],
                  fps: float = 8.0) -> dict:
    """{i:03d}.mp4 + {i:03d}.npy per video, contact_sheet.png and prompts.txt (line i = the
    prompt of video i, what `check samples` reads); returns the paths."""
    out = paths.run_path(output_dir)
    paths.write_text(out / "prompts.txt", "".join(p + "\n" for p in prompts))
    files = []
    for i, v in enumerate(videos):
        mp4 = video_io.write_mp4(out / f"{i:03d}.mp4", v, fps=fps)
        npy = video_io.write_npy(out / f"{i:03d}.npy", v)
        files.append({"prompt": prompts[i], "mp4": mp4, "npy": npy})
    sheet = video_io.write_contact_sheet(out / "contact_sheet.png", list(videos),
                                         labels=[p[:60] for p in prompts])
    return {"files": files, "contact_sheet": sheet}
