"""Does a generated moving_shapes video follow its prompt? Colour, shape and direction
estimated from pixels alone (numpy + scipy.ndimage, host side).

Robust to VAE blur, noise and mild colour shifts:

1. **Background**: every border pixel (all frames) votes for its nearest palette background;
   the measured background colour is the median of the winning voters (not the palette
   value, so a colour-shifted decoder is handled).
2. **Foreground**: pixels far from the background seed a first mask; the shape colour
   estimate is the median of its most distant pixels; then each pixel gets a soft
   membership alpha = its projection on the background -> shape colour line, clipped to
   [0, 1]. Blur moves mass but keeps its total, so soft areas stay near the true area, and
   the half-way contour (alpha > 0.5) stays near the true outline. Per frame, only the
   largest connected component of alpha > 0.5 is kept (stray noise blobs are dropped).
3. **Colour**: the median of the shape's core pixels (alpha > 0.75) over all frames,
   matched to the palette colour c that best explains it as bg + a (c - bg), a in
   [0.5, 1.1] (a blurred small shape mixes its colour with the background).
4. **Shape** (median over frames): fill = soft area / (widest row x tallest column)
   (square ~1.0, circle ~pi/4, apex-up triangle ~0.5-0.65) and skew = skewness of the
   mass's vertical profile (triangle ~ -0.55, circle and square 0; a symmetric blur keeps
   its sign). skew < -0.15 -> triangle, else fill >= 0.88 -> square, else circle.
5. **Direction**: least-squares line through the per-frame centroids; its net displacement
   over the clip, if at least `min(H, W) / 6` (the data moves >= H/3), names the dominant
   axis and sign (up = towards row 0); otherwise `still`.

`check(video, prompt_or_labels)` compares with a caption (parsed by `parse_prompt`) or a
labels dict; `score(videos, prompts)` gives the accuracies over a set.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

from seaweed_jax.moving_shapes.labels import (BACKGROUND_NAMES, BACKGROUNDS, COLOR_NAMES, COLORS,
                                              DIRECTIONS, SHAPES)

_COLOR_RGB = np.array([COLORS[c] for c in COLOR_NAMES], np.float64)
_BG_RGB = np.array([BACKGROUNDS[b] for b in BACKGROUND_NAMES], np.float64)

SEED_DISTANCE = 50.0      # RGB distance that seeds the foreground (closest shape/bg pair: 127)
SKEW_TRIANGLE = -0.15     # vertical mass profile skewness below this -> triangle (apex up)
FILL_SQUARE = 0.88        # soft area / (width x height) at or above this -> square
STILL_FRACTION = 1 / 6    # net displacement below this x min(H, W) -> still
ATTRIBUTES = ("color", "shape", "direction")


# ------------------------------------------------------------------------ prompt parsing
_SYNONYMS = {"grey": "gray", "stationary": "still", "static": "still", "motionless": "still",
             "standing": "still", "stays": "still", "stay": "still", "upward": "up",
             "upwards": "up", "downward": "down", "downwards": "down", "leftward": "left",
             "leftwards": "left", "rightward": "right", "rightwards": "right"}


def parse_prompt(caption: str) -> dict:
    """Labels named by a caption, canonical or paraphrased: {color, shape, direction,
    background}; an attribute the caption does not name is None.

    The shape colour is the palette colour word that is not the background's: backgrounds
    are named right before "background" (or as "<bg> background with ...").
    """
    words = [_SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", caption.lower())]
    out = dict(color=None, shape=None, direction=None, background=None)
    for i, w in enumerate(words):
        if w in BACKGROUNDS and i + 1 < len(words) and words[i + 1] == "background":
            out["background"] = w
        elif w in COLORS and out["color"] is None:
            out["color"] = w
        elif w in SHAPES and out["shape"] is None:
            out["shape"] = w
        elif w in DIRECTIONS and out["direction"] is None:
            out["direction"] = w
    if out["background"] is None:
        bgs = [w for w in words if w in BACKGROUNDS]
        out["background"] = bgs[0] if bgs else None
    return out


# ------------------------------------------------------------------------ pixel analysis
def _nearest(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return np.argmin(((rgb[..., None, :] - palette) ** 2).sum(-1), axis=-1)


def _border_pixels(video: np.ndarray, width: int = 1) -> np.ndarray:
    v = video
    parts = [v[:, :width], v[:, -width:], v[:, width:-width, :width], v[:, width:-width, -width:]]
    return np.concatenate([p.reshape(-1, 3) for p in parts])


def estimate_background(video: np.ndarray):
    """(palette name, measured RGB) of the background from the border pixels."""
    border = _border_pixels(video)
    votes = _nearest(border, _BG_RGB)
    k = int(np.bincount(votes, minlength=len(BACKGROUND_NAMES)).argmax())
    return BACKGROUND_NAMES[k], np.median(border[votes == k], axis=0)


def foreground_alpha(video: np.ndarray, bg_rgb: np.ndarray):
    """Soft shape membership (T, H, W) in [0, 1] and the estimated shape RGB (or None)."""
    dist = np.sqrt(((video - bg_rgb) ** 2).sum(-1))
    seed = dist > SEED_DISTANCE
    if not seed.any():
        return np.zeros(video.shape[:3]), None
    far = dist >= np.median(dist[seed])            # the more distant half of the seed
    fg_rgb = np.median(video[seed & far], axis=0)
    axis = fg_rgb - bg_rgb
    alpha = ((video - bg_rgb) @ axis) / max(float(axis @ axis), 1e-6)
    return np.clip(alpha, 0.0, 1.0), fg_rgb


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def _top_mean(x: np.ndarray, k: int = 2) -> float:
    return float(np.sort(x)[-k:].mean()) if len(x) else 0.0


def frame_features(alpha: np.ndarray) -> Optional[dict]:
    """Per-frame shape measurements from a soft mask (H, W), or None if there is no shape.

    All from the soft mass of the largest component (alpha within 2 pixels of its
    alpha > 0.5 pixels), so blur, which moves mass but keeps its sums, changes them little:
      fill = area / (widest row sum x tallest column sum), robust maxima (mean of top 2);
      skew = skewness of the mass's vertical profile (apex-up triangle ~ -0.57, circle and
             square 0; a symmetric blur keeps the third central moment).
    """
    hard = _largest_component(alpha > 0.5)
    if hard.sum() < 2:
        return None
    region = ndimage.binary_dilation(hard, iterations=2)
    soft = np.where(region, alpha, 0.0)
    area = soft.sum()
    rows, cols = soft.sum(axis=1), soft.sum(axis=0)
    fill = area / max(_top_mean(rows) * _top_mean(cols), 1e-6)
    r = np.arange(len(rows), dtype=np.float64)
    mean_r = (rows * r).sum() / area
    var_r = (rows * (r - mean_r) ** 2).sum() / area
    skew = (rows * (r - mean_r) ** 3).sum() / area / max(var_r, 1e-6) ** 1.5
    c = np.arange(len(cols), dtype=np.float64)
    centroid = (mean_r, (cols * c).sum() / area)
    return dict(fill=float(fill), skew=float(skew), centroid=centroid, area=float(area))


def classify_shape(fill: float, skew: float) -> str:
    if skew < SKEW_TRIANGLE:
        return "triangle"
    return "square" if fill >= FILL_SQUARE else "circle"


def classify_color(rgb: np.ndarray, bg_rgb: np.ndarray) -> str:
    """The palette colour c for which rgb is best explained as bg + a (c - bg) with a in
    [0.5, 1.1]: a blurred or thin shape mixes its colour with the background."""
    best, best_err = None, np.inf
    for name, c in zip(COLOR_NAMES, _COLOR_RGB):
        axis = c - bg_rgb
        a = float(np.clip((rgb - bg_rgb) @ axis / max(float(axis @ axis), 1e-6), 0.5, 1.1))
        err = float(np.linalg.norm(rgb - bg_rgb - a * axis))
        if err < best_err:
            best, best_err = name, err
    return best


def classify_direction(centroids: np.ndarray, frame_ids: np.ndarray, num_frames: int,
                       size: int) -> tuple[str, tuple[float, float]]:
    """Direction from the least-squares line through the centroids (row, col)."""
    if len(frame_ids) < 2:
        return "still", (0.0, 0.0)
    t = frame_ids.astype(np.float64)
    slope = np.polyfit(t, centroids, 1)[0]              # (drow, dcol) per frame
    drow, dcol = slope * (num_frames - 1)
    if max(abs(drow), abs(dcol)) < STILL_FRACTION * size:
        return "still", (float(drow), float(dcol))
    if abs(dcol) >= abs(drow):
        return ("right" if dcol > 0 else "left"), (float(drow), float(dcol))
    return ("down" if drow > 0 else "up"), (float(drow), float(dcol))


def analyze(video) -> dict:
    """Predicted {color, shape, direction, background} of a uint8 video (T, H, W, 3) (or an
    image (H, W, 3)), plus the measurements behind them."""
    video = np.asarray(video)
    if video.ndim == 3:
        video = video[None]
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a (T, H, W, 3) video, got {video.shape}")
    v = video.astype(np.float64)
    if video.dtype != np.uint8 and v.max() <= 1.0 + 1e-6 and v.min() < 0:
        raise ValueError("expected uint8 [0, 255] pixels; convert [-1, 1] floats with "
                         "data.video_io.to_uint8")
    t, h, w, _ = v.shape
    bg_name, bg_rgb = estimate_background(v)
    alpha, fg_rgb = foreground_alpha(v, bg_rgb)
    out = dict(background=bg_name, color=None, shape=None, direction=None,
               measured=dict(background_rgb=bg_rgb.tolist(), frames_with_shape=0))
    feats = [frame_features(alpha[i]) for i in range(t)]
    ids = np.array([i for i, f in enumerate(feats) if f is not None])
    if fg_rgb is None or len(ids) == 0:
        return out
    core = alpha > 0.75
    color_rgb = np.median(v[core], axis=0) if core.any() else fg_rgb
    out["color"] = classify_color(color_rgb, bg_rgb)
    fill = float(np.median([feats[i]["fill"] for i in ids]))
    skew = float(np.median([feats[i]["skew"] for i in ids]))
    out["shape"] = classify_shape(fill, skew)
    centroids = np.array([feats[i]["centroid"] for i in ids])
    out["direction"], disp = classify_direction(centroids, ids, t, min(h, w))
    out["measured"].update(color_rgb=np.asarray(color_rgb).tolist(), fill=fill, skew=skew,
                           displacement=disp, frames_with_shape=int(len(ids)))
    return out


# ------------------------------------------------------------------------ checking
def _expected(prompt_or_labels) -> dict:
    if isinstance(prompt_or_labels, str):
        labels = parse_prompt(prompt_or_labels)
    elif isinstance(prompt_or_labels, Mapping):
        labels = {k: prompt_or_labels.get(k) for k in (*ATTRIBUTES, "background")}
    else:
        raise TypeError("prompt_or_labels must be a caption string or a labels dict")
    missing = [k for k in ATTRIBUTES if labels.get(k) is None]
    if missing:
        raise ValueError(f"the prompt names no {', '.join(missing)}: {prompt_or_labels!r}")
    return labels


def compare(predicted: Mapping, prompt_or_labels) -> dict:
    """Score a prediction (from `analyze`) against a caption or labels dict:
    dict(color_ok, shape_ok, direction_ok, all_ok (the three), background_ok (None if the
    prompt names no background), predicted, expected)."""
    expected = _expected(prompt_or_labels)
    result = {f"{k}_ok": predicted[k] == expected[k] for k in ATTRIBUTES}
    result["all_ok"] = all(result[f"{k}_ok"] for k in ATTRIBUTES)
    result["background_ok"] = (None if expected.get("background") is None
                               else predicted["background"] == expected["background"])
    result["predicted"] = {k: predicted[k] for k in (*ATTRIBUTES, "background")}
    result["expected"] = expected
    return result


def check(video, prompt_or_labels) -> dict:
    """`compare(analyze(video), prompt_or_labels)` plus the measurements."""
    _expected(prompt_or_labels)          # fail on an unusable prompt before the pixel work
    predicted = analyze(video)
    result = compare(predicted, prompt_or_labels)
    result["measured"] = predicted["measured"]
    return result


def score(videos: Iterable, prompts_or_labels: Sequence) -> dict:
    """Accuracy of each attribute and of all three over a set of videos: dict(color, shape,
    direction, all, background, n), plus `results` (the per-video dicts)."""
    results = [check(v, p) for v, p in zip(videos, prompts_or_labels)]
    if not results:
        raise ValueError("no videos to score")
    out = {k: float(np.mean([r[f"{k}_ok"] for r in results])) for k in (*ATTRIBUTES, "all")}
    bg = [r["background_ok"] for r in results if r["background_ok"] is not None]
    out["background"] = float(np.mean(bg)) if bg else None
    out["n"] = len(results)
    out["results"] = results
    return out
