"""Issue 18's tail-initialization experiment on a 2-core CPU. Prints ONE JSON line.

    python benchmarks/odvae_tail_init.py --workdir=runs/odvae_tail_init \
        [--image_steps=1000] [--video_steps=1000] [--val_examples=64] [--data_dir=D]

1. trains the per-frame image VAE (configs/vae/odvae_tiny.py:stage=image) in W/image;
2. scores it on held-out IMAGES: the first frame of each validation clip of
   moving_shapes/32x32_f17 (and on "static clips": that frame repeated 17 times);
3. builds the variant-4-style video VAE (stage=video) tail-initialized from W/image, exactly
   as its training run starts (`vae_task.tail_init_params`, what `on_fresh_start` loads), and
   scores it at step 0 on the same images and static clips (these must equal the image VAE's:
   `image_max_abs_diff_step0` is the largest pixel difference of the two reconstructions) and
   on the whole moving 17-frame clips;
4. trains the video VAE for --video_steps in W/video (config.tail_init_from=W/image) and
   scores images, static and moving clips again (EMA params, as `evaluate` does).

PSNR / SSIM: uint8, mean over clips of per-clip values (`eval.reconstruction.score`), the
metrics `python -m seaweed_jax.evaluate` reports. Runs already in W resume (or are reused when
finished), so a second call only re-scores. Both trainings run in this process on
config.cpu_devices=2 fake CPU devices, as the train CLI does.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

if __name__ == "__main__":  # run as `python benchmarks/odvae_tail_init.py`: import the repo's package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from seaweed_jax import config_lib  # noqa: E402
from seaweed_jax.data import pipeline  # noqa: E402
from seaweed_jax.data.video_io import to_uint8  # noqa: E402
from seaweed_jax.eval import reconstruction  # noqa: E402
from seaweed_jax.models.vae import codec as codec_lib  # noqa: E402
from seaweed_jax.parallel.mesh import use_cpu_devices  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WORKDIR = flags.DEFINE_string("workdir", None, "Experiment root: runs go to W/image and W/video.")
_IMAGE_STEPS = flags.DEFINE_integer("image_steps", 1000, "Image-VAE training steps.")
_VIDEO_STEPS = flags.DEFINE_integer("video_steps", 1000, "Video-VAE training steps after tail init.")
_VAL = flags.DEFINE_integer("val_examples", 64, "Validation clips scored (their first frames = images).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Datasets root (default $SEAWEED_DATA_DIR or ~/seaweed_data).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", None, "Smoke runs: train clips of the dataset (default: its own).")
_NUM_VAL = flags.DEFINE_integer("num_validation", None, "Smoke runs: validation clips of the dataset.")


def _configs_module():
    spec = importlib.util.spec_from_file_location(
        "configs_vae_odvae_tiny", os.path.join(_ROOT, "configs", "vae", "odvae_tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(arg: str, steps: int):
    c = _configs_module().get_config(arg)
    c.num_steps = steps
    c.eval_every = 0              # scored here, on images and clips
    c.ckpt_every = max(1, steps)
    c.log_every = max(1, min(c.log_every, steps))
    c.data.val_examples = _VAL.value
    if _NUM_TRAIN.value:
        c.data.num_train = _NUM_TRAIN.value
    if _NUM_VAL.value:
        c.data.num_validation = _NUM_VAL.value
    return c


def _clips(data_config, data_dir: str) -> np.ndarray:
    """The first val_examples whole validation clips (the video config's eval_crop={}), [-1, 1],
    (N, 17, 32, 32, 3)."""
    batches = pipeline.make_eval_iterator(data_config, data_dir=data_dir)
    return np.concatenate([np.asarray(b["video"], np.float32) for b in batches])


def _score(reconstruct, video: np.ndarray, batch: int = 16) -> tuple[dict, np.ndarray]:
    """({psnr, ssim, num_videos}, reconstructions) of `video` in batches."""
    recon = np.concatenate([reconstruct(video[i:i + batch]) for i in range(0, len(video), batch)])
    psnr, ssim = reconstruction.score(to_uint8(video), to_uint8(recon))
    out = reconstruction.summarize(psnr, ssim)
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}, recon


def _score_all(reconstruct, clips: np.ndarray) -> tuple[dict, np.ndarray]:
    images = clips[:, :1]
    static = np.repeat(images, clips.shape[1], axis=1)
    img, img_recon = _score(reconstruct, images)
    out = {"image": img, "static_clip": _score(reconstruct, static)[0]}
    return out, img_recon


def main(argv) -> None:
    del argv
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required (the experiment's root directory)")
    for name, v in (("image_steps", _IMAGE_STEPS.value), ("video_steps", _VIDEO_STEPS.value),
                    ("val_examples", _VAL.value)):
        if v < 1:
            raise app.UsageError(f"--{name}={v} must be >= 1")
    logging.set_verbosity(logging.WARNING)
    root = os.path.abspath(_WORKDIR.value)
    image_dir, video_dir = os.path.join(root, "image"), os.path.join(root, "video")
    image_cfg = _config("stage=image", _IMAGE_STEPS.value)
    video_cfg = _config(f"stage=video,image={image_dir}", _VIDEO_STEPS.value)
    use_cpu_devices(image_cfg.cpu_devices)   # as the train CLI: before JAX starts its backend

    from seaweed_jax.trainer import loop, vae_task   # after the CPU device count is set
    data_dir = config_lib.data_dir_for(None, _DATA_DIR.value)
    out = {"image_steps": _IMAGE_STEPS.value, "video_steps": _VIDEO_STEPS.value}
    t0 = time.time()
    loop.train(image_cfg, image_dir, data_dir=data_dir)
    out["image_train_s"] = round(time.time() - t0, 1)
    clips = _clips(video_cfg.data, data_dir)
    out["val_clips"] = int(len(clips))

    image_codec = codec_lib.load(image_dir, raw=True)
    out["image_vae"], image_recon = _score_all(image_codec.reconstruct, clips)

    params, what = vae_task.tail_init_params(video_cfg.model, image_dir)
    step0 = codec_lib.VAECodec(video_cfg.model, params)
    out["video_step0"], step0_recon = _score_all(step0.reconstruct, clips)
    out["video_step0"]["moving_clip"] = _score(step0.reconstruct, clips)[0]
    out["image_max_abs_diff_step0"] = float(np.abs(step0_recon - image_recon).max())
    out["tail_init_from"] = what

    t0 = time.time()
    loop.train(video_cfg, video_dir, data_dir=data_dir)
    out["video_train_s"] = round(time.time() - t0, 1)
    trained = codec_lib.load(video_dir, raw=True)
    out["video_trained"], _ = _score_all(trained.reconstruct, clips)
    out["video_trained"]["moving_clip"] = _score(trained.reconstruct, clips)[0]
    out["video_params_key"] = trained.params_key
    out["moving_psnr_gain"] = round(out["video_trained"]["moving_clip"]["psnr"]
                                    - out["video_step0"]["moving_clip"]["psnr"], 3)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    app.run(main)
