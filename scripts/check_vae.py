"""Can the DiT's samples follow their prompts at all? Check the VAE's reconstructions first.

    python scripts/check_vae.py --vae_workdir=W --data_dir=D [--num_examples=32] [--output_dir=O]

Reconstructs the first N validation clips of the VAE run's dataset with the same frozen VAE
(EMA params + latent normalization) the DiT trains and samples with, and scores the
reconstructions with the prompt checker against the clips' true labels, plus PSNR. The
checker's accuracy on reconstructions is the ceiling for the DiT's samples: a VAE that blurs
the shapes away (reconstructions show only the background) caps colour accuracy near 0
whatever the DiT learns. Writes O/vae_check.json and O/vae_reconstructions.png (originals and
reconstructions in alternating rows) when --output_dir is given; the last stdout line is
the JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def check_vae(vae_workdir: str, data_dir: str, num_examples: int = 32, batch_size: int = 8,
              output_dir: str | None = None) -> dict:
    from seaweed_jax.data import datasets, video_io
    from seaweed_jax.data.latent_cache import FrozenVAE
    from seaweed_jax.eval import metrics, prompt_checker
    from seaweed_jax.trainer import loop

    config = loop.load_config(vae_workdir)
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
    labels = [{k: prompt_checker_name(ex, k) for k in ("color", "shape", "direction", "background")}
              for ex in examples]

    vae = FrozenVAE.load(vae_workdir)
    recons = []
    for b0 in range(0, n, batch_size):
        chunk = originals[b0:b0 + batch_size]
        real = len(chunk)
        if real < batch_size:   # one compiled shape
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, 0)])
        x = chunk.astype(np.float32) / 127.5 - 1.0
        recons.append(video_io.to_uint8(vae.decode(vae.encode(x)))[:real])
    recons = np.concatenate(recons)

    original_scores = prompt_checker.score(list(originals), labels)
    recon_scores = prompt_checker.score(list(recons), labels)
    keys = ("color", "shape", "direction", "all")
    summary = {"vae_workdir": os.path.abspath(vae_workdir), "vae_step": vae.step,
               "num_examples": n, "psnr": float(metrics.mean_psnr(originals, recons)),
               "checker_on_reconstructions": {k: recon_scores[k] for k in keys},
               "checker_on_originals": {k: original_scores[k] for k in keys}}
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "vae_check.json"), "w") as f:
            json.dump(summary, f, indent=2)
        rows = [v for pair in zip(originals[:8], recons[:8]) for v in pair]
        video_io.write_contact_sheet(os.path.join(output_dir, "vae_reconstructions.png"), rows)
    return summary


def prompt_checker_name(example: dict, key: str):
    """The label name of an example's int label (the checker compares names)."""
    from seaweed_jax.data import moving_shapes as ms
    names = {"color": ms.COLOR_NAMES, "shape": ms.SHAPES, "direction": ms.DIRECTIONS,
             "background": ms.BACKGROUND_NAMES}[key]
    return names[int(example[key])]


def main(argv=None) -> None:
    from seaweed_jax import config_lib
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vae_workdir", required=True)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--num_examples", type=int, default=32)
    p.add_argument("--output_dir", default=None)
    a = p.parse_args(argv)
    try:
        from seaweed_jax.trainer import loop
        data_dir = config_lib.data_dir_for(loop.load_config(a.vae_workdir), a.data_dir)
        s = check_vae(a.vae_workdir, data_dir,
                      a.num_examples, output_dir=a.output_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    r = s["checker_on_reconstructions"]
    print(f"VAE step {s['vae_step']}: PSNR {s['psnr']:.2f} dB on {s['num_examples']} validation "
          f"clips; prompt checker on its reconstructions: colour {r['color']:.0%}, shape "
          f"{r['shape']:.0%}, direction {r['direction']:.0%}, all three {r['all']:.0%} "
          f"(about the best the DiT's samples can score)")
    if r["color"] < 0.5:
        print("warning: the VAE loses the shapes (reconstructions are mostly background); the "
              "DiT's samples cannot follow their prompts until the VAE is trained further",
              file=sys.stderr)
    print(json.dumps(s))


if __name__ == "__main__":
    main()
