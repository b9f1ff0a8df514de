"""moving_shapes: vocabulary, renderer, TFDS build without TensorFlow, labels vs pixels."""
import glob
import importlib.util
import os
import sys

import numpy as np
import pytest

from seaweed_jax.data import datasets
from seaweed_jax.moving_shapes import builder as ms
from seaweed_jax.moving_shapes import labels as msl

SMALL = dict(num_train=96, num_validation=24)


def _build(name, data_dir, seed=0, **counts):
    counts = counts or SMALL
    datasets.ensure_built(name, data_dir, seed=seed, verbose=False, **counts)
    return {split: datasets.data_source(name, split, data_dir, seed=seed, **counts)
            for split in ("train", "validation")}


# ----------------------------------------------------------------------------- vocabulary
def test_vocabulary_matches_issue():
    assert msl.COLORS == {
        "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
        "yellow": (255, 255, 0), "cyan": (0, 255, 255), "magenta": (255, 0, 255),
        "white": (255, 255, 255), "orange": (255, 165, 0)}
    assert msl.BACKGROUNDS == {"black": (0, 0, 0), "gray": (128, 128, 128), "navy": (0, 0, 128)}
    assert msl.SHAPES == ("circle", "square", "triangle")
    assert msl.DIRECTIONS == ("left", "right", "up", "down", "still")
    assert (msl.canonical_caption("red", "circle", "left", "black")
            == "a red circle moving left on a black background")
    assert (msl.canonical_caption("red", "circle", "still", "black")
            == "a red circle standing still on a black background")


def test_config_names_encode_seed_and_counts():
    assert ms.config_name(64, 64, 17) == "64x64_f17"
    assert ms.config_name(64, 64, 17, seed=3, num_train=200, num_validation=32) == \
        "64x64_f17-seed3-n200-v32"
    assert ms.config_name(48, 80, 17, num_validation=32) == "48x80_f17-v32"
    assert ms.parse_config_name("64x64_f17-seed3-n200-v32") == (64, 64, 17, 3, 200, 32)
    registered = {c.name for c in ms.MovingShapes.BUILDER_CONFIGS}
    assert {"32x32_f1", "64x64_f1", "32x32_f17", "64x64_f17", "64x64_f33", "48x80_f17"} <= registered
    c = ms.MovingShapes.builder_configs["64x64_f17"]
    assert (c.seed, c.num_train, c.num_validation) == (0, 20_000, 512)


@pytest.mark.parametrize("bad, fragment", [
    ("imagenet/64x64_f17", "moving_shapes/64x64_f17"),   # error lists the built-in configs
    ("moving_shapes/64x64", "HxW_fT"),
    ("moving_shapes/64x64_f16", "1+4k"),
    ("moving_shapes/8x8_f17", ">= 16"),
    ("moving_shapes/64x64_f17-seed3", "not in the name"),
])
def test_parse_name_errors(bad, fragment):
    with pytest.raises(ValueError, match=None) as e:
        datasets.parse_name(bad)
    assert fragment in str(e.value)


def test_parse_name():
    assert datasets.parse_name("moving_shapes/48x80_f17") == ("moving_shapes", 48, 80, 17)


# ----------------------------------------------------------------------------- renderer
def test_render_is_deterministic_and_varies():
    v1, l1 = ms.render_example(5, 7, 32, 32, 17)
    v2, l2 = ms.render_example(5, 7, 32, 32, 17)
    assert v1.dtype == np.uint8 and v1.shape == (17, 32, 32, 3)
    assert np.array_equal(v1, v2) and l1 == l2
    others = [ms.render_example(s, i, 32, 32, 17)[0] for s, i in [(5, 8), (6, 7)]]
    assert not any(np.array_equal(v1, o) for o in others)


def test_images_are_still():
    for i in range(50):
        v, labels = ms.render_example(0, i, 32, 32, 1)
        assert v.shape == (1, 32, 32, 3) and labels["direction"] == "still"
        assert "standing still" in labels["caption"] or "still" in labels["caption"]


def test_render_rejects_bad_frames():
    with pytest.raises(ValueError, match="1\\+4k"):
        ms.render_example(0, 0, 32, 32, 16)


# ----------------------------------------------------------------------------- pixel analysis
def _analyse(video: np.ndarray) -> dict:
    """Reads the labels back from pixels alone (uses only the public RGB tables)."""
    t, h, w, _ = video.shape
    packed = (video[..., 0].astype(np.int32) << 16) | (video[..., 1].astype(np.int32) << 8) \
        | video[..., 2]                                            # one int per RGB colour
    colours, counts = np.unique(packed, return_counts=True)
    assert len(colours) == 2, f"expected exactly 2 colours, got {len(colours)}"
    bg_code, fg_code = colours[np.argmax(counts)], colours[np.argmin(counts)]
    unpack = lambda c: np.array([c >> 16, (c >> 8) & 255, c & 255])  # noqa: E731
    bg, fg = unpack(int(bg_code)), unpack(int(fg_code))
    mask = packed == fg_code                                       # (T, H, W)
    areas = mask.sum((1, 2))
    ys, xs = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    cy = (mask * ys).sum((1, 2)) / areas
    cx = (mask * xs).sum((1, 2)) / areas
    # Shape class from frame 0: fill ratio of its bounding box and apex orientation.
    rows = np.nonzero(mask[0].any(1))[0]
    cols = np.nonzero(mask[0].any(0))[0]
    box = mask[0][rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    fill = box.mean()
    widths = box.sum(1)
    if fill > 0.95:
        shape = "square"
    elif 0.72 < fill < 0.9:
        shape = "circle"
    elif 0.45 < fill < 0.67 and widths[0] < widths[-1]:
        shape = "triangle"
    else:
        shape = f"unknown(fill={fill:.2f})"
    dy, dx = cy[-1] - cy[0], cx[-1] - cx[0]
    if np.all(cy == cy[0]) and np.all(cx == cx[0]):
        direction = "still"
    elif abs(dx) > abs(dy):
        direction = "right" if dx > 0 else "left"
    else:
        direction = "down" if dy > 0 else "up"
    return dict(bg=tuple(int(c) for c in bg), fg=tuple(int(c) for c in fg), shape=shape,
                direction=direction, areas=areas, cy=cy, cx=cx, box=box.shape, mask=mask)


def _check_example(video, labels, h, w, t):
    a = _analyse(video)
    assert a["fg"] == msl.COLORS[labels["color"]]
    assert a["bg"] == msl.BACKGROUNDS[labels["background"]]
    assert a["shape"] == labels["shape"]
    assert a["direction"] == labels["direction"]
    d = ms.shape_diameter(h, w)
    assert a["box"] == (d, d) and abs(d - h / 4) <= 1               # diameter ~ H/4
    # Never clipped by the frame: the same shape area in every frame.
    assert np.all(a["areas"] == a["areas"][0])
    if labels["direction"] == "still":
        assert all((a["mask"] == a["mask"][0]).all(axis=(1, 2)))
        return
    axis, other = (a["cx"], a["cy"]) if labels["direction"] in ("left", "right") else (a["cy"], a["cx"])
    steps = np.diff(axis)
    sign = 1 if labels["direction"] in ("right", "down") else -1
    assert np.all(sign * steps >= 0), "motion must be monotonic (no bouncing)"
    assert abs(axis[-1] - axis[0]) >= h / 3 - 1e-6                  # net displacement >= H/3
    assert np.all(other == other[0])                               # straight along one axis
    words = set(labels["caption"].split()) | set(labels["caption"].replace(",", "").split())
    assert {labels["color"], labels["shape"], labels["background"]} <= words


def _decoded_labels(ex: dict) -> dict:
    return dict(color=msl.COLOR_NAMES[ex["color"]], shape=msl.SHAPES[ex["shape"]],
                direction=msl.DIRECTIONS[ex["direction"]],
                background=msl.BACKGROUND_NAMES[ex["background"]],
                caption=ex["caption"].decode() if isinstance(ex["caption"], bytes) else ex["caption"])


@pytest.mark.parametrize("h, w, t", [(32, 32, 17), (48, 80, 17), (32, 32, 1)])
def test_labels_match_pixels_for_every_example(shared_data_dir, h, w, t):
    """Every example of a small build (both splits) agrees with its stored labels."""
    sources = _build(f"moving_shapes/{h}x{w}_f{t}", shared_data_dir, seed=11)
    seen = {"direction": set(), "shape": set(), "color": set(), "background": set()}
    for split, src in sources.items():
        canonical = 0
        for i in range(len(src)):
            ex = src[i]
            labels = _decoded_labels(ex)
            assert ex["video"].shape == (t, h, w, 3) and ex["video"].dtype == np.uint8
            _check_example(ex["video"], labels, h, w, t)
            for k in seen:
                seen[k].add(labels[k])
            canonical += labels["caption"] == msl.canonical_caption(
                labels["color"], labels["shape"], labels["direction"], labels["background"])
        assert canonical >= 0.6 * len(src), f"{split}: {canonical}/{len(src)} canonical captions"
    # The check is not vacuous: the builds cover the vocabulary.
    assert seen["direction"] == ({"still"} if t == 1 else set(msl.DIRECTIONS))
    assert seen["shape"] == set(msl.SHAPES) and seen["background"] == set(msl.BACKGROUND_NAMES)
    assert len(seen["color"]) == len(msl.COLORS)


def test_many_renders_match_labels():
    """Wider coverage than the builds: 300 renders at the other built-in video sizes."""
    for h, w, t in [(64, 64, 17), (64, 64, 33), (48, 80, 17)]:
        for i in range(100):
            video, labels = ms.render_example(3, i, h, w, t)
            _check_example(video, labels, h, w, t)


# ----------------------------------------------------------------------------- TFDS build
def test_build_without_tensorflow_and_read_back(shared_data_dir):
    assert importlib.util.find_spec("tensorflow") is None, "TensorFlow must not be installed"
    sources = _build("moving_shapes/64x64_f17", shared_data_dir)
    assert "tensorflow" not in sys.modules
    train, val = sources["train"], sources["validation"]
    assert (len(train), len(val)) == (SMALL["num_train"], SMALL["num_validation"])
    ex = train[5]
    assert ex["video"].shape == (17, 64, 64, 3) and ex["video"].dtype == np.uint8
    # Record i is render_example(seed, i) (validation: offset indices), labels as ClassLabels.
    video, labels = ms.render_example(0, 5, 64, 64, 17)
    assert np.array_equal(ex["video"], video) and _decoded_labels(ex) == labels
    vvideo, _ = ms.render_example(0, ms.VALIDATION_INDEX_OFFSET + 3, 64, 64, 17)
    assert np.array_equal(val[3]["video"], vvideo)
    builder = datasets.ensure_built("moving_shapes/64x64_f17", shared_data_dir, verbose=False,
                                    **SMALL)
    assert builder.builder_config.name == "64x64_f17-n96-v24"
    assert builder.info.file_format.value == "array_record"


def _record_files(data_dir, config):
    files = sorted(glob.glob(os.path.join(data_dir, "moving_shapes", config, "*", "*.array_record*")))
    assert files, f"no record files for {config} under {data_dir}"
    return files


def test_same_seed_identical_bytes_other_seed_differs(tmp_path):
    counts = dict(num_train=64, num_validation=16)
    name = "moving_shapes/32x32_f17"
    for sub, seed in [("a", 0), ("b", 0), ("c", 1)]:
        datasets.ensure_built(name, str(tmp_path / sub), seed=seed, verbose=False, **counts)
    a = _record_files(tmp_path / "a", "32x32_f17-n64-v16")
    b = _record_files(tmp_path / "b", "32x32_f17-n64-v16")
    c = _record_files(tmp_path / "c", "32x32_f17-seed1-n64-v16")
    assert [os.path.basename(f) for f in a] == [os.path.basename(f) for f in b]
    for fa, fb in zip(a, b):
        assert open(fa, "rb").read() == open(fb, "rb").read()
    src_a = datasets.data_source(name, "train", str(tmp_path / "a"), **counts)
    src_c = datasets.data_source(name, "train", str(tmp_path / "c"), seed=1, **counts)
    differing = sum(not np.array_equal(src_a[i]["video"], src_c[i]["video"]) for i in range(64))
    assert differing >= 60


def test_other_seed_never_reuses_cached_build(tmp_path):
    counts = dict(num_train=16, num_validation=8)
    b0 = datasets.ensure_built("moving_shapes/32x32_f1", str(tmp_path), seed=0, verbose=False, **counts)
    b2 = datasets.get_builder("moving_shapes/32x32_f1", str(tmp_path), seed=2, **counts)
    assert b0.is_prepared() and not b2.is_prepared()
    assert b0.data_dir != b2.data_dir
    with pytest.raises(FileNotFoundError, match="--seed=2"):
        datasets.data_source("moving_shapes/32x32_f1", "train", str(tmp_path), seed=2, **counts)
    # Second ensure_built reuses the files (no rewrite).
    files = _record_files(tmp_path, "32x32_f1-n16-v8")
    mtimes = [os.path.getmtime(f) for f in files]
    datasets.ensure_built("moving_shapes/32x32_f1", str(tmp_path), seed=0, verbose=False, **counts)
    assert mtimes == [os.path.getmtime(f) for f in files]


def test_pixel_checker_rejects_wrong_labels():
    """The labels-vs-pixels checker is not vacuous: any single wrong label fails it."""
    video, labels = next((v, l) for v, l in (ms.render_example(1, i, 32, 32, 17) for i in range(99))
                         if l["direction"] == "left")
    _check_example(video, labels, 32, 32, 17)
    wrong = {"color": "green" if labels["color"] != "green" else "red",
             "background": "gray" if labels["background"] != "gray" else "navy",
             "shape": "square" if labels["shape"] != "square" else "circle",
             "direction": "right"}
    for key, value in wrong.items():
        with pytest.raises(AssertionError):
            _check_example(video, {**labels, key: value}, 32, 32, 17)
    with pytest.raises(AssertionError):  # a bouncing clip is rejected
        _check_example(np.concatenate([video[:9], video[8::-1][1:]]), labels, 32, 32, 17)
