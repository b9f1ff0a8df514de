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


def test_reported_psnr_is_per_frame_then_averaged_by_hand():
    """Issue 19: the VAE evaluation's "psnr" is the papers' per-frame PSNR averaged (frames of
    an exact reconstruction capped at 100 dB, as WF-VAE's cal_psnr); "psnr_video" the
    per-video one. 2 videos x 3 frames of 2x2x1 uint8, errors chosen per frame."""
    from seaweed_jax.eval import reconstruction
    errors = [[[1, 1, 1, 1], [2, 2, 0, 0], [4, 4, 4, 4]],        # MSE 1, 2, 16
              [[0, 0, 0, 0], [3, -3, 3, -3], [10, 0, 0, 0]]]     # MSE 0, 9, 25
    ref = np.full((2, 3, 2, 2, 1), 128, np.uint8)
    recon = (ref.astype(np.int64) + np.asarray(errors).reshape(ref.shape)).astype(np.uint8)
    # by hand: a loop over frames, PSNR = 10 log10(255^2 / MSE), inf -> 100
    frame_db = np.zeros((2, 3))
    for v in range(2):
        for t in range(3):
            mse = sum(e * e for e in errors[v][t]) / 4.0
            frame_db[v, t] = 100.0 if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)
    np.testing.assert_allclose(frame_db, [[48.1308036087, 45.1205036520, 36.0896037821],
                                          [100.0, 38.5883785143, 34.1514035220]], atol=1e-9)
    video_db = [10.0 * math.log10(255.0 ** 2 / ((1 + 2 + 16) / 3)),
                10.0 * math.log10(255.0 ** 2 / ((0 + 9 + 25) / 3))]       # MSE over the clip

    np.testing.assert_allclose(metrics.frame_psnr_per_video(ref, recon, max_db=100.0),
                               frame_db.mean(axis=1), atol=1e-9)
    assert metrics.frame_psnr_per_video(ref, recon)[1] == math.inf        # uncapped: exact frame
    p, s = reconstruction.score(ref, recon)
    np.testing.assert_allclose(p, [43.1136370143, 57.5799273454], atol=1e-9)
    assert np.isnan(s).all()                                               # 2x2 < SSIM window
    out = reconstruction.summarize(p, s, metrics.psnr_per_video(ref, recon))
    assert out["psnr"] == pytest.approx(frame_db.mean(), abs=1e-9)        # 50.3467821798
    assert out["psnr"] == pytest.approx(50.3467821798, abs=1e-9)
    assert out["psnr_video"] == pytest.approx(np.mean(video_db), abs=1e-9)  # 38.8508535659
    assert out["psnr_video"] == pytest.approx(38.8508535659, abs=1e-9)
    assert out["ssim"] is None and out["num_videos"] == 2
    assert "psnr_video" not in reconstruction.summarize(p, s)
    with pytest.raises(ValueError, match="B, T, H, W, C"):
        metrics.frame_psnr_per_video(ref[0], recon[0])


# ----------------------------------------------------------------------------- added: every
# default, clip, epsilon and reduction axis of the module against hand values / the loop
# reference above


def test_gaussian_window_by_hand():
    # size 3, sigma 1.5: exp(-r^2 / 4.5) at r = -1, 0, 1, normalized
    e = math.exp(-1 / 4.5)
    np.testing.assert_allclose(metrics.gaussian_window_1d(3, 1.5), [e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)],
                               rtol=1e-12)
    # an even size is centred between taps: r = -1.5, -0.5, 0.5, 1.5 (sigma 1)
    w = np.exp(-np.array([2.25, 0.25, 0.25, 2.25]) / 2)
    np.testing.assert_allclose(metrics.gaussian_window_1d(4, 1.0), w / w.sum(), rtol=1e-12)
    # defaults: 11 taps, sigma 1.5 (the SSIM paper's window)
    r = np.arange(-5, 6)
    w = np.exp(-r ** 2 / 4.5)
    np.testing.assert_allclose(metrics.gaussian_window_1d(), w / w.sum(), rtol=1e-12)


def test_filter_valid_is_a_separable_valid_correlation_over_the_last_two_axes():
    a = np.arange(20, dtype=np.float64).reshape(4, 5) ** 2
    g = np.array([0.2, 0.5, 0.3])               # asymmetric: catches flipped or swapped axes
    w2 = np.outer(g, g)
    want = np.array([[(w2 * a[i:i + 3, j:j + 3]).sum() for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(metrics._filter_valid(a, g), want, rtol=1e-12)
    # leading axes are batch axes
    np.testing.assert_allclose(metrics._filter_valid(np.stack([a, 2 * a])[None], g)[0],
                               np.stack([want, 2 * want]), rtol=1e-12)


def test_psnr_data_range_and_cap():
    a = np.zeros((2, 3, 4, 4, 1))
    b = np.full_like(a, 0.1)                     # float images in [0, 1]: MSE 0.01 -> 20 dB
    assert metrics.psnr(a, b, data_range=1.0) == pytest.approx(20.0, abs=1e-9)
    # a cap above the value leaves it; below, it caps
    assert metrics.psnr(a, b, data_range=1.0, max_db=30.0) == pytest.approx(20.0, abs=1e-9)
    assert metrics.psnr(a, b, data_range=1.0, max_db=15.0) == 15.0
    # MSE exactly 1 is an ordinary value (only 0 is infinite)
    assert metrics.psnr(a, a + 1.0) == pytest.approx(20 * math.log10(255.0), abs=1e-9)
    # per video / per frame with data_range and without max_db
    c = b.copy()
    c[1] = 0.01                                  # video 1: MSE 1e-4 -> 40 dB
    np.testing.assert_allclose(metrics.psnr_per_video(a, c, 1.0), [20.0, 40.0], atol=1e-9)
    assert metrics.mean_psnr(a, c, 1.0) == pytest.approx(30.0, abs=1e-9)
    assert metrics.mean_psnr(a, c, 1.0, 25.0) == pytest.approx(22.5, abs=1e-9)
    c[0, 0] = 0.0                                # one identical frame: +inf unless capped
    assert metrics.mean_frame_psnr(a, c, 1.0) == math.inf
    assert metrics.mean_frame_psnr(a, c, 1.0, 50.0) == pytest.approx((50 + 20 + 20 + 3 * 40) / 6, abs=1e-9)
    d = c.copy()
    d[0, 0] = 0.1
    assert metrics.mean_frame_psnr(a, d, 1.0) == pytest.approx(30.0, abs=1e-9)
    assert metrics.mean_frame_psnr(a * 255, d * 255) == pytest.approx(30.0, abs=1e-9)   # default 255


def test_ssim_window_boundary_custom_window_and_data_range():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2, 11, 11, 2), dtype=np.uint8)
    y = np.clip(x + rng.normal(0, 25, x.shape), 0, 255).astype(np.uint8)
    # frames exactly the window's size: one valid position, still an SSIM
    np.testing.assert_allclose(metrics.ssim_frames(x, y), [reference_ssim_frame(x[t], y[t]) for t in range(2)],
                               rtol=1e-9)
    for h, w in ((10, 12), (12, 10)):           # either side below the window: refused
        with pytest.raises(ValueError, match="smaller than"):
            metrics.ssim_frames(np.zeros((1, h, w, 1)), np.zeros((1, h, w, 1)))
    for shape in ((12, 12), (1, 1, 12, 12, 1)):  # neither an image nor a video
        with pytest.raises(ValueError, match="expected"):
            metrics.ssim_frames(np.zeros(shape), np.zeros(shape))
    # another window / sigma and data on a [0, 1] scale
    xf, yf = x[:, :9, :10] / 255.0, y[:, :9, :10] / 255.0
    want = [reference_ssim_frame(xf[t], yf[t], window=7, sigma=1.0, L=1.0) for t in range(2)]
    np.testing.assert_allclose(metrics.ssim_frames(xf, yf, 1.0, 7, 1.0), want, rtol=1e-9)
    # ssim / per-video / mean over videos pass data_range on (read on the default 255 scale,
    # [0, 1] data has tiny variances next to C1, C2 and scores ~1)
    xs, ys = x[:, :, :, :1] / 255.0, y[:, :, :, :1] / 255.0
    want = [reference_ssim_frame(xs[t], ys[t], L=1.0) for t in range(2)]
    assert metrics.ssim(xs, ys) > 0.99 > np.mean(want)
    assert metrics.ssim(xs, ys, 1.0) == pytest.approx(np.mean(want), rel=1e-9)
    np.testing.assert_allclose(metrics.ssim_per_video(xs[None], ys[None], 1.0), [np.mean(want)], rtol=1e-9)
    assert metrics.mean_ssim(np.stack([xs, xs]), np.stack([ys, xs]), 1.0) == pytest.approx(
        (np.mean(want) + 1.0) / 2, rel=1e-9)
    assert metrics.mean_ssim(np.stack([x, x]), np.stack([y, x])) == pytest.approx(
        (np.mean([reference_ssim_frame(x[t], y[t]) for t in range(2)]) + 1.0) / 2, rel=1e-9)


def test_gradient_magnitude_of_a_plane_and_the_edge_measures():
    """Luma 3 r + 4 c (r = row, c = column): central differences give gy = 3, gx = 4,
    |grad| = 5 in every interior pixel; the channels differ but average to that plane."""
    r, c = np.meshgrid(np.arange(6.0), np.arange(7.0), indexing="ij")
    plane = 3 * r + 4 * c
    video = np.stack([plane - 5, plane, plane + 5], axis=-1)[None].repeat(2, axis=0)   # (2, 6, 7, 3)
    g = metrics.gradient_magnitude(video)
    assert g.shape == (2, 4, 5)
    np.testing.assert_allclose(g, 5.0, rtol=1e-12)
    rows_only = np.repeat((3 * r)[None, ..., None], 3, axis=-1)            # gy alone
    np.testing.assert_allclose(metrics.gradient_magnitude(rows_only), 3.0, rtol=1e-12)
    # twice the edges: ratio 2, mean | |grad x| - |grad ref| | = 5
    assert metrics.sharpness_ratio(2 * video, video) == pytest.approx(2.0, rel=1e-12)
    assert metrics.sharpness_ratio(video, 2 * video) == pytest.approx(0.5, rel=1e-12)
    assert metrics.gradient_error(2 * video, video) == pytest.approx(5.0, rel=1e-12)
    assert metrics.gradient_error(video, 2 * video) == pytest.approx(5.0, rel=1e-12)
    # a flat reference: the denominator is floored at 1e-12 (finite, not inf / nan)
    assert metrics.sharpness_ratio(video, np.zeros_like(video)) == pytest.approx(5.0 / 1e-12, rel=1e-9)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.gradient_error(video, video[:1])
