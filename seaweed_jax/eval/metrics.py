"""Reconstruction metrics on uint8 videos: PSNR and SSIM (numpy, float64, host side).

Definitions (issue 3): inputs are uint8 in [0, 255] (float arrays on the same scale are
accepted); a video is (T, H, W, C) and an image (H, W, C).

* PSNR of one video = 10 log10(255^2 / MSE) with the MSE over all of its pixels and
  channels; identical videos give +inf (or `max_db` when given). `mean_psnr`: the mean over
  videos of the per-video PSNR.
* Per-frame PSNR (the papers' convention, issue 19: WF-VAE / OD-VAE eval scripts): the PSNR of
  every frame, averaged; `frame_psnr_per_video` per video, `mean_frame_psnr` over all frames.
  The VAE evaluation reports it as "psnr" (eval/reconstruction.py).
* SSIM (Wang et al. 2004): 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  L = 255, statistics weighted by the window, mean over the 'valid' positions (the window
  fully inside the frame), per channel; a frame's SSIM is the mean over channels and a
  video's the mean over its frames.
* Edge sharpness (the refiner's second measure): per frame, the gradient magnitude
  |grad| = sqrt(gx^2 + gy^2) of the luma (the channel mean) with central differences in the
  interior. `sharpness_ratio(x, ref)` = mean |grad x| / mean |grad ref| over a video (1 = as much
  edge energy as the reference; blurry < 1, noisy > 1); `gradient_error(x, ref)` = mean
  | |grad x| - |grad ref| | (lower is better: edges of the right strength in the right place).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

DATA_RANGE = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _as_float(x) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def _check_pair(x, y):
    x, y = _as_float(x), _as_float(y)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    return x, y


def psnr(x, y, data_range: float = DATA_RANGE, max_db: Optional[float] = None) -> float:
    """PSNR (dB) of one video (or image): the MSE is over the whole array."""
    x, y = _check_pair(x, y)
    mse = float(np.mean((x - y) ** 2))
    value = float("inf") if mse == 0 else 10.0 * np.log10(data_range ** 2 / mse)
    return min(value, max_db) if max_db is not None else float(value)


def mean_frame_psnr(x, y, data_range: float = DATA_RANGE, max_db: Optional[float] = None) -> float:
    """The papers' convention: PSNR of every frame of every video (B, T, H, W, C), averaged."""
    x, y = _check_pair(x, y)
    return float(np.mean([psnr(a, b, data_range, max_db) for v, w in zip(x, y) for a, b in zip(v, w)]))


def frame_psnr_per_video(x, y, data_range: float = DATA_RANGE,
                         max_db: Optional[float] = None) -> np.ndarray:
    """(B, T, H, W, C) -> (B,): each video's mean over frames of the per-frame PSNR."""
    x, y = _check_pair(x, y)
    if x.ndim != 5:
        raise ValueError(f"expected videos (B, T, H, W, C), got {x.shape}")
    return np.array([np.mean([psnr(a, b, data_range, max_db) for a, b in zip(v, w)])
                     for v, w in zip(x, y)])


def psnr_per_video(x, y, data_range: float = DATA_RANGE,
                   max_db: Optional[float] = None) -> np.ndarray:
    """(B, ...) -> (B,) per-video PSNR."""
    x, y = _check_pair(x, y)
    return np.array([psnr(a, b, data_range, max_db) for a, b in zip(x, y)])


def mean_psnr(x, y, data_range: float = DATA_RANGE, max_db: Optional[float] = None) -> float:
    """Mean over videos (axis 0) of the per-video PSNR."""
    return float(np.mean(psnr_per_video(x, y, data_range, max_db)))


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalized 1-D Gaussian; the 2-D SSIM window is its outer product."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter_valid(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filtering over the last two axes (H, W) of a (..., H, W)."""
    k = g.shape[0]
    a = sliding_window_view(a, k, axis=-1) @ g                  # (..., H, W-k+1)
    a = sliding_window_view(a, k, axis=-2) @ g                  # (..., H-k+1, W-k+1)
    return a


def ssim_frames(x, y, data_range: float = DATA_RANGE, window: int = SSIM_WINDOW,
                sigma: float = SSIM_SIGMA) -> np.ndarray:
    """SSIM of each frame of (T, H, W, C) (or one image (H, W, C) -> shape (1,))."""
    x, y = _check_pair(x, y)
    if x.ndim == 3:
        x, y = x[None], y[None]
    if x.ndim != 4:
        raise ValueError(f"expected (T, H, W, C) or (H, W, C), got {x.shape}")
    if min(x.shape[1:3]) < window:
        raise ValueError(f"frames {x.shape[1]}x{x.shape[2]} are smaller than the {window}x{window} "
                         "SSIM window")
    g = gaussian_window_1d(window, sigma)
    # channels to the front: (T, C, H, W), so the filter runs over the last two axes
    x, y = np.moveaxis(x, -1, 1), np.moveaxis(y, -1, 1)
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    var_x = _filter_valid(x * x, g) - mu_x ** 2
    var_y = _filter_valid(y * y, g) - mu_y ** 2
    cov = _filter_valid(x * y, g) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(axis=(1, 2, 3))


def ssim(x, y, data_range: float = DATA_RANGE) -> float:
    """SSIM of one video (mean of per-frame SSIM) or one image."""
    return float(np.mean(ssim_frames(x, y, data_range)))


def ssim_per_video(x, y, data_range: float = DATA_RANGE) -> np.ndarray:
    """(B, T, H, W, C) -> (B,) per-video SSIM."""
    x, y = _check_pair(x, y)
    return np.array([ssim(a, b, data_range) for a, b in zip(x, y)])


def mean_ssim(x, y, data_range: float = DATA_RANGE) -> float:
    return float(np.mean(ssim_per_video(x, y, data_range)))


def gradient_magnitude(video) -> np.ndarray:
    """(..., H, W, C) -> (..., H - 2, W - 2): |grad| of the channel mean, central differences."""
    y = _as_float(video).mean(axis=-1)
    gx = (y[..., 1:-1, 2:] - y[..., 1:-1, :-2]) / 2.0
    gy = (y[..., 2:, 1:-1] - y[..., :-2, 1:-1]) / 2.0
    return np.sqrt(gx ** 2 + gy ** 2)


def sharpness_ratio(x, ref) -> float:
    """mean |grad x| / mean |grad ref| (see the module docstring)."""
    x, ref = _check_pair(x, ref)
    return float(gradient_magnitude(x).mean() / max(gradient_magnitude(ref).mean(), 1e-12))


def gradient_error(x, ref) -> float:
    """mean | |grad x| - |grad ref| | in data units (see the module docstring)."""
    x, ref = _check_pair(x, ref)
    return float(np.abs(gradient_magnitude(x) - gradient_magnitude(ref)).mean())
