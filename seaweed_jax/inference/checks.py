"""Does a run follow its prompts? The prompt checker on VAE reconstructions, on samples, on I2V.

What `python -m seaweed_jax.check vae|samples|i2v` runs (moving_shapes runs only: the checker
reads colour / shape / direction back from the pixels, `moving_shapes/checker.py`).

* `check_vae`: reconstruct the first N validation clips with the frozen VAE the DiT trains
  and samples with (EMA params + latent normalization) and score the reconstructions against
  the clips' true labels, plus PSNR. The checker's accuracy on reconstructions is the ceiling
  for the DiT's samples: a VAE that blurs the shapes away caps it whatever the DiT learns.
* `check_samples`: score DIR/{i:03d}.npy (what `sample` writes) against their prompts.
* `check_i2v`: for the first N validation clips, the first frame is the image and the caption
  the prompt; reports the first generated frame's PSNR against the image (the VAE's
  reconstruction of it: the sampler keeps that latent frame on its exact path) and the checker
  on the generated videos WITHOUT their first frame.
"""
from __future__ import annotations

import sys

import numpy as np

from seaweed_jax import checkpoint, config_lib, paths
from seaweed_jax.data import datasets, video_io
from seaweed_jax.eval import metrics
from seaweed_jax.inference.dit_sampler import DiTSampler, write_outputs
from seaweed_jax.models.vae import codec as codec_lib
from seaweed_jax.moving_shapes import checker, labels

SCORE_KEYS = ("color", "shape", "direction", "all")
LABEL_KEYS = ("color", "shape", "direction", "background")


def check_vae(vae_workdir: str, data_dir: str | None = None, num_examples: int = 32,
              batch_size: int = 8, output_dir: str | None = None) -> dict:
    """Checker + PSNR on the VAE's reconstructions (see the module docstring); with
    `output_dir`, writes vae_check.json and vae_reconstructions.png (originals and
    reconstructions in alternating rows)."""
    config = checkpoint.load_config(vae_workdir)
    data_dir = config_lib.data_dir_for(config, data_dir)
    source = dict(config.data.sources[0])
    data = config.data
    split = data.get("val_split", "validation")
    src = datasets.data_source(source["name"], split, data_dir, int(data.get("dataset_seed", 0)),
                               data.get("num_train", None), data.get("num_validation", None))
    n = min(int(num_examples), len(src))
    if n == 0:
        raise ValueError(f"{source['name']} {split} is empty")
    examples = [src[i] for i in range(n)]
    originals = np.stack([np.asarray(ex["video"], np.uint8) for ex in examples])
    truth = [{k: labels.label_name(k, ex[k]) for k in LABEL_KEYS} for ex in examples]

    vae = codec_lib.load(vae_workdir)
    recons = []
    for b0 in range(0, n, batch_size):
        chunk = originals[b0:b0 + batch_size]
        real = len(chunk)
        if real < batch_size:   # one compiled shape
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, 0)])
        recons.append(video_io.to_uint8(vae.decode(vae.encode(video_io.to_float(chunk))))[:real])
    recons = np.concatenate(recons)

    original_scores = checker.score(list(originals), truth)
    recon_scores = checker.score(list(recons), truth)
    summary = {"vae_workdir": paths.display(vae_workdir), "vae_step": vae.step,
               "num_examples": n, "psnr": float(metrics.mean_frame_psnr(originals, recons, max_db=100.0)),
               "psnr_video": float(metrics.mean_psnr(originals, recons)),
               "checker_on_reconstructions": {k: recon_scores[k] for k in SCORE_KEYS},
               "checker_on_originals": {k: original_scores[k] for k in SCORE_KEYS}}
    if output_dir:
        paths.write_json(paths.run_path(output_dir) / "vae_check.json", summary)
        rows = [v for pair in zip(originals[:8], recons[:8]) for v in pair]
        video_io.write_contact_sheet(paths.run_path(output_dir) / "vae_reconstructions.png", rows)
    return summary


def read_prompts(path: str) -> list[str]:
    """One prompt per non-blank line."""
    if not paths.run_path(path).exists():
        raise FileNotFoundError(f"prompts file {paths.display(path)} does not exist; pass a text "
                                f"file with one prompt per line")
    prompts = [line.strip() for line in paths.read_text(path).splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {paths.display(path)} has no prompts; write one prompt "
                         f"per line")
    return prompts


def load_samples(samples_dir: str, n: int) -> list[np.ndarray]:
    files = [paths.run_path(samples_dir) / f"{i:03d}.npy" for i in range(n)]
    missing = [p for p in files if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {n} sample files missing, e.g. {missing[0]}; "
                                f"run `python -m seaweed_jax.sample --output_dir={samples_dir} ...` "
                                f"with the same prompts file first")
    return [video_io.read_video(p) for p in files]


def check_samples(samples_dir: str, prompts: list[str]) -> dict:
    """{"summary": accuracies, "videos": per-video predictions} for DIR's first len(prompts)
    videos; also written to DIR/scores.json."""
    videos = load_samples(samples_dir, len(prompts))
    s = checker.score(videos, prompts)
    per_video = [{"index": i, "prompt": p, "predicted": r["predicted"],
                  **{k: r[k] for k in ("color_ok", "shape_ok", "direction_ok", "all_ok")}}
                 for i, (p, r) in enumerate(zip(prompts, s["results"]))]
    out = {"summary": {k: s[k] for k in ("color", "shape", "direction", "all", "background", "n")},
           "videos": per_video}
    paths.write_json(paths.run_path(samples_dir) / "scores.json", out)
    return out


def check_prompts(videos, prompts) -> dict:
    """Checker accuracies (colour, shape, direction, all) of videos vs prompts."""
    s = checker.score(list(videos), list(prompts))
    return {k: s[k] for k in ("color", "shape", "direction", "all", "background", "n")}


def check_i2v(workdir: str, *, num: int = 32, steps: int | None = None, seed: int = 5000,
              dataset: str = "moving_shapes/32x32_f17", data_dir: str | None = None,
              output_dir: str | None = None) -> dict:
    """Image-to-video from the first frames of N validation clips (module docstring)."""
    data_dir = config_lib.data_dir_for(checkpoint.load_config(workdir), data_dir)
    _, h, w, t = datasets.parse_name(dataset, data_dir)
    datasets.ensure_built(dataset, data_dir)
    src = datasets.data_source(dataset, "validation", data_dir)
    sampler = DiTSampler(workdir)
    videos, captions, firsts = [], [], []
    info = {}
    for i in range(num):
        ex = src[i]
        cap = ex["caption"].decode() if isinstance(ex["caption"], bytes) else str(ex["caption"])
        image = np.asarray(ex["video"])[0]
        out, info = sampler.generate([cap], seed=seed + i, num_frames=t, height=h, width=w,
                                     steps=steps, image=image, progress=False)
        videos.append(out[0])
        captions.append(cap)
        firsts.append(metrics.psnr(out[0, 0], image))
        print(f"{i:03d} first-frame PSNR {firsts[-1]:.2f} dB  {cap}", file=sys.stderr, flush=True)
    scores = checker.score([v[1:] for v in videos], captions)
    summary = {"n": num, "first_frame_psnr_mean": float(np.mean(firsts)),
               "first_frame_psnr_min": float(np.min(firsts)),
               "first_frame_psnr_ge_25": float(np.mean(np.asarray(firsts) >= 25.0)),
               "later_frames": {k: scores[k] for k in SCORE_KEYS},
               "nfe": info.get("nfe"), "steps": info.get("steps"),
               "cfg_scale": info.get("cfg_scale")}
    if output_dir:
        write_outputs(output_dir, np.stack(videos), captions)
        paths.write_json(paths.run_path(output_dir) / "i2v_scores.json", summary)
    return summary
