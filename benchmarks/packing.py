"""Tokens per step and padding, packed vs unpacked, on real moving_shapes data: ONE JSON line.

    python benchmarks/packing.py [--data_dir=D] [--steps=50] [--num_train=512]

Two buckets, each read through the real pipeline (TFDS source, crop, caption tokenizer of the
toy DiT) and packed by the real Grain transform (`data.packed.PackedDataset`):

* `toy_images`: the toy `stage0` (configs/dit/moving_shapes.py:stage0): 32x32 images, one
  latent frame of 8x8 -> 16 video tokens, captions up to 12 text tokens. Unpacked: the
  config's former batch of 32 images, each padded to 16 + 12 tokens. Packed: the config's
  data.packing (4 sequences x (128 video + 80 text) slots, up to 8 images each).
* `short_clips`: one bucket of 32x32 images and 5-, 9- and 17-frame clips (1, 2, 3, 5 latent
  frames -> 16, 32, 48, 80 video tokens), equal weights. Unpacked: 32 samples per step, each
  padded to the bucket's longest (80 video + 12 text tokens), i.e. what one shared batch
  shape costs without packing. Packed: 8 sequences x (272 video + 96 text) slots, up to 16
  samples each: the same 2,944 token slots per step as 32 x (80 + 12) unpacked.

Latent shapes come from the toy VAE's (4, 4, 4) compression; packing looks only at shapes and
caption tokens, so the examples carry zero latents of those shapes (no VAE is loaded).
Per bucket and mode: `slots_per_step` (token slots computed per step), `samples_per_step`,
`real_tokens_per_step` (video + caption tokens), `padding_fraction` = 1 - real / slots (mean
over --steps steps), and for packed `host_ms_per_step` (reading + packing on this host).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from typing import Sequence

import grain
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seaweed_jax import config_lib  # noqa: E402
from seaweed_jax.data import packed, packing  # noqa: E402
from seaweed_jax.data import pipeline as pipe  # noqa: E402
from seaweed_jax.trainer.dit_task import Tokenize, text_encoder_config  # noqa: E402

COMPRESSION, LATENT_CHANNELS, PATCH = (4, 4, 4), 8, (1, 2, 2)
CLIPS = ("moving_shapes/32x32_f1", "moving_shapes/32x32_f5", "moving_shapes/32x32_f9",
         "moving_shapes/32x32_f17")


class LatentShaped(grain.transforms.Map):
    """video (T, H, W, 3) -> zero `latents` of the VAE's latent shape (packing reads shapes)."""

    def map(self, ex: dict) -> dict:
        t, h, w = ex["video"].shape[:3]
        ct, ch, cw = COMPRESSION
        ex = {k: v for k, v in ex.items() if k != "video"}
        ex["latents"] = np.zeros((1 + (t - 1) // ct, h // ch, w // cw, LATENT_CHANNELS), np.float32)
        return ex


def padding_report(batch: dict) -> dict:
    """Samples, real tokens and padding fraction of one packed host batch (both streams)."""
    video = int((batch["video_segment"] > 0).sum())
    text_real = int(sum(m.sum() for m in batch["text_mask"].reshape(-1, batch["text_mask"].shape[-1])))
    slots = batch["video_segment"].size + batch["text_segment"].size
    return {"samples": int((batch["sample_frames"] > 0).sum()), "video_tokens": video,
            "text_tokens": text_real, "token_slots": slots,
            "padding_fraction": 1.0 - (video + text_real) / slots}


def unpacked_padding(sample_tokens: Sequence[int], text_tokens: Sequence[int], text_len: int,
                     pad_video_to: int) -> float:
    """Padding fraction of the same samples as an unpacked batch: video padded to
    `pad_video_to` tokens and text to `text_len` per sample."""
    real = sum(sample_tokens) + sum(text_tokens)
    return 1.0 - real / (len(sample_tokens) * (pad_video_to + text_len))


def tokens_per_step(spec: packed.PackSpec) -> int:
    return spec.num_sequences * (spec.capacity.video_tokens + spec.capacity.text_tokens)


def toy_config():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "configs", "dit", "moving_shapes.py")
    spec = importlib.util.spec_from_file_location("toy_dit_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config("stage0")


def examples(data_config, data_dir: str, text_cfg) -> grain.MapDataset:
    plans = pipe.plan_sources(data_config, data_dir=data_dir)
    parts = []
    for p in plans:
        ds = grain.MapDataset.source(p.source).map_with_index(pipe.Tag(p.source_id, len(p.source)))
        ds = ds.shuffle(seed=pipe.derive_seed(0, 0, p.source_id)).repeat(None)
        parts.append(ds.map(Tokenize(text_cfg)).map(LatentShaped()))
    return pipe.mix(parts, [p.weight for p in plans])


def measure(stream: grain.MapDataset, spec: packed.PackSpec, unpacked_batch: int, pad_video_to: int,
            text_len: int, steps: int) -> dict:
    it = iter(packed.PackedDataset(stream, spec))
    next(it)  # warm-up (tokenizer, first reads)
    reports, t0 = [], time.perf_counter()
    for _ in range(steps):
        reports.append(padding_report(next(it)))
    host_ms = (time.perf_counter() - t0) / steps * 1e3
    # Unpacked: the next steps x unpacked_batch samples of the same stream, padded.
    video, text = [], []
    for i in range(steps * unpacked_batch):
        ex = stream[i]
        video.append(int(np.prod([s // p for s, p in zip(ex["latents"].shape[:3], PATCH)])))
        text.append(int(ex["text_mask"].sum()))
    unpacked_slots = unpacked_batch * (pad_video_to + text_len)
    return {
        "unpacked": {"slots_per_step": unpacked_slots, "samples_per_step": unpacked_batch,
                     "real_tokens_per_step": (sum(video) + sum(text)) / steps,
                     "padding_fraction": round(unpacked_padding(video, text, text_len, pad_video_to), 4)},
        "packed": {"slots_per_step": tokens_per_step(spec),
                   "samples_per_step": float(np.mean([r["samples"] for r in reports])),
                   "real_tokens_per_step": float(np.mean([r["video_tokens"] + r["text_tokens"] for r in reports])),
                   "padding_fraction": round(float(np.mean([r["padding_fraction"] for r in reports])), 4),
                   "host_ms_per_step": round(host_ms, 2)},
        "caption_tokens_mean": round(float(np.mean(text)), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data_dir", default=config_lib.default_data_dir())
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--num_train", type=int, default=512)
    args = ap.parse_args()

    toy = toy_config()
    text_cfg = dict(text_encoder_config(toy))
    text_len = int(text_cfg["max_len"])
    data = toy.data
    # only the train split is read; the builder needs >= 1 validation clip
    data.num_train, data.num_validation = args.num_train, 1
    data.prefetch = 0
    null_tokens = 1   # the empty prompt is one token with the toy tokenizer (checked below)
    tok = Tokenize(text_cfg).map({"caption": ""})
    assert packing.text_slots(tok["text_mask"], 1) == null_tokens

    out = {"benchmark": "packing", "steps": args.steps, "load_avg": os.getloadavg()[0]}
    spec = packed.spec_from_config(data, process_count=1, patch=PATCH, text_len=text_len,
                                   min_text_tokens=null_tokens)
    out["toy_images"] = measure(examples(data, args.data_dir, text_cfg), spec, unpacked_batch=32,
                                pad_video_to=16, text_len=text_len, steps=args.steps)

    clips = config_lib.base_config().data
    clips.update(num_train=args.num_train, num_validation=1, prefetch=0)
    clips.sources = [{"name": n, "split": "train", "weight": 1.0} for n in CLIPS]
    spec = packed.PackSpec(num_sequences=8, capacity=packing.Capacity(272, 96, 16), patch=PATCH,
                           min_text_tokens=null_tokens)
    out["short_clips"] = measure(examples(clips, args.data_dir, text_cfg), spec, unpacked_batch=32,
                                 pad_video_to=80, text_len=text_len, steps=args.steps)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
