"""Eight benchmarks/*.py scripts run end to end at their smallest sizes and print the ONE JSON
line their docstrings promise, with sane values: vae, vae_scan, vae_multidevice,
odvae_tail_init (slow), trace_train_step, attention, packing, runtime_balance (dit_step.py is
tests/test_dit_step_bench.py, vae_wan_race.py is in tests/test_wan_io.py).

Why: the benchmarks are run by hand, so nothing ran them when the code under them changed, and
they broke unseen (benchmarks/trace_train_step.py died once the training loop began wrapping a
failed save in RunWriteError: its stop at the first `checkpoint.save` became a crash). Each test
runs one script as a subprocess (cwd = the repo root, JAX on CPU, the suite's XLA_FLAGS) and
checks the keys and the values that do not depend on the machine: counts, shapes, consistency
between fields, times > 0, ratios finite and > 0. Timings are NOT compared with anything: a
timed assertion on a shared 2-core host is a flaky test, not a benchmark.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

import _dit_helpers as H
from seaweed_jax import checkpoint as ckpt_lib
from seaweed_jax.data import balance as bal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The micro VAE of the VAE-task tests: haar3d stem + one joint level, (4, 4, 4), 8 channels;
# its compiles take seconds where configs/vae/tiny.py's (widths 32 / 64) take several times that.
VAE_TINY = "tests/_vae_tiny.py"
TIMEOUT = 600   # generous: the host may be busy; a hung benchmark still fails


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The tiny VAE run + latent cache the DiT tests share (built once per pytest run)."""
    return H.shared_setup(tmp_path_factory)


def _bench(name: str, *args: str, env: dict | None = None) -> dict:
    """Run benchmarks/<name>.py with `args`; its last non-empty stdout line, parsed as JSON."""
    if env is None:
        # os.environ already holds conftest's XLA_FLAGS (-O0: these runs are mostly compiling)
        env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, os.path.join("benchmarks", f"{name}.py"), *args],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"benchmarks/{name}.py exited {r.returncode}:\n{r.stderr[-3000:]}"
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert lines, f"benchmarks/{name}.py printed nothing on stdout:\n{r.stderr[-3000:]}"
    return json.loads(lines[-1])


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# ----------------------------------------------------------------------------- VAE


def test_vae_throughput_and_memory():
    # 2 clips of 9 frames at 32x32 on 2 devices (the sharded path the default takes), one timed
    # run, a 256^2 peak matmul, the memory section at one length (9 frames, chunks of 4).
    out = _bench("vae", f"--config={VAE_TINY}", "--batch=2", "--cpu_devices=2", "--frames=9",
                 "--size=32x32", "--repeats=1", "--matmul_n=256", "--memory_frames=9")
    assert out["clip"] == [9, 32, 32] and out["batch"] == 2 and out["devices"] == 2
    assert out["backend"] == "cpu" and out["flops_source"] == "xla_cost_analysis"
    assert out["arch"] == "conv" and out["matmul_n"] == 256
    assert isinstance(out["params"], int) and out["params"] > 0
    assert _positive(out["matmul_gflops"])
    for name in ("encode", "decode", "train_fwd_bwd"):
        for field in ("clips_per_sec", "sec", "gflop", "gflops", "ratio_to_matmul"):
            assert _positive(out[f"{name}_{field}"]), (name, field, out[f"{name}_{field}"])
    # XLA's FLOP counts (not timings): the training fwd+bwd runs encode and decode and more
    assert out["train_fwd_bwd_gflop"] > out["encode_gflop"]
    assert out["train_fwd_bwd_gflop"] > out["decode_gflop"]
    mem = out["encode_temp_memory"]
    assert list(mem) == ["9"] and out["chunk_frames"] == 4
    assert _positive(mem["9"]["full_mb"]) and _positive(mem["9"]["chunked_mb"])
    assert out["chunked_max_over_full_min"] == pytest.approx(
        mem["9"]["chunked_mb"] / mem["9"]["full_mb"], rel=0.05)   # of MB rounded to 3 decimals
    assert out["load_avg"] is None or out["load_avg"] >= 0


def test_vae_scan_compiles_unrolled_and_scanned():
    # the micro VAE at 1x5x16x16: its decoder runs (2 blocks per level) scan, the encoder's
    # single blocks stay unrolled
    out = _bench("vae_scan", f"--config={VAE_TINY}", "--shape=1,5,16,16")
    assert out["config"] == VAE_TINY and out["arg"] is None
    assert out["shape"] == [1, 5, 16, 16, 3] and out["device"] == "cpu"
    assert out["remat"] == "none" and out["dtype"] == "float32"
    for layout in ("unrolled", "scanned"):
        r = out[layout]
        assert _positive(r["lower_s"]) and _positive(r["compile_s"]), r
        assert isinstance(r["temp_bytes"], int) and r["temp_bytes"] > 0, r
        assert isinstance(r["hlo_chars"], int) and r["hlo_chars"] > 0, r
    # encoder 2 levels x 1 block, decoder 2 levels x 2 blocks; the two decoder runs scan
    assert (out["scanned_blocks"], out["res_blocks"]) == (4, 6)
    ratios = out["ratio_scanned_over_unrolled"]
    assert set(ratios) == {"lower_s", "compile_s", "temp_bytes", "hlo_chars"}
    assert all(_positive(v) for v in ratios.values()), ratios
    assert ratios["temp_bytes"] == pytest.approx(
        out["scanned"]["temp_bytes"] / out["unrolled"]["temp_bytes"], abs=1e-3)
    assert len(out["load_avg"]) == 2


def test_vae_multidevice_memory_and_check():
    # 25 frames = 1 + 4*6: 3 latent frames per device on 2 devices, the fewest that split;
    # --check also runs both ways once and compares them
    out = _bench("vae_multidevice", f"--config={VAE_TINY}", "--devices=2", "--frames=25",
                 "--size=16x16", "--check")
    assert out["config"] == VAE_TINY and out["devices"] == 2 and out["backend"] == "cpu"
    assert out["frames"] == 25 and out["size"] == [16, 16] and out["unit"] == "bytes per device"
    assert out["latent_shape"] == [1, 7, 4, 4, 4]
    assert out["model"]["compression"] == [4, 4, 4] and out["model"]["stem"] == "haar3d"
    for kind, chunk in (("encode", 4), ("decode", 1)):   # chunk_frames / chunk_latent_frames
        r = out[kind]
        assert r["chunked"]["chunk"] == chunk
        for mem in (r["full"], r["chunked"]["first"], r["chunked"]["next"], r["multidevice"]):
            assert set(mem) == {"temp", "argument", "output"}
            assert all(isinstance(v, int) and v >= 0 for v in mem.values()), mem
            assert mem["argument"] > 0 and mem["output"] > 0, mem
        for ratio in ("multidevice_temp_over_full", "multidevice_temp_over_chunked"):
            assert _positive(r[ratio]), (kind, ratio, r[ratio])
    # the multi-device path equals single-device inference (tests/test_vae_multidevice.py: 1e-5)
    diff = out["check_max_abs_diff"]
    assert 0 <= diff["encode_mean"] < 1e-4 and 0 <= diff["decode"] < 1e-4, diff
    assert _positive(out["compile_seconds"]) and out["seconds"] >= out["compile_seconds"]


@pytest.mark.slow   # two short VAE trainings and ~a dozen codec compiles: about a minute or two
def test_odvae_tail_init(tmp_path, shared_data_dir):
    # one step per stage, 8 train / 4 validation clips, 2 clips scored
    out = _bench("odvae_tail_init", f"--workdir={tmp_path / 'odvae'}", "--image_steps=1",
                 "--video_steps=1", "--val_examples=2", "--num_train=8", "--num_validation=4",
                 f"--data_dir={shared_data_dir}")
    assert (out["image_steps"], out["video_steps"], out["val_clips"]) == (1, 1, 2)
    assert _positive(out["image_train_s"]) and _positive(out["video_train_s"])
    scores = {"image_vae": ("image", "static_clip"),
              "video_step0": ("image", "static_clip", "moving_clip"),
              "video_trained": ("image", "static_clip", "moving_clip")}
    for run, kinds in scores.items():
        assert set(out[run]) == set(kinds), (run, out[run])
        for kind in kinds:
            s = out[run][kind]
            assert s["num_videos"] == 2, (run, kind, s)
            assert _positive(s["psnr"]), (run, kind, s)
            assert s["ssim"] is not None and -1.0 <= s["ssim"] <= 1.0, (run, kind, s)
    # tail init: at step 0 the video VAE codes images as the image VAE does
    assert 0 <= out["image_max_abs_diff_step0"] < 1e-4
    assert out["video_step0"]["image"]["psnr"] == pytest.approx(out["image_vae"]["image"]["psnr"], abs=0.05)
    assert out["tail_init_from"].startswith("image VAE run ")
    assert out["video_params_key"] == "ema_params"   # configs/vae/common.py: EMA 0.99
    assert math.isfinite(out["moving_psnr_gain"])
    assert out["moving_psnr_gain"] == pytest.approx(
        out["video_trained"]["moving_clip"]["psnr"] - out["video_step0"]["moving_clip"]["psnr"], abs=2e-3)


# ----------------------------------------------------------------------------- DiT side


def test_trace_train_step_stops_at_the_first_save(tmp_path, shared):
    # The tiny DiT of the DiT tests on the shared VAE run and latent cache; one step, no eval
    # (the stop is that step's checkpoint.save). The docstring's command with a tiny config.
    cfg = H.write_config_file(str(tmp_path / "dit_config.py"), H.dit_config(shared["vae"]))
    workdir = tmp_path / "run"
    out = _bench("trace_train_step", f"--config={cfg}", f"--workdir={workdir}",
                 f"--data_dir={shared['data_dir']}", "--config.num_steps=1",
                 "--config.eval_every=0", env=H.env(shared["jax_cache"]))
    files = out["files"]
    assert out["num_files"] == len(files) == len(set(files))
    assert all(f.startswith(("seaweed_jax/", "configs/")) and f.endswith(".py") for f in files), files
    assert files[0] == "seaweed_jax/train.py"   # the CLI's main, where the trace starts
    for f in ("seaweed_jax/trainer/loop.py", "seaweed_jax/trainer/dit_task.py",
              "seaweed_jax/models/dit/dit.py", "seaweed_jax/checkpoint.py"):
        assert f in files, f
    assert out["packages"] == list(dict.fromkeys(
        os.path.dirname(f) if f.count("/") > 1 else f for f in files))
    for chain, count in out["reentries"].items():
        hops = chain.split(" -> ")
        assert len(hops) >= 3 and hops[0] == hops[-1] and set(hops) <= set(files), chain
        assert isinstance(count, int) and count >= 1, (chain, count)
    # it stopped AT the save: the run got there and nothing was written
    assert ckpt_lib.latest_step(str(workdir)) is None


def test_attention_mid_size():
    # 'mid' only (the 7B 480p grid is 37,200 tokens); one timed xla forward per layer type
    out = _bench("attention", "--sizes=mid", "--repeats=1")
    assert out["benchmark"] == "attention" and out["backend"] == "cpu"
    assert (out["block_q"], out["block_kv"]) == (512, 512)
    assert list(out["sizes"]) == ["mid"] and _positive(out["wall_s"])
    mid = out["sizes"]["mid"]
    assert mid["grid"] == [9, 16, 16] and (mid["num_video"], mid["num_text"]) == (2304, 64)
    assert mid["num_tokens"] == 2368 and (mid["heads"], mid["head_dim"]) == (8, 64)
    assert mid["padded_row_major"] == 2560   # 2368 up to a multiple of 512
    per_block = 4 * 512 * 512 * 64 * 8 / 1e9
    windows = {"full": None, "space": [9, 1, 1], "window_1x2x2": [1, 2, 2], "window_4x1x1": [4, 1, 1]}
    assert set(mid["layers"]) == set(windows)
    for layer, want in windows.items():
        r = mid["layers"][layer]
        assert r["windows"] == want, layer
        for key in ("blocks_kernel", "blocks_row_major"):
            b = r[key]
            assert 1 <= b["computed"] <= b["total"], (layer, key, b)
            assert b["fraction"] == round(b["computed"] / b["total"], 4), (layer, key, b)
        assert r["attention_gflops_fwd"] == pytest.approx(per_block * r["blocks_kernel"]["computed"], abs=0.01)
        assert r["dense_gflops_fwd"] == pytest.approx(4 * 2368 ** 2 * 64 * 8 / 1e9, abs=0.01)
        assert _positive(r["xla_ms"]), (layer, r["xla_ms"])
        assert r["padded_kernel"] % 512 == 0 and r["padded_kernel"] >= 2368, (layer, r)
        if want is None:
            assert r["window_size"] is None and r["analytic_fraction"] == 1.0
            assert r["blocks_kernel"]["computed"] == r["blocks_kernel"]["total"] == 25
        else:
            assert r["window_size"] == math.prod(-(-g // w) for g, w in zip(mid["grid"], want))
            assert 0 < r["analytic_fraction"] < 1, (layer, r["analytic_fraction"])


def test_packing_toy_images_and_short_clips(shared_data_dir):
    # one measured step; 8 train clips per dataset (the script fixes validation at 64)
    out = _bench("packing", f"--data_dir={shared_data_dir}", "--steps=1", "--num_train=8")
    assert out["benchmark"] == "packing" and out["steps"] == 1
    # (unpacked slots, packed slots, most packed samples per step): the docstring's layouts
    layouts = {"toy_images": (32 * (16 + 12), 4 * (128 + 80), 4 * 8),
               "short_clips": (32 * (80 + 12), 8 * (272 + 96), 8 * 16)}
    for bucket, (unpacked_slots, packed_slots, most) in layouts.items():
        b = out[bucket]
        u, p = b["unpacked"], b["packed"]
        assert (u["slots_per_step"], u["samples_per_step"]) == (unpacked_slots, 32), bucket
        assert p["slots_per_step"] == packed_slots and 1 <= p["samples_per_step"] <= most, (bucket, p)
        for mode in (u, p):
            assert 0 < mode["real_tokens_per_step"] <= mode["slots_per_step"], (bucket, mode)
            assert 0 <= mode["padding_fraction"] < 1, (bucket, mode)
            # one step: the padding is exactly 1 - real / slots (rounded to 4 decimals)
            assert mode["padding_fraction"] == pytest.approx(
                1 - mode["real_tokens_per_step"] / mode["slots_per_step"], abs=1e-4), (bucket, mode)
        assert _positive(p["host_ms_per_step"])
        assert 1 <= b["caption_tokens_mean"] <= 12, (bucket, b["caption_tokens_mean"])
    # every unpacked image is 16 video tokens plus its caption
    assert out["toy_images"]["unpacked"]["real_tokens_per_step"] >= 32 * 17
    # what packing is for: unpacked short clips pad every sample to 80 video tokens (mean 44)
    clips = out["short_clips"]
    assert clips["packed"]["padding_fraction"] < clips["unpacked"]["padding_fraction"]


def test_runtime_balance_table_and_split(tmp_path):
    # Two lengths (the fewest a table takes), far apart, best of 2; 8 samples over 2 ranks.
    # The script subtracts the per-step overhead, clamped to the fastest measured time, so
    # timing noise cannot make a table point negative (CostTable refuses one).
    # The packed-row check (1,024 video + 128 text slots) has no flag to shrink it.
    table_path = tmp_path / "cost_table.json"
    out = _bench("runtime_balance", f"--out={table_path}", "--lengths=64,1024", "--repeats=2",
                 "--ranks=2", "--samples=8")
    t = out["table"]
    assert set(t["raw_step_s"]) == {"64", "1024"} and all(_positive(v) for v in t["raw_step_s"].values())
    assert [n for n, _ in t["points_s"]] == [64, 1024] and all(s >= 0 for _, s in t["points_s"])
    assert 0 <= t["overhead_s"] <= t["raw_step_s"]["64"] + 1e-6
    assert t["linear"] >= 0 and t["quadratic"] >= 0 and t["linear"] + t["quadratic"] > 0
    assert t["path"] == str(table_path)
    table = bal.CostTable.from_json(str(table_path))   # the file the balancer reads
    assert table.lengths == (64, 1024)
    assert list(table.seconds) == pytest.approx([s for _, s in t["points_s"]], abs=1e-6)

    mix = out["mix"]
    assert (mix["seed"], mix["samples"], mix["ranks"]) == (0, 8, 2)
    assert 32 <= mix["min"] <= mix["median"] <= mix["max"] <= 1536
    assert 0 <= mix["beyond_table"] <= 8
    before, after = out["before_contiguous"], out["after_balance"]
    assert before["samples_per_rank"] == [4, 4] and sum(after["samples_per_rank"]) == 8
    assert sum(before["tokens_per_rank"]) == sum(after["tokens_per_rank"]) == mix["tokens"]
    assert out["content_unchanged"] is True
    # balance() is never worse than the contiguous split and no split beats the lower bound
    # (values rounded to 1e-6 s)
    assert out["lower_bound_s"] - 1e-6 <= after["slowest_rank_s"] <= before["slowest_rank_s"] + 1e-6
    assert out["slowest_rank_speedup"] >= 1.0
    for split in (before, after):
        assert split["max_over_mean"] >= 1.0 - 1e-4 and split["mean_rank_s"] >= 0, split
    assert [o["seed"] for o in out["other_seeds"]] == [1, 2, 3, 4]
    for o in out["other_seeds"]:
        assert o["lower_bound_s"] - 1e-6 <= o["after_s"] <= o["before_s"] + 1e-6, o
    assert set(out["packed_row_ms"]) == {"one_1024", "sixteen_64"}
    assert all(_positive(v) for v in out["packed_row_ms"].values()), out["packed_row_ms"]
    assert out["balance_ms"] >= 0 and _positive(out["wall_s"]) and len(out["load_avg"]) == 3
