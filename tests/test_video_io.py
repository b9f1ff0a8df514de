"""video_io: npy exact, mp4 within a stated tolerance, gif, contact sheets, corrupt files."""
import os

import numpy as np
import pytest
from PIL import Image

from seaweed_jax.data import video_io as vio
from seaweed_jax.moving_shapes import builder as ms

# mp4 tolerance (H.264 yuv420p, crf 17). Chroma is stored at half resolution, so pixels on a
# saturated colour edge can be off by up to ~255; we bound the clip average and the pixels
# at least 3 px away from any edge. Measured on 40 moving_shapes clips: mean <= 1.94,
# interior max 11; smooth gradient: PSNR 42 dB.
MP4_MEAN_ABS_TOL = 3.0
MP4_INTERIOR_TOL = 16
MP4_SMOOTH_PSNR = 35.0


def _clip(i=0, h=64, w=64, t=17):
    return ms.render_example(0, i, h, w, t)[0]


def _interior(video: np.ndarray, r: int = 3) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood in the same frame has one colour."""
    t, h, w, _ = video.shape
    p = np.pad(video, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    out = np.ones((t, h, w), bool)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out &= (p[:, dy:dy + h, dx:dx + w] == video).all(-1)
    return out


def test_npy_round_trip_exact(tmp_path):
    v = _clip()
    path = vio.write_npy(tmp_path / "a.npy", v)
    r = vio.read_video(path)
    assert r.dtype == np.uint8 and np.array_equal(r, v)
    img = v[0]  # (H, W, 3) image -> (1, H, W, 3)
    assert np.array_equal(vio.read_video(vio.write_npy(tmp_path / "img.npy", img)), img[None])


@pytest.mark.parametrize("i", range(4))
def test_mp4_round_trip_within_tolerance(tmp_path, i):
    v = _clip(i)
    r = vio.read_video(vio.write_mp4(tmp_path / "a.mp4", v))
    assert r.shape == v.shape and r.dtype == np.uint8
    err = np.abs(r.astype(np.int32) - v)
    assert err.mean() <= MP4_MEAN_ABS_TOL
    assert err.max(-1)[_interior(v)].max() <= MP4_INTERIOR_TOL


def test_mp4_smooth_content_psnr(tmp_path):
    t = np.linspace(0, 1, 17)[:, None, None, None]
    y = np.linspace(0, 1, 64)[None, :, None, None]
    x = np.linspace(0, 1, 64)[None, None, :, None]
    g = np.concatenate(np.broadcast_arrays(0.3 * t + 0.7 * y, x + 0 * t, (x + y) / 2 + 0 * t), -1)
    g = np.rint(g / g.max() * 255).astype(np.uint8)
    r = vio.read_video(vio.write_mp4(tmp_path / "g.mp4", g)).astype(np.float64)
    psnr = 10 * np.log10(255.0**2 / np.mean((r - g) ** 2))
    assert psnr >= MP4_SMOOTH_PSNR


@pytest.mark.parametrize("h, w, t", [(33, 47, 5), (32, 31, 1), (17, 16, 9)])
def test_mp4_odd_sizes(tmp_path, h, w, t):
    v = _clip(1, h, w, t)
    r = vio.read_video(vio.write_mp4(tmp_path / "odd.mp4", v))
    assert r.shape == (t, h, w, 3)
    assert np.abs(r.astype(np.int32) - v).mean() <= MP4_MEAN_ABS_TOL


def test_gif_round_trip(tmp_path):
    v = _clip(2, 32, 32, 9)
    r = vio.read_video(vio.write_gif(tmp_path / "a.gif", v))
    # Two colours per clip fit any palette, so this GIF happens to be exact.
    assert r.shape == v.shape and np.array_equal(r, v)
    # Identical consecutive frames (Pillow merges them) still read back as T frames.
    still = np.stack([v[0]] * 3 + [v[4]] * 2 + [v[0]])
    assert np.array_equal(vio.read_video(vio.write_gif(tmp_path / "s.gif", still)), still)


def test_write_video_dispatch_and_errors(tmp_path):
    v = _clip(3, 32, 32, 5)
    for ext in (".mp4", ".gif", ".npy"):
        assert vio.read_video(vio.write_video(tmp_path / f"x{ext}", v)).shape == v.shape
    with pytest.raises(ValueError, match="extension"):
        vio.write_video(tmp_path / "x.avi", v)
    with pytest.raises(ValueError, match="to_uint8"):
        vio.write_npy(tmp_path / "f.npy", v.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        vio.write_npy(tmp_path / "f.npy", np.zeros((2, 3), np.uint8))


def test_to_uint8():
    x = np.array([-1.5, -1.0, 0.0, 1.0, 2.0], np.float32)
    assert vio.to_uint8(x).tolist() == [0, 0, 128, 255, 255]
    assert vio.to_uint8(np.array([0.0, 0.5, 1.0]), value_range=(0, 1)).tolist() == [0, 128, 255]


def test_contact_sheet_layout(tmp_path):
    videos = [_clip(i, 32, 32, 5) for i in range(3)]
    pad = 2
    path = vio.write_contact_sheet(tmp_path / "sheet.png", videos, pad=pad)
    sheet = np.asarray(Image.open(path).convert("RGB"))
    assert sheet.shape == (pad + 3 * (32 + pad), pad + 5 * (32 + pad), 3)
    for r in range(3):
        for c in range(5):
            y, x = pad + r * (32 + pad), pad + c * (32 + pad)
            assert np.array_equal(sheet[y:y + 32, x:x + 32], videos[r][c])
    # With captions: a text strip above each row; mixed sizes are allowed.
    path = vio.write_contact_sheet(tmp_path / "labelled.png", [videos[0], _clip(0, 48, 80, 1)],
                                   labels=["first", "second"])
    assert Image.open(path).size[1] > 32 + 48


def _expect_read_error(path, match=None):
    with pytest.raises(vio.VideoReadError, match=match):
        vio.read_video(path)


def test_corrupt_and_unreadable_files_raise_video_read_error(tmp_path):
    v = _clip()
    good_mp4 = vio.write_mp4(tmp_path / "good.mp4", v)
    good_npy = vio.write_npy(tmp_path / "good.npy", v)
    data = open(good_mp4, "rb").read()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.mp4").write_bytes(os.urandom(4096))
    (tmp_path / "empty.mp4").write_bytes(b"")
    data = open(good_npy, "rb").read()
    (tmp_path / "truncated.npy").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.npy").write_bytes(b"not an array at all")
    np.save(tmp_path / "float.npy", v.astype(np.float32))
    np.save(tmp_path / "flat.npy", np.zeros(10, np.uint8))
    (tmp_path / "garbage.gif").write_bytes(b"GIF89a" + os.urandom(64))
    for name in ["truncated.mp4", "garbage.mp4", "empty.mp4", "truncated.npy", "garbage.npy",
                 "float.npy", "flat.npy", "garbage.gif"]:
        _expect_read_error(tmp_path / name)
    _expect_read_error(tmp_path / "missing.mp4", "no such file")
    _expect_read_error(tmp_path / "clip.avi", "extension")
    # Callers can skip and count: the good files still read.
    ok, bad = 0, 0
    for path in vio.list_videos(tmp_path):
        try:
            vio.read_video(path)
            ok += 1
        except vio.VideoReadError:
            bad += 1
    assert (ok, bad) == (2, 8)


def test_list_videos(tmp_path):
    v = _clip(0, 16, 16, 1)
    (tmp_path / "sub").mkdir()
    for name in ["b.mp4", "a.npy", "sub/c.gif", "notes.txt", "sub/d.MP4"]:
        target = tmp_path / name
        if name.endswith(".txt"):
            target.write_text("x")
        else:
            vio.write_video(target, v)
    found = [os.path.relpath(p, tmp_path) for p in vio.list_videos(tmp_path)]
    assert found == ["a.npy", "b.mp4", "sub/c.gif", "sub/d.MP4"]
    top = [os.path.relpath(p, tmp_path) for p in vio.list_videos(tmp_path, recursive=False)]
    assert top == ["a.npy", "b.mp4"]
    with pytest.raises(FileNotFoundError):
        vio.list_videos(tmp_path / "nope")
