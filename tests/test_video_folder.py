"""video_folder: clips from a folder of the user's own videos (written here with PyAV).

The folder (module fixture) holds good clips in several containers, captions from sidecar
.txt files and a JSONL manifest, and one file per skip reason. Clips are 5 frames at 8 fps
(0.625 s), so a 24-frame 12 fps file (2 s) gives clips starting at 0, 0.625 and 1.25 s.
"""
import glob
import json
import os
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from seaweed_jax import config_lib
from seaweed_jax.data import datasets, pipeline
from seaweed_jax.data import video_folder as vf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = dict(frames=5, height=32, width=32, fps=8)
NAME = "video_folder/clips"
SRC_FPS, SRC_FRAMES = 12, 24
# Source frame i has background level LEVEL0 + STEP * i, so a clip's frames tell which
# source frames were picked. 8 fps from 12 fps: times j/8 -> nearest frames 0,1,3,4,6 (1.5
# is a tie: the earlier frame 1).
LEVEL0, STEP = 20, 9
CLIP_STARTS = [[0, 1, 3, 4, 6], [7, 9, 10, 12, 13], [15, 16, 18, 19, 21]]
CAPTIONS = {"a.mp4": "a white square moving right",          # sidecar
            "sub/b.mp4": "a white square, manifest caption",   # manifest (sidecar ignored)
            "c.webm": "a webm clip",                          # manifest
            "d.gif": "a gif clip",                            # sidecar
            "odd.mkv": "an odd-sized clip"}                   # sidecar
SKIPPED = {"missing": 1, "empty": 1, "no_caption": 1, "corrupt": 1, "too_small": 1,
           "too_short": 2}  # too_short: short.mp4 and the image img.png (frames > 1)


def _moving(t=SRC_FRAMES, h=48, w=64):
    """Level-coded background + a white 8x8 square moving 2 px right per frame."""
    v = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        v[i] = LEVEL0 + STEP * i
        v[i, 20:28, 2 * i:2 * i + 8] = 255
    return v


def _write(path, video, fps=SRC_FPS, codec="libx264", pix_fmt="yuv420p", options=None):
    """Encodes uint8 (T,H,W,3) with PyAV (what users' files come from: ffmpeg)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, mode="w") as c:
        s = c.add_stream(codec, rate=fps)
        s.height, s.width = video.shape[1:3]
        s.pix_fmt = pix_fmt
        s.options = options or {}
        for frame in video:
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _odd_frames(t=SRC_FRAMES):
    """37x53: yellow top 4 rows, red left / blue right 6 columns (cropped away), green."""
    v = np.zeros((t, 37, 53, 3), np.uint8)
    v[:] = (0, 200, 0)
    v[:, :, :6] = (255, 0, 0)
    v[:, :, -6:] = (0, 0, 255)
    v[:, :4] = (255, 255, 0)
    return v


def _caption(folder, rel, text):
    with open(os.path.join(folder, os.path.splitext(rel)[0] + ".txt"), "w") as f:
        f.write(text + "\n")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("my_videos"))
    crf = {"crf": "10"}
    _write(f"{d}/a.mp4", _moving(), options=crf)
    _write(f"{d}/sub/b.mp4", _moving(), options=crf)
    _write(f"{d}/c.webm", _moving(), codec="libvpx-vp9", options={"crf": "10", "b": "0"})
    Image.fromarray(_moving()[0]).save(f"{d}/d.gif", save_all=True, loop=0, duration=80,
                                       append_images=[Image.fromarray(f) for f in _moving()[1:]])
    _write(f"{d}/odd.mkv", _odd_frames(), codec="ffv1", pix_fmt="bgr0")  # lossless, odd size
    _write(f"{d}/short.mp4", _moving(t=4))                  # 0.33 s < one 0.625 s clip
    _write(f"{d}/tiny.mp4", _moving(h=12, w=16))            # needs 2.67x > 2x upscaling
    _write(f"{d}/nocap.mp4", _moving())                     # fine, but no caption
    with open(f"{d}/bad.mp4", "wb") as f:                   # not a video at all
        f.write(np.random.default_rng(0).bytes(4096))
    open(f"{d}/empty.mp4", "wb").close()
    Image.fromarray(_moving()[3]).save(f"{d}/img.png")
    for rel in ("a.mp4", "d.gif", "odd.mkv"):
        _caption(d, rel, CAPTIONS[rel])
    for rel in ("sub/b.mp4", "short.mp4", "tiny.mp4", "bad.mp4", "empty.mp4", "img.png"):
        _caption(d, rel, "sidecar caption")  # b's is overridden by the manifest
    with open(f"{d}/notes.txt", "w") as f:  # not a sidecar of anything: ignored
        f.write("not a caption")
    manifest = os.path.join(str(tmp_path_factory.mktemp("meta")), "captions.jsonl")
    with open(manifest, "w") as f:
        for rel in ("sub/b.mp4", "c.webm", "gone.mp4"):  # gone.mp4 does not exist
            f.write(json.dumps({"path": rel, "caption": CAPTIONS.get(rel, "gone")}) + "\n")
    return {"dir": d, "manifest": manifest}


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))
    builder = datasets.build_video_folder(NAME, data_dir, folder=folder["dir"],
                                          manifest=folder["manifest"], verbose=False,
                                          validation_fraction=0.0, **SETTINGS)
    return {"data_dir": data_dir, "builder": builder}


def _records(data_dir, name=NAME, split="train"):
    src = datasets.data_source(name, split, data_dir)
    return [src[i] for i in range(len(src))]


def _text(x):
    return x.decode() if isinstance(x, bytes) else str(x)


# ----------------------------------------------------------------------------- pure pieces
def test_resample_picks_nearest_frames():
    timed = [(Fraction(i, 12), Fraction(1, 12), i) for i in range(24)]
    clips = list(vf.resample_clips(timed, 5, Fraction(8), Fraction(5, 8)))
    assert clips == list(enumerate(CLIP_STARTS))
    # Overlapping clips (stride 0.25 s), a cap, and upsampling (frames repeat).
    overlapping = vf.resample_clips(timed, 5, Fraction(8), Fraction(1, 4))
    assert [k for k, _ in overlapping] == list(range(6))
    assert len(list(vf.resample_clips(timed, 5, Fraction(8), Fraction(1, 4), max_clips=2))) == 2
    up = list(vf.resample_clips(timed[:6], 5, Fraction(30), Fraction(1, 6)))
    assert up[0] == (0, [0, 0, 1, 1, 2])
    # The last target time must fall inside the video: 2 s of video, clip 3 would need 2.375 s.
    assert len(list(vf.resample_clips(timed, 5, Fraction(8), Fraction(5, 8)))) == 3


def test_cover_box_keeps_aspect_ratio():
    scale, box = vf.cover_box(37, 53, 32, 32)
    assert scale == pytest.approx(32 / 37)
    assert box == pytest.approx((8.0, 0.0, 45.0, 37.0))  # full height, 37 middle columns
    assert vf.cover_box(48, 64, 48, 64) == (1.0, (0.0, 0.0, 64.0, 48.0))


def test_split_of_is_a_stable_hash():
    names = [f"clip_{i:03d}.mp4" for i in range(400)]
    splits = [vf.split_of(n, 0.25) for n in names]
    assert 0.15 < splits.count("validation") / len(names) < 0.35
    assert splits == [vf.split_of(n, 0.25) for n in reversed(names)][::-1]
    assert all(vf.split_of(n, 0.0) == "train" for n in names)


def test_config_errors_name_the_setting(tmp_path):
    with pytest.raises(ValueError, match="1\\+4k"):
        vf.make_config("x", folder=str(tmp_path), frames=16, height=32, width=32, fps=8)
    with pytest.raises(ValueError, match="fps=0"):
        vf.make_config("x", folder=str(tmp_path), frames=17, height=32, width=32, fps=0)
    with pytest.raises(ValueError, match="manifest"):
        vf.make_config("x", folder=str(tmp_path), frames=17, height=32, width=32, fps=8,
                       manifest="captions.txt")
    with pytest.raises(ValueError, match="letters, digits"):
        datasets.parse_name("video_folder/has space")
    with pytest.raises(FileNotFoundError, match="--folder"):
        datasets.build_video_folder("video_folder/x", str(tmp_path), folder=str(tmp_path / "no"),
                                    verbose=False, **SETTINGS)


# ----------------------------------------------------------------------------- the build
def test_good_clips_shapes_captions_and_order(built):
    recs = _records(built["data_dir"])
    got = [(_text(r["path"]), int(r["clip_index"])) for r in recs]
    # Sorted paths, then clip order; 3 clips per 2 s file.
    assert got == [(p, k) for p in sorted(CAPTIONS) for k in range(3)]
    for r in recs:
        assert r["video"].shape == (5, 32, 32, 3) and r["video"].dtype == np.uint8
        assert _text(r["caption"]) == CAPTIONS[_text(r["path"])]
    assert set(built["builder"].info.splits) == {"train"}  # validation_fraction=0: no split


def test_frames_are_resampled_to_the_target_fps(built):
    for r in _records(built["data_dir"]):
        if _text(r["path"]) in ("a.mp4", "sub/b.mp4", "c.webm"):
            # Background (a corner away from the square) -> which source frame was used.
            level = r["video"][:, :4, -4:].astype(float).mean(axis=(1, 2, 3))
            picked = np.rint((level - LEVEL0) / STEP).astype(int).tolist()
            assert picked == CLIP_STARTS[int(r["clip_index"])], _text(r["path"])


def test_odd_size_is_scaled_and_center_cropped(built):
    (r, *_) = [r for r in _records(built["data_dir"]) if _text(r["path"]) == "odd.mkv"]
    frame = r["video"][0].astype(int)
    red = (frame[..., 0] > 150) & (frame[..., 2] < 100) & (frame[..., 1] < 100)
    blue = (frame[..., 2] > 150) & (frame[..., 0] < 100)
    assert not red.any() and not blue.any()        # side bands cropped, not squeezed in
    np.testing.assert_allclose(frame[8:, :, 1], 200, atol=2)   # green body, full width
    assert (frame[:3, :, 0] > 200).all() and (frame[:3, :, 1] > 200).all()  # yellow top kept


def test_bad_files_are_counted_by_reason(built):
    b = built["builder"]
    assert vf.skipped_counts(b) == SKIPPED
    assert vf.skipped_counts(b, "train") == SKIPPED
    assert sum(vf.skipped_counts(b, "validation").values()) == 0
    meta = b.info.metadata
    assert meta["skipped_files"]["train"]["corrupt"] == ["bad.mp4"]
    assert sorted(meta["skipped_files"]["train"]["too_short"]) == ["img.png", "short.mp4"]
    assert meta["skipped_files"]["train"]["missing"] == ["gone.mp4"]
    assert meta["files"]["train"] == {"used": 5, "skipped": 7}
    # Read back from disk without the folder settings: same counts and settings.
    again = datasets.get_builder(NAME, built["data_dir"])
    assert vf.skipped_counts(again) == SKIPPED
    assert again.info.metadata["settings"]["frames"] == 5


def test_building_twice_gives_identical_records(built, folder, tmp_path):
    other = str(tmp_path / "again")
    datasets.build_video_folder(NAME, other, folder=folder["dir"], manifest=folder["manifest"],
                                validation_fraction=0.0, verbose=False, **SETTINGS)

    assert _shards(other) and _shards(other) == _shards(built["data_dir"])


def _shards(data_dir, name="clips"):
    files = sorted(glob.glob(f"{data_dir}/video_folder/{name}/1.0.0/*.array_record*"))
    return [(os.path.basename(f), open(f, "rb").read()) for f in files]


def test_allow_empty_caption_and_validation_split(folder, tmp_path):
    b = datasets.build_video_folder("video_folder/all", str(tmp_path), folder=folder["dir"],
                                    allow_empty_caption=True, validation_fraction=0.5,
                                    verbose=False, **SETTINGS)
    recs = {s: _records(str(tmp_path), "video_folder/all", s) for s in b.info.splits}
    paths = {s: {_text(r["path"]) for r in rs} for s, rs in recs.items()}
    used = {"a.mp4", "sub/b.mp4", "c.webm", "d.gif", "odd.mkv", "nocap.mp4"}
    assert paths["train"] | paths.get("validation", set()) == used
    for s, ps in paths.items():
        assert all(vf.split_of(p, 0.5) == s for p in ps)
    captions = {_text(r["path"]): _text(r["caption"]) for rs in recs.values() for r in rs}
    assert captions["nocap.mp4"] == "" and captions["c.webm"] == ""  # no manifest this time
    assert captions["sub/b.mp4"] == "sidecar caption"
    assert vf.skipped_counts(b)["no_caption"] == 0


def test_image_dataset_uses_images_and_first_frames(folder, tmp_path):
    b = datasets.build_video_folder("video_folder/images", str(tmp_path), folder=folder["dir"],
                                    manifest=folder["manifest"], frames=1, height=32, width=32,
                                    fps=8, validation_fraction=0.0, verbose=False)
    recs = {_text(r["path"]): r for r in _records(str(tmp_path), "video_folder/images")}
    assert set(recs) == set(CAPTIONS) | {"img.png", "short.mp4"}  # short is fine for 1 frame
    assert all(r["video"].shape == (1, 32, 32, 3) for r in recs.values())
    level = recs["a.mp4"]["video"][0, :4, -4:].mean()
    assert abs(level - LEVEL0) < 3                          # the first frame of a video
    assert abs(recs["img.png"]["video"][0, :4, -4:].mean() - (LEVEL0 + 3 * STEP)) < 1
    assert vf.skipped_counts(b) == dict(SKIPPED, too_short=0)
    assert datasets.parse_name("video_folder/images", str(tmp_path)) == ("video_folder", 32, 32, 1)


def test_rebuild_with_other_settings_is_refused(built, folder):
    with pytest.raises(ValueError, match="other settings \\(frames: built 5, asked 9\\)"):
        datasets.build_video_folder(NAME, built["data_dir"], folder=folder["dir"],
                                    manifest=folder["manifest"], validation_fraction=0.0,
                                    verbose=False, **dict(SETTINGS, frames=9))
    same = datasets.build_video_folder(NAME, built["data_dir"], folder=folder["dir"],
                                       manifest=folder["manifest"], validation_fraction=0.0,
                                       verbose=False, **SETTINGS)
    assert same.info.splits["train"].num_examples == 15


# ----------------------------------------------------------------------------- integration
def test_names_resolve_from_the_stored_settings(built, monkeypatch):
    data_dir = built["data_dir"]
    assert datasets.parse_name(NAME, data_dir) == ("video_folder", 32, 32, 5)
    assert datasets.ensure_built(NAME, data_dir).info.splits["train"].num_examples == 15
    # No data_dir (pipeline / trainer callers): the dir this process used, else the default.
    monkeypatch.setattr(datasets, "_VIDEO_FOLDER_DIRS", {})
    monkeypatch.setenv("SEAWEED_DATA_DIR", data_dir)
    assert datasets.parse_name(NAME) == ("video_folder", 32, 32, 5)
    with pytest.raises(ValueError, match="no split 'validation'.*validation_fraction"):
        datasets.data_source(NAME, "validation", data_dir)
    assert datasets.parse_name("moving_shapes/48x80_f17") == ("moving_shapes", 48, 80, 17)


def test_not_built_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SEAWEED_DATA_DIR", str(tmp_path / "default"))
    cmd = f"python -m seaweed_jax.prepare --dataset=video_folder/nope --data_dir={tmp_path}"
    for call in (lambda: datasets.ensure_built("video_folder/nope", str(tmp_path)),
                 lambda: datasets.data_source("video_folder/nope", "train", str(tmp_path)),
                 lambda: datasets.parse_name("video_folder/nope", str(tmp_path))):
        with pytest.raises(datasets.NotBuiltError) as e:
            call()
        assert cmd in str(e.value) and "--folder=" in str(e.value)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)


def _data_config(name, **overrides):
    c = config_lib.base_config().data
    c.sources = [{"name": name, "weight": 1.0}]
    c.global_batch_size = 4
    for k, v in overrides.items():
        c[k] = v
    return c


def test_pipeline_reads_it_and_asks_to_prepare_when_missing(built, tmp_path, monkeypatch):
    it = pipeline.make_iterator(_data_config(NAME, crop={"frames": 5, "height": 24, "width": 24}),
                                data_dir=built["data_dir"], process_index=0, process_count=1)
    batch = next(it)
    assert batch["video"].shape == (4, 5, 24, 24, 3) and batch["video"].dtype == np.float32
    assert -1.0 <= batch["video"].min() and batch["video"].max() <= 1.0
    assert set(batch["caption"]) <= set(CAPTIONS.values())
    assert (batch["color"] == -1).all() and (batch["source"] == 0).all()
    monkeypatch.setenv("SEAWEED_DATA_DIR", str(tmp_path))
    for build_if_missing in (True, False):
        with pytest.raises(ValueError, match="prepare --dataset=video_folder/missing"):
            pipeline.make_iterator(_data_config("video_folder/missing",
                                                build_if_missing=build_if_missing),
                                   data_dir=str(tmp_path), process_index=0, process_count=1)
    assert not os.path.exists(tmp_path / "video_folder")  # nothing was built


def _prepare(*args):
    env = {k: v for k, v in os.environ.items() if k != "SEAWEED_DATA_DIR"}
    out = subprocess.run([sys.executable, "-m", "seaweed_jax.prepare", *args], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    summary = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
    return out, summary


def test_prepare_cli(folder, built, tmp_path):
    base = ["--dataset=video_folder/cli", f"--data_dir={tmp_path}"]
    flags = [f"--folder={folder['dir']}", f"--manifest={folder['manifest']}", "--frames=5",
             "--height=32", "--width=32", "--fps=8", "--validation_fraction=0"]
    out, summary = _prepare(*base, *flags)
    assert out.returncode == 0, out.stderr
    assert summary["built"] is True and summary["splits"] == {"train": 15}
    assert summary["skipped"] == SKIPPED and summary["skipped_by_split"]["train"] == SKIPPED
    assert summary["settings"]["frames"] == 5 and summary["bytes"] > 0
    assert "skipped 1 corrupt: bad.mp4" in out.stderr
    assert _shards(tmp_path, "cli") == _shards(built["data_dir"])  # same bytes in a new process
    # Reuse without the folder flags; what prepare built is what training reads.
    out, again = _prepare(*base)
    assert out.returncode == 0, out.stderr
    assert again["built"] is False and again["bytes"] == summary["bytes"]
    assert len(datasets.data_source("video_folder/cli", "train", str(tmp_path))) == 15
    # Missing settings / never built: one clear line, exit code 2.
    out, _ = _prepare("--dataset=video_folder/other", f"--data_dir={tmp_path}",
                      f"--folder={folder['dir']}", "--frames=5")
    assert out.returncode == 2 and "--height=... --width=... --fps=..." in out.stderr
    assert "Traceback" not in out.stderr


def test_folder_without_usable_files_fails_with_the_counts(tmp_path):
    os.makedirs(tmp_path / "vids")
    open(tmp_path / "vids" / "empty.mp4", "wb").close()
    _write(str(tmp_path / "vids" / "nocap.mp4"), _moving(t=8))
    with pytest.raises(ValueError, match="gave no clips.*'empty': 1, 'no_caption': 1"):
        datasets.build_video_folder("video_folder/none", str(tmp_path / "data"),
                                    folder=str(tmp_path / "vids"), verbose=False, **SETTINGS)
    with pytest.raises(datasets.NotBuiltError):  # nothing half-built is left behind
        datasets.parse_name("video_folder/none", str(tmp_path / "data"))


def test_manifest_formats_and_errors(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text('path,caption\na.mp4,"a caption, with a comma"\nsub/b.mp4,\n')
    assert vf.read_manifest(str(csv_path)) == {"a.mp4": "a caption, with a comma",
                                               "sub/b.mp4": ""}
    (tmp_path / "bad.csv").write_text("file,text\na.mp4,x\n")
    with pytest.raises(ValueError, match="'path' and 'caption'"):
        vf.read_manifest(str(tmp_path / "bad.csv"))
    (tmp_path / "dup.jsonl").write_text('{"path": "a.mp4", "caption": "x"}\n'
                                        '{"path": "a.mp4", "caption": "y"}\n')
    with pytest.raises(ValueError, match="line 2: 'a.mp4' is listed twice"):
        vf.read_manifest(str(tmp_path / "dup.jsonl"))
