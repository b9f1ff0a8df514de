"""Sample videos from a DiT run: `python -m seaweed_jax.sample --workdir=W --prompt="..."`.

    --workdir=W              the DiT run (its config names the VAE run and text encoder)
    --prompt=TEXT | --prompts_file=F   one prompt, or one per line (blank lines skipped)
    --num_frames=17 --resolution=HxW   default: the model's training size (config.sample /
                             the first video source); checked against the VAE's factors
    --steps=50               ODE solver steps; NFE = steps (euler) or 2 x steps (heun), x2 with CFG
    --cfg_scale=S            default: the value the model was tuned for (config.sample.cfg_scale)
    --negative_prompt=TEXT   the unconditional branch of CFG (default: the empty prompt)
    --seed=K                 prompt i uses seed K + i (its noise does not depend on batching)
    --image=first_frame.png  image-to-video: the first frame is this image (resized to HxW);
                             the conditioned latent frame is kept on its exact flow path, so
                             the first output frame is the VAE's reconstruction of the image
    --step=N --use_ema=true  which checkpoint / params (EMA by default when the run has them)
    --sampler=euler|heun     default: config.sample.sampler
    --shift=S                timestep shift of the solver grid, t' = S t / (1 + (S - 1) t);
                             S > 1 spends more steps at high noise (default: config.sample.shift)
    --output_dir=O           default W/samples; writes {i:03d}.mp4, {i:03d}.npy (uint8
                             (T, H, W, 3)) and contact_sheet.png
    --check                  also score the videos with eval.prompt_checker (colour / shape /
                             direction) against their prompts and print the accuracies
    --canonical_prompts=N --prompt_seed=S   instead of --prompt: N canonical moving_shapes
                             captions with random labels drawn with seed S

Progress goes to stderr; stdout ends with one JSON line {files, contact_sheet, nfe, ...}.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

import numpy as np

# ----------------------------------------------------------------------------- library


def parse_resolution(text: str) -> tuple[int, int]:
    """'32x48' -> (32, 48) (height first)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--resolution={text!r} must be HxW (height first), e.g. 32x32") from None
    if h < 1 or w < 1:
        raise ValueError(f"--resolution={text!r} must be positive")
    return h, w


def canonical_prompts(n: int, seed: int, video: bool = True) -> list[str]:
    """N canonical moving_shapes captions with labels drawn uniformly with `seed`."""
    from seaweed_jax.data import moving_shapes as ms
    rng = np.random.default_rng([seed, 7919])
    out = []
    for _ in range(n):
        out.append(ms.canonical_caption(
            color=ms.COLOR_NAMES[rng.integers(len(ms.COLOR_NAMES))],
            shape=ms.SHAPES[rng.integers(len(ms.SHAPES))],
            direction=ms.DIRECTIONS[rng.integers(len(ms.DIRECTIONS))] if video else "still",
            background=ms.BACKGROUND_NAMES[rng.integers(len(ms.BACKGROUND_NAMES))]))
    return out


def load_image(path: str, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) from an image file, resized (bilinear) to height x width if needed."""
    from PIL import Image
    try:
        img = Image.open(path).convert("RGB")
    except (OSError, ValueError) as e:
        raise ValueError(f"--image={path!r} cannot be read as an image: {e}") from None
    if img.size != (width, height):
        print(f"note: --image is {img.size[1]}x{img.size[0]}; resized to {height}x{width}",
              file=sys.stderr)
        img = img.resize((width, height), Image.BILINEAR)
    return np.asarray(img, np.uint8)


class DiTSampler:
    """A DiT run ready to sample: params, text encoder, frozen VAE (from the run's config)."""

    def __init__(self, workdir: str, *, step: int | None = None, use_ema: bool = True):
        import jax
        from seaweed_jax.data.latent_cache import FrozenVAE
        from seaweed_jax.trainer import dit_task

        self.workdir = workdir
        self.config, self.task, self.params, self.step = dit_task.load_params(
            workdir, step=step, use_ema=use_ema)
        self.vae = FrozenVAE.load(dit_task.resolve_vae_workdir(self.config, workdir),
                                  self.config.get("vae_step", None),
                                  bool(self.config.get("vae_use_ema", True)))
        if self.vae.latent_channels != int(self.config.model.latent_channels):
            raise ValueError(f"the VAE at {self.vae.workdir} has {self.vae.latent_channels} latent "
                             f"channels but the DiT expects {self.config.model.latent_channels}")
        self.sample_cfg = dit_task.sample_config(self.config)
        task = self.task

        def velocity_fn(params, x, t, inputs):
            v = task.velocity(params, x, t, inputs["emb"], inputs["mask"], inputs.get("cond"))
            if "cond" in inputs:
                # Conditioned frames move along their exact path (1 - t) c + t noise, whose
                # velocity is noise - c: they end at c exactly and stay in-distribution.
                c, m = inputs["cond"][..., :-1], inputs["cond"][..., -1:]
                v = jax.numpy.where(m > 0, inputs["noise"] - c, v)
            return v

        self._velocity_fn = velocity_fn
        self._sharding = jax.tree.leaves(self.params)[0].sharding
        self._encode_text = jax.jit(task.encode_text)

    # ------------------------------------------------------------------ helpers
    def default_size(self) -> tuple[int, int, int]:
        from seaweed_jax.trainer import dit_task
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
        import jax.numpy as jnp
        ids, mask = self.task.text.tokenize(list(prompts))
        return self._encode_text(self.params, jnp.asarray(ids), jnp.asarray(mask))

    def condition_latents(self, image: np.ndarray, latent_shape) -> np.ndarray:
        """(t, h, w, C + 1) condition: the image's latent in frame 0 + mask channel."""
        from seaweed_jax.trainer import dit_task
        if not dit_task.conditioning(self.config.model):
            raise ValueError("--image needs a model trained with conditioning (model.in_channels = "
                             "2 * latent_channels + 1); this run is text-to-video only")
        x = image.astype(np.float32)[None, None] / 127.5 - 1.0
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
        dict (nfe, steps, cfg_scale, sampler, size)."""
        import jax
        import jax.numpy as jnp
        from jax.tree_util import Partial

        from seaweed_jax.data.video_io import to_uint8
        from seaweed_jax.diffusion import samplers

        d_t, d_h, d_w = self.default_size()
        num_frames, height, width = num_frames or d_t, height or d_h, width or d_w
        steps = int(steps or self.sample_cfg.steps)
        cfg_scale = float(self.sample_cfg.cfg_scale if cfg_scale is None else cfg_scale)
        sampler = sampler or self.sample_cfg.sampler
        shift = float(self.sample_cfg.shift if shift is None else shift)
        if shift <= 0:
            raise ValueError(f"--shift={shift} must be > 0 (1 = unshifted timesteps)")
        if sampler not in samplers.METHODS:
            raise ValueError(f"--sampler={sampler!r}; use one of {samplers.METHODS}")
        if steps < 1:
            raise ValueError(f"--steps={steps} must be >= 1")
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
            from tqdm import tqdm
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
            if cond is not None:
                c = jnp.broadcast_to(jnp.asarray(cond), (bsz,) + cond.shape)
                inputs.update(cond=c, noise=noise)
                uncond.update(cond=c, noise=noise)
            # Place everything like the params (outputs of the step are placed there too), so
            # the first solver step compiles the same executable as the later ones.
            noise, inputs, uncond = jax.device_put((noise, inputs, uncond), self._sharding)
            callback = (lambda i, total, t, x: bar.update(1)) if bar is not None else None
            res = samplers.sample(
                fn, noise, inputs,
                uncond if cfg_scale != 1.0 else None, num_steps=steps, method=sampler,
                cfg_scale=cfg_scale, shift=shift, callback=callback)
            nfe = res.nfe
            z = np.asarray(res.x)[:real]
            latents_out.append(z)
            out.append(to_uint8(self.vae.decode(z)))
        if bar is not None:
            bar.close()
        videos = np.concatenate(out)
        info = dict(nfe=nfe, steps=steps, cfg_scale=cfg_scale, sampler=sampler, shift=shift,
                    num_frames=num_frames, resolution=f"{height}x{width}",
                    latent_shape=list(lshape), i2v=image is not None, dit_step=self.step,
                    vae_step=self.vae.step)
        if return_latents:
            info["latents"] = np.concatenate(latents_out)
        return videos, info


def write_outputs(output_dir: str, videos: np.ndarray, prompts: Sequence[str],
                  fps: float = 8.0) -> dict:
    """{i:03d}.mp4 + {i:03d}.npy per video and contact_sheet.png; returns the paths."""
    from seaweed_jax.data import video_io
    os.makedirs(output_dir, exist_ok=True)
    files = []
    for i, v in enumerate(videos):
        mp4 = video_io.write_mp4(os.path.join(output_dir, f"{i:03d}.mp4"), v, fps=fps)
        npy = video_io.write_npy(os.path.join(output_dir, f"{i:03d}.npy"), v)
        files.append({"prompt": prompts[i], "mp4": mp4, "npy": npy})
    sheet = video_io.write_contact_sheet(os.path.join(output_dir, "contact_sheet.png"), list(videos),
                                         labels=[p[:60] for p in prompts])
    return {"files": files, "contact_sheet": sheet}


def check_prompts(videos, prompts) -> dict:
    """Prompt-checker accuracies (colour, shape, direction, all) of videos vs prompts."""
    from seaweed_jax.eval import prompt_checker
    s = prompt_checker.score(list(videos), list(prompts))
    return {k: s[k] for k in ("color", "shape", "direction", "all", "background", "n")}


# ----------------------------------------------------------------------------- CLI

def _flags():
    from absl import flags
    f = flags
    f.DEFINE_string("workdir", None, "DiT run directory.")
    f.DEFINE_string("prompt", None, "One prompt.")
    f.DEFINE_string("prompts_file", None, "A file with one prompt per line.")
    f.DEFINE_integer("num_frames", None, "Frames (1+4k); default: the training size.")
    f.DEFINE_string("resolution", None, "HxW (height first); default: the training size.")
    f.DEFINE_integer("steps", None, "ODE solver steps (default 50 / config.sample.steps).")
    f.DEFINE_float("cfg_scale", None, "Guidance scale (default: config.sample.cfg_scale).")
    f.DEFINE_string("negative_prompt", "", "Prompt of the unconditional CFG branch.")
    f.DEFINE_integer("seed", 0, "Prompt i uses seed + i.")
    f.DEFINE_string("image", None, "First-frame image for image-to-video.")
    f.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
    f.DEFINE_bool("use_ema", True, "Use the EMA params (when the run kept them).")
    f.DEFINE_string("output_dir", None, "Where to write videos (default W/samples).")
    f.DEFINE_enum("sampler", None, ["euler", "heun"], "ODE solver (default: config.sample.sampler).")
    f.DEFINE_float("shift", None, "Timestep shift of the ODE grid (>1 spends more steps at high "
                   "noise; default: config.sample.shift).")
    f.DEFINE_integer("batch_size", 8, "Prompts sampled together.")
    f.DEFINE_bool("check", False, "Score the videos with the prompt checker.")
    f.DEFINE_integer("canonical_prompts", 0, "Use N canonical random-label prompts.")
    f.DEFINE_integer("prompt_seed", 2024, "Seed of --canonical_prompts labels.")
    return f.FLAGS


def _read_prompts(FLAGS) -> list[str]:
    given = [bool(FLAGS.prompt), bool(FLAGS.prompts_file), FLAGS.canonical_prompts > 0]
    if sum(given) != 1:
        raise ValueError("give exactly one of --prompt, --prompts_file, --canonical_prompts")
    if FLAGS.prompt:
        return [FLAGS.prompt]
    if FLAGS.prompts_file:
        if not os.path.exists(FLAGS.prompts_file):
            raise ValueError(f"--prompts_file={FLAGS.prompts_file!r} does not exist")
        with open(FLAGS.prompts_file) as f:
            prompts = [line.strip() for line in f if line.strip()]
        if not prompts:
            raise ValueError(f"--prompts_file={FLAGS.prompts_file!r} has no prompts")
        return prompts
    return canonical_prompts(FLAGS.canonical_prompts, FLAGS.prompt_seed)


def main(argv) -> None:
    from absl import app, logging
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; options are --flag=value")
    FLAGS = _FLAGS
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required (a DiT run directory)")
    logging.set_verbosity(logging.WARNING)
    start = time.perf_counter()
    try:
        prompts = _read_prompts(FLAGS)
        height = width = None
        if FLAGS.resolution:
            height, width = parse_resolution(FLAGS.resolution)
        s = DiTSampler(FLAGS.workdir, step=FLAGS.step, use_ema=FLAGS.use_ema)
        d_t, d_h, d_w = s.default_size()
        height, width = height or d_h, width or d_w
        num_frames = FLAGS.num_frames or d_t
        s.latent_shape(num_frames, height, width)          # validate before any work
        unknown = sorted({w for p in prompts for w in s.task.text.tokenizer.unknown_words(p)})
        if unknown:
            print(f"warning: words outside the tokenizer's vocabulary (ignored as <unk>): "
                  f"{unknown}", file=sys.stderr)
        image = load_image(FLAGS.image, height, width) if FLAGS.image else None
        videos, info = s.generate(prompts, seed=FLAGS.seed, num_frames=num_frames, height=height,
                                  width=width, steps=FLAGS.steps, cfg_scale=FLAGS.cfg_scale,
                                  negative_prompt=FLAGS.negative_prompt, image=image,
                                  sampler=FLAGS.sampler, shift=FLAGS.shift,
                                  batch_size=FLAGS.batch_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    out_dir = FLAGS.output_dir or os.path.join(FLAGS.workdir, "samples")
    written = write_outputs(out_dir, videos, prompts, fps=float(s.sample_cfg.fps))
    cfg_note = " (x2 for CFG)" if info["cfg_scale"] != 1.0 else ""
    print(f"NFE per sample: {info['nfe']}{cfg_note} = {info['steps']} {info['sampler']} steps",
          file=sys.stderr)
    result = dict(info, files=[f["mp4"] for f in written["files"]],
                  npy=[f["npy"] for f in written["files"]],
                  contact_sheet=written["contact_sheet"], output_dir=out_dir,
                  num_videos=len(videos), seconds=round(time.perf_counter() - start, 2))
    if FLAGS.check:
        scores = check_prompts(videos, prompts)
        print(f"prompt checker: {scores}", file=sys.stderr)
        result["check"] = scores
    print(json.dumps(result), flush=True)


_FLAGS = None

if __name__ == "__main__":
    from absl import app
    _FLAGS = _flags()
    app.run(main)
