"""Image-to-video check of a DiT run on held-out moving_shapes clips.

    python scripts/check_i2v.py --workdir=W [--num=32] [--steps=50] [--seed=5000]
        [--dataset=moving_shapes/32x32_f17] [--data_dir=D] [--output_dir=O]

For the first N validation clips: the clip's first frame is the --image and its caption the
prompt. Reports the first generated frame's PSNR against the conditioning image (the sampler
keeps the conditioned latent frame on its exact path, so this is the VAE's reconstruction
quality of that image), and the prompt checker's colour / shape / direction on the generated
videos WITHOUT their first frame (do later frames keep the image's colour and shape, and
move as the caption says). Last stdout line: JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--num", type=int, default=32)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=5000)
    p.add_argument("--dataset", default="moving_shapes/32x32_f17")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--output_dir", default=None)
    a = p.parse_args(argv)

    from seaweed_jax import config_lib
    from seaweed_jax.data import datasets
    from seaweed_jax.eval import prompt_checker
    from seaweed_jax.sample import DiTSampler, write_outputs

    from seaweed_jax.trainer import loop
    data_dir = config_lib.data_dir_for(loop.load_config(a.workdir), a.data_dir)
    _, h, w, t = datasets.parse_name(a.dataset)
    datasets.ensure_built(a.dataset, data_dir)
    src = datasets.data_source(a.dataset, "validation", data_dir)
    s = DiTSampler(a.workdir)
    videos, captions, firsts = [], [], []
    for i in range(a.num):
        ex = src[i]
        cap = ex["caption"].decode() if isinstance(ex["caption"], bytes) else str(ex["caption"])
        image = np.asarray(ex["video"])[0]
        out, info = s.generate([cap], seed=a.seed + i, num_frames=t, height=h, width=w,
                               steps=a.steps, image=image, progress=False)
        videos.append(out[0])
        captions.append(cap)
        firsts.append(psnr(out[0, 0], image))
        print(f"{i:03d} first-frame PSNR {firsts[-1]:.2f} dB  {cap}", file=sys.stderr, flush=True)
    later = [v[1:] for v in videos]
    scores = prompt_checker.score(later, captions)
    summary = {"n": a.num, "first_frame_psnr_mean": float(np.mean(firsts)),
               "first_frame_psnr_min": float(np.min(firsts)),
               "first_frame_psnr_ge_25": float(np.mean(np.asarray(firsts) >= 25.0)),
               "later_frames": {k: scores[k] for k in ("color", "shape", "direction", "all")},
               "nfe": info["nfe"], "steps": info["steps"], "cfg_scale": info["cfg_scale"]}
    if a.output_dir:
        write_outputs(a.output_dir, np.stack(videos), captions)
        with open(os.path.join(a.output_dir, "i2v_scores.json"), "w") as f:
            json.dump(summary, f, indent=2)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
