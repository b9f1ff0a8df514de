"""`make demo`'s report: its outputs collected into demo_summary.json (stdlib only, so the
`check demo` verb starts in a blink)."""
from __future__ import annotations

import json
import os


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def demo_summary(demo_dir: str, *, total_seconds: int, load_avg: str,
                 stage_times: dict[str, str]) -> dict:
    """demo_summary.json of `make demo`: stage times, sample scores, the VAE check."""
    samples = os.path.join(demo_dir, "samples")
    scores = _read_json(os.path.join(samples, "scores.json"))
    heldout = _read_json(os.path.join(samples, "heldout", "scores.json"))
    summary = {
        "demo_dir": demo_dir,
        "stage_seconds": dict(stage_times),
        "total_seconds_this_run": int(total_seconds),
        "load_avg_at_end": load_avg,
        "cpu_cores": os.cpu_count(),
        "videos": sorted(os.path.join(samples, f) for f in os.listdir(samples) if f.endswith(".mp4"))
        if os.path.isdir(samples) else [],
        "contact_sheet": os.path.join(samples, "contact_sheet.png"),
        "scores": scores and scores["summary"],
        "heldout_scores": heldout and heldout["summary"],
        "vae_check": _read_json(os.path.join(demo_dir, "vae_check", "vae_check.json")),
    }
    with open(os.path.join(demo_dir, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
