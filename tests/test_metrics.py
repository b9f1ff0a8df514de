"""PSNR / SSIM against hand values and a direct (loop-over-windows) SSIM reference."""
import math

import numpy as np
import pytest

from seaweed_jax.eval import metrics


def test_psnr_hand_values():
    a = np.zeros((5, 8, 8, 3), np.uint8)
    assert metrics.psnr(a, a) == math.inf
    assert metrics.psnr(a, a, max_db=100.0) == 100.0
    b = np.full_like(a, 10)                      # MSE = 100 -> 10 log10(65025 / 100)
    assert metrics.psnr(a, b) == pytest.approx(28.130803608679, abs=1e-9)
    c = a.copy()
    c[0, 0, 0, 0] = 255                          # one pixel off by 255: MSE = 255^2 / N
    n = a.size
    assert metrics.psnr(a, c) == pytest.approx(10 * math.log10(n), abs=1e-9)
    # Mean over videos of per-video PSNR (not the PSNR of the pooled MSE).
    x = np.stack([a, a])
    y = np.stack([b, np.full_like(a, 1)])        # MSE 100 and 1
    np.testing.assert_allclose(metrics.psnr_per_video(x, y), [28.1308036, 48.1308036], atol=1e-6)
    assert metrics.mean_psnr(x, y) == pytest.approx(38.1308036, abs=1e-6)
    # uint8 arithmetic must not wrap: 0 - 10 is -10, not 246.
    assert metrics.psnr(b, a) == metrics.psnr(a, b)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(a, a[:1])


def reference_ssim_frame(x, y, window=11, sigma=1.5, L=255.0):
    """Straightforward SSIM of one (H, W, C) frame: every valid window, every channel."""
    r = np.arange(window) - (window - 1) / 2
    w2 = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    w2 /= w2.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    x, y = x.astype(np.float64), y.astype(np.float64)
    vals = []
    for ch in range(x.shape[2]):
        for i in range(x.shape[0] - window + 1):
            for j in range(x.shape[1] - window + 1):
                px, py = x[i:i + window, j:j + window, ch], y[i:i + window, j:j + window, ch]
                mx, my = (w2 * px).sum(), (w2 * py).sum()
                vx = (w2 * (px - mx) ** 2).sum()
                vy = (w2 * (py - my) ** 2).sum()
                cxy = (w2 * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cxy + c2)
                            / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_against_reference_and_hand_values():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 14, 15, 3), dtype=np.uint8)
    noise = rng.normal(0, 20, x.shape)
    y = np.clip(x + noise, 0, 255).astype(np.uint8)
    ours = metrics.ssim_frames(x, y)
    ref = [reference_ssim_frame(x[t], y[t]) for t in range(2)]
    np.testing.assert_allclose(ours, ref, rtol=1e-9)
    assert metrics.ssim(x, y) == pytest.approx(np.mean(ref), rel=1e-9)
    # identical -> 1; noisier -> lower
    assert metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    y2 = np.clip(x + 3 * noise, 0, 255).astype(np.uint8)
    assert 0 < metrics.ssim(x, y2) < metrics.ssim(x, y) < 1
    # Constant frames a, b: variances vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a = np.full((1, 12, 12, 1), 100, np.uint8)
    b = np.full((1, 12, 12, 1), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert metrics.ssim(a, b) == pytest.approx((22000 + c1) / (22100 + c1), rel=1e-12)
    # An image (H, W, C) is one frame; batched per-video values.
    assert metrics.ssim(x[0], y[0]) == pytest.approx(ref[0], rel=1e-9)
    np.testing.assert_allclose(metrics.ssim_per_video(np.stack([x, x]), np.stack([y, x])),
                               [np.mean(ref), 1.0], rtol=1e-9)
    with pytest.raises(ValueError, match="smaller than"):
        metrics.ssim(x[:, :8], y[:, :8])


def test_edge_sharpness_by_hand():
    """A vertical step of 100 grey levels: central differences give |grad| = 50 on the two
    columns beside the step, 0 elsewhere; with a mid-grey column in the step they become
    25, 50, 25."""
    from seaweed_jax.eval import metrics as m
    step = np.zeros((1, 6, 8, 3), np.uint8)
    step[..., 4:, :] = 100
    g = m.gradient_magnitude(step)
    assert g.shape == (1, 4, 6)
    np.testing.assert_allclose(g[0, 0], [0, 0, 50, 50, 0, 0])
    ramp = step.copy()
    ramp[..., 4, :] = 50
    np.testing.assert_allclose(m.gradient_magnitude(ramp)[0, 0], [0, 0, 25, 50, 25, 0])
    assert m.sharpness_ratio(step, step) == 1.0 and m.gradient_error(step, step) == 0.0
    flat = np.zeros_like(step)
    assert m.sharpness_ratio(flat, step) == 0.0
    np.testing.assert_allclose(m.gradient_error(flat, step), 100 / 6)    # mean of g over 4x6 = 100 * 4 / 24


def test_mean_frame_psnr_averages_frames_not_pixels():
    from seaweed_jax.eval import metrics as m
    ref = np.zeros((1, 2, 4, 4, 3), np.uint8)
    x = ref.copy()
    x[0, 0] = 1                      # frame 0: MSE 1 -> 48.13 dB; frame 1: identical (capped)
    want = (10 * np.log10(255.0 ** 2 / 1.0) + 60.0) / 2
    assert abs(m.mean_frame_psnr(x, ref, max_db=60.0) - want) < 1e-9
    assert abs(m.mean_psnr(x, ref) - 10 * np.log10(255.0 ** 2 / 0.5)) < 1e-9   # per video: MSE 0.5
