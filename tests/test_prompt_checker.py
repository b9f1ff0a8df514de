"""The prompt checker on ground-truth moving_shapes clips (>= 98%), on shuffled labels (about
chance), on blurred/noisy copies, and its prompt parser."""
import numpy as np
import pytest
from scipy import ndimage

from seaweed_jax.moving_shapes import builder as ms
from seaweed_jax.moving_shapes import checker as pc
from seaweed_jax.moving_shapes import labels as msl

N_PER_SIZE = 200          # x 2 sizes = 400 clips of 17 frames
SIZES = ((32, 32), (64, 64))
# Chance for a shuffled label = sum_k p_k q_k (label and prediction marginals); with the
# dataset's uniform draws: colour 1/8, shape 1/3, direction 1/5, all three 1/120.
UNIFORM_CHANCE = dict(color=1 / 8, shape=1 / 3, direction=1 / 5, all=1 / 120)


@pytest.fixture(scope="module")
def clips():
    out = []
    for h, w in SIZES:
        for i in range(N_PER_SIZE):
            video, labels = ms.render_example(0, i, h, w, 17)
            out.append((video, labels))
    return out


@pytest.fixture(scope="module")
def predictions(clips):
    return [pc.analyze(v) for v, _ in clips]


def test_ground_truth_scores(clips, predictions):
    # Captions (70% canonical, the rest paraphrased) are parsed, then compared.
    results = [pc.compare(p, labels["caption"]) for p, (_, labels) in zip(predictions, clips)]
    scores = {k: float(np.mean([r[f"{k}_ok"] for r in results]))
              for k in ("color", "shape", "direction", "all", "background")}
    print(f"ground truth ({len(results)} clips, {SIZES}, 17 frames): {scores}")
    for k in ("color", "shape", "direction", "all"):
        assert scores[k] >= 0.98, (k, scores)
    # the same through the labels dict
    assert all(pc.compare(p, labels)["all_ok"] == r["all_ok"]
               for p, (_, labels), r in zip(predictions, clips, results))


def test_shuffled_labels_score_about_chance(clips, predictions):
    labels = [l for _, l in clips]
    n = len(labels)
    rng = np.random.default_rng(123)
    accs = {k: [] for k in ("color", "shape", "direction", "all")}
    for _ in range(5):    # five shuffles, averaged, to tighten the estimate
        perm = rng.permutation(n)
        res = [pc.compare(p, labels[j]) for p, j in zip(predictions, perm)]
        for k in accs:
            accs[k].append(np.mean([r[f"{k}_ok"] for r in res]))
    shuffled = {k: float(np.mean(v)) for k, v in accs.items()}
    # Expected chance from the empirical marginals of labels (l) and predictions (q).
    expected = {}
    for k in ("color", "shape", "direction"):
        lab = [l[k] for l in labels]
        pred = [p[k] for p in predictions]
        cats = set(lab) | set(pred)
        expected[k] = sum(lab.count(c) / n * pred.count(c) / n for c in cats)
    print(f"shuffled labels: {shuffled}; expected chance {expected}; uniform {UNIFORM_CHANCE}")
    for k, e in expected.items():
        sd = np.sqrt(e * (1 - e) / (5 * n))
        assert abs(shuffled[k] - e) < 5 * sd + 0.01, (k, shuffled[k], e)
        # and near the uniform-draw chance level
        assert abs(shuffled[k] - UNIFORM_CHANCE[k]) < 0.06, (k, shuffled[k])
    assert shuffled["all"] < 0.03


def _degrade(video, rng, blur=1.0, noise=10.0, shift=15.0):
    x = ndimage.gaussian_filter(video.astype(np.float64), sigma=(0, blur, blur, 0))
    x = x + rng.normal(0, noise, x.shape) + rng.uniform(-shift, shift, 3)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def test_robust_to_blur_noise_and_colour_shift(clips):
    # VAE-like damage: Gaussian blur sigma 1 px, noise sd 10 (~28 dB), a global colour
    # shift of up to +-15 per channel. Every 4th clip of each size.
    rng = np.random.default_rng(0)
    sub = clips[::4]
    s = pc.score([_degrade(v, rng) for v, _ in sub], [l for _, l in sub])
    print(f"degraded ({s['n']} clips): " + str({k: s[k] for k in ('color', 'shape', 'direction', 'all')}))
    for k in ("color", "shape", "direction", "all"):
        assert s[k] >= 0.95, (k, s[k])


def test_other_sizes_and_images():
    for (h, w, t) in ((48, 80, 17), (32, 32, 1), (64, 64, 33)):
        for i in range(12):
            video, labels = ms.render_example(1, i, h, w, t)
            r = pc.check(video if t > 1 else video[0], labels)
            assert r["all_ok"] and r["background_ok"], (h, w, t, i, r)


def test_check_api_and_failures():
    video, labels = ms.render_example(0, 5, 32, 32, 17)
    r = pc.check(video, labels["caption"])
    assert set(r) >= {"color_ok", "shape_ok", "direction_ok", "all_ok", "background_ok",
                      "predicted", "expected"}
    # A wrong prompt is caught on the right attribute only.
    wrong_color = next(c for c in msl.COLORS if c != labels["color"])
    r = pc.check(video, dict(labels, color=wrong_color))
    assert not r["color_ok"] and r["shape_ok"] and r["direction_ok"] and not r["all_ok"]
    # A blank video (no shape) fails every attribute instead of crashing.
    blank = np.zeros_like(video)
    r = pc.check(blank, labels)
    assert r["predicted"]["color"] is None and not r["all_ok"]
    # Reversing time flips the direction (unless still).
    if labels["direction"] != "still":
        opposite = dict(left="right", right="left", up="down", down="up")[labels["direction"]]
        assert pc.analyze(video[::-1])["direction"] == opposite
    with pytest.raises(ValueError, match="names no"):
        pc.check(video, "a red thing on a black background")
    with pytest.raises(ValueError, match="uint8"):
        pc.analyze(video.astype(np.float32) / 127.5 - 1)


def test_parse_prompt():
    assert pc.parse_prompt("a red circle moving left on a black background") == dict(
        color="red", shape="circle", direction="left", background="black")
    assert pc.parse_prompt("a white square standing still on a navy background") == dict(
        color="white", shape="square", direction="still", background="navy")
    assert pc.parse_prompt("A grey background with an orange triangle moving up.") == dict(
        color="orange", shape="triangle", direction="up", background="gray")
    assert pc.parse_prompt("cyan circle, stationary")["direction"] == "still"
    assert pc.parse_prompt("a blue square")["direction"] is None
    # Every caption the dataset writes (canonical and paraphrased) parses to its labels.
    for i in range(200):
        _, labels = ms.render_example(3, i, 16, 16, 5)
        parsed = pc.parse_prompt(labels["caption"])
        assert parsed == {k: labels[k] for k in parsed}, labels["caption"]
