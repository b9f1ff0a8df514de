"""Score sampled videos against their prompts with the prompt checker.

    python scripts/check_samples.py --samples=DIR --prompts_file=F

Reads DIR/{i:03d}.npy (what `python -m seaweed_jax.sample` writes for the i-th line of F),
reads colour / shape / direction back from the pixels (seaweed_jax/eval/prompt_checker.py),
prints one line per video and the accuracies, writes DIR/scores.json
({"summary": {color, shape, direction, all, background, n}, "videos": [...]}) and prints the
summary as the last stdout line (JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def read_prompts(path: str) -> list[str]:
    with open(path) as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ValueError(f"{path} has no prompts")
    return prompts


def load_videos(samples_dir: str, n: int):
    from seaweed_jax.data import video_io
    paths = [os.path.join(samples_dir, f"{i:03d}.npy") for i in range(n)]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {n} sample files missing, e.g. {missing[0]}; "
                                f"run `python -m seaweed_jax.sample --output_dir={samples_dir} ...` "
                                f"with the same prompts file first")
    return [video_io.read_video(p) for p in paths]


def check_samples(samples_dir: str, prompts: list[str]) -> dict:
    """{"summary": accuracies, "videos": per-video predictions} for DIR's first len(prompts)
    videos; also written to DIR/scores.json."""
    from seaweed_jax.eval import prompt_checker
    videos = load_videos(samples_dir, len(prompts))
    s = prompt_checker.score(videos, prompts)
    per_video = [{"index": i, "prompt": p, "predicted": r["predicted"],
                  **{k: r[k] for k in ("color_ok", "shape_ok", "direction_ok", "all_ok")}}
                 for i, (p, r) in enumerate(zip(prompts, s["results"]))]
    out = {"summary": {k: s[k] for k in ("color", "shape", "direction", "all", "background", "n")},
           "videos": per_video}
    with open(os.path.join(samples_dir, "scores.json"), "w") as f:
        json.dump(out, f, indent=2)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", required=True, help="directory of {i:03d}.npy sample videos")
    p.add_argument("--prompts_file", default=None,
                   help="one prompt per line (default: SAMPLES/prompts.txt)")
    a = p.parse_args(argv)
    prompts_file = a.prompts_file or os.path.join(a.samples, "prompts.txt")
    try:
        out = check_samples(a.samples, read_prompts(prompts_file))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    mark = {True: "ok", False: "--"}
    for v in out["videos"]:
        pr = v["predicted"]
        print(f"{v['index']:03d} {mark[v['color_ok']]} {mark[v['shape_ok']]} "
              f"{mark[v['direction_ok']]}  {v['prompt']!r:60} -> {pr['color']} {pr['shape']} "
              f"{pr['direction']}")
    s = out["summary"]
    print(f"prompt checker over {s['n']} videos: colour {s['color']:.0%}, shape {s['shape']:.0%}, "
          f"direction {s['direction']:.0%}, all three {s['all']:.0%}")
    print(json.dumps(s))


if __name__ == "__main__":
    main()
