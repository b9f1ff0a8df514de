"""Ahead-of-time compilation (`train --compile_only`, trainer/aot.py) and the planner
(`python -m seaweed_jax.plan`): a config compiles without parameters or data, and the reports
carry XLA's per-device memory and the analytic FLOPs."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from seaweed_jax import config_lib, plan
from seaweed_jax.models.dit.dit import forward_flops
from seaweed_jax.trainer import aot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/dit/seaweed_7b.py:stage1"
# The 7B config shrunk: the same task, text encoder, optimizer, EMA and mesh rules.
SMALL = {"model.hidden_size": 64, "model.num_heads": 2, "model.rope_axes_dim": (8, 12, 12),
         "model.mlp_hidden": 128, "model.num_layers": 3, "model.num_shared_ffn_layers": 1,
         "model.text_dim": 32, "model.attention_backend": "xla", "model.scan_layers": True,
         "data.global_batch_size": 8}


def _config_file(rel: str, arg=None):
    """get_config(arg) of the config file at REPO/rel (configs/ is not a package)."""
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_"), os.path.join(REPO, rel))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _config(overrides):
    config = _config_file("configs/dit/seaweed_7b.py", "stage1")
    for path, value in overrides.items():
        config_lib.set_path(config, path, value)
    return config


def _flags(overrides):
    return [f"--config.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in overrides.items()]


def _run(args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def test_slice_names_map_to_topologies():
    assert aot.topology_name("v5p-128") == "v5p:4x4x4"      # v5p counts TensorCores: 64 chips
    assert aot.topology_name("v5p-64") == "v5p:2x4x4"
    assert aot.topology_name("v5p-256") == "v5p:4x4x8"
    assert aot.topology_name("v5p-8") == "v5p:2x2x1"
    assert aot.topology_name("v4-64") == "v4:2x4x4"
    assert aot.topology_name("v5e-16") == "v5e:4x4"         # v5e / v6e count chips
    assert aot.topology_name("v6e-64") == "v6e:8x8"
    assert aot.topology_name("v5p:2x2x2") == "v5p:2x2x2"
    with pytest.raises(ValueError, match="gen:AxBxC"):
        aot.topology_name("v5p128")
    with pytest.raises(ValueError, match="standard v5p slice"):
        aot.topology_name("v5p-24")


def test_compile_only_reports_memory_and_analytic_flops():
    """The CLI compiles the shrunk 7B config on 4 fake CPU devices; the FLOPs are the analytic
    model (3 x forward per example), the state arguments hold params + Adam moments + EMA."""
    code, out, err = _run(["-m", "seaweed_jax.train", f"--config={CONFIG}", "--compile_only", "--xla_buffers",
                           "--latent_shape=3,4,4", "--config.cpu_devices=4", *_flags(SMALL)])
    assert code == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])["compile_only"]
    # --xla_buffers: on XLA:CPU memory_analysis()'s temp bytes ARE the dumped buffer assignment's
    # temp buffer (on TPU libtpu can report more), and no more than all of it is live at once.
    assert report["xla_temp_bytes"] == report["temp_bytes"]
    assert 0 < report["xla_live_bytes"] <= report["xla_temp_bytes"]
    assert "XLA buffer assignment: temp buffer" in out and "/ estimate =" in out
    assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1, "context": 1}
    assert report["global_batch"] == 8 and report["latent_shape"] == [3, 4, 4]
    params = report["params"]
    # fp32 params, two Adam moments and the EMA copy: 16 bytes a param, split over 4 devices
    # (small tensors that do not split are replicated, hence the upper bound).
    assert 16 * params / 4 <= report["argument_bytes"] <= 16 * params
    assert report["temp_bytes"] > 0 and report["alias_bytes"] > 0       # the state is donated
    cfg = _config(SMALL).model
    forward = forward_flops(cfg, (3, 4, 4), 16)                       # 16 = the text encoder's max_len
    assert report["model_flops"] == pytest.approx(3 * 8 * forward, rel=1e-9)
    assert report["hardware_flops"] > report["model_flops"]           # the config's remat (minimal) recomputes
    assert "per device: arguments" in out and "flops/step: model" in out


def test_xla_buffers_needs_compile_only():
    code, _, err = _run(["-m", "seaweed_jax.train", f"--config={CONFIG}", "--workdir=unused", "--xla_buffers"])
    assert code == 2 and "error: --xla_buffers reports on an ahead-of-time compile: add --compile_only" in err


def test_compile_only_says_what_is_missing():
    code, _, err = _run(["-m", "seaweed_jax.train", f"--config={CONFIG}", "--compile_only"])
    assert code != 0 and "needs --latent_shape=T,H,W" in err
    code, _, err = _run(["-m", "seaweed_jax.train", f"--config={CONFIG}", "--compile_only",
                         "--latent_shape=3,4,4", "--topology=v5p-24"])
    assert code != 0 and "standard v5p slice" in err
    code, _, err = _run(["-m", "seaweed_jax.train", "--config=configs/vae/tiny.py", "--compile_only",
                         "--latent_shape=3,4,4"])
    assert code != 0 and "needs --video_shape=T,H,W" in err and "Traceback" not in err
    code, _, err = _run(["-m", "seaweed_jax.train", "--config=configs/vae/tiny.py", "--compile_only",
                         "--video_shape=9,30,32"])
    assert code != 0 and "30" in err and "Traceback" not in err   # not a multiple of the VAE's 4


def test_compile_only_compiles_the_vae():
    """The VAE's training step compiles from a clip shape alone (no data, no params held)."""
    code, out, err = _run(["-m", "seaweed_jax.train", "--config=configs/vae/tiny.py", "--compile_only",
                           "--video_shape=9,32,32", "--config.cpu_devices=2"])
    assert code == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])["compile_only"]
    assert report["mesh"]["data"] * report["mesh"]["fsdp"] == 2 and report["latent_shape"] == [9, 32, 32]
    assert report["global_batch"] == _config_file("configs/vae/tiny.py").data.global_batch_size  # 16
    assert report["temp_bytes"] > 0 and report["alias_bytes"] > 0
    assert 16 * report["params"] / 2 <= report["argument_bytes"]    # params, Adam moments, EMA


def test_planner_meshes_and_ranking():
    assert plan.parse_mesh("fsdp", 64) == {"data": 1, "fsdp": 64, "tensor": 1, "context": 1}
    assert plan.parse_mesh("fsdp*tensor=4", 64) == {"data": 1, "fsdp": 16, "tensor": 4, "context": 1}
    assert plan.parse_mesh("data=2*fsdp*context=4", 64) == {"data": 2, "fsdp": 8, "tensor": 1, "context": 4}
    with pytest.raises(ValueError, match="does not fill"):
        plan.parse_mesh("fsdp*tensor=3", 64)
    assert plan.parse_preset("full") == {"model.remat": "full"}
    assert plan.parse_preset("offload_block_in+fence") == {"model.remat": "offload_block_in",
                                                           "model.fence_unrolled_grads": True}
    with pytest.raises(ValueError, match="not a remat preset"):
        plan.parse_preset("fulll")
    with pytest.raises(ValueError, match=r"unknown suffix '\+fast'"):
        plan.parse_preset("full+fast")

    def report(device_gib, model, hardware):
        return aot.Report(mesh={"data": 1, "fsdp": 4, "tensor": 1, "context": 1}, devices=4, device_kind="cpu",
                          latent_shape=(3, 4, 4), global_batch=8, params=10, compile_s=1.0,
                          argument_bytes=int(device_gib * 2**30), output_bytes=0, temp_bytes=0, alias_bytes=0,
                          host_bytes=0, model_flops=model, hardware_flops=hardware, xla_flops=None)

    candidates = [plan.Candidate({}, "none", report(30, 3e12, 3e12)),      # does not fit 24 GiB
                  plan.Candidate({}, "full", report(5, 3e12, 4e12)),
                  plan.Candidate({}, "save_dots", report(8, 3e12, 3.2e12)),
                  plan.Candidate({}, "bad", None, "XlaRuntimeError: refused")]
    # libtpu's own out-of-HBM refusal (the message of a real v5p compile, 2026-12-03)
    oom = ("JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
           "temporaries (194.00G) exceeds available HBM (95.74G).")
    assert plan.refused_bytes(oom) == 194 * 2**30 and plan.refused_bytes("XlaRuntimeError: refused") is None
    older = "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 21.95G of 15.48G hbm."
    assert plan.refused_bytes(older) == pytest.approx(21.95 * 2**30)
    candidates.append(plan.Candidate({}, "huge", None, oom, refused_bytes=plan.refused_bytes(oom)))
    for c in candidates[:3]:
        plan.score(c, None, 24 * 2**30, 0.1, peak=1e12, ici=None, efficiency=0.5)  # ici=None: no comms, no config read
    # MFU = model / (hardware / (devices x peak x efficiency) x devices x peak) = efficiency x model / hardware
    assert candidates[1].mfu == pytest.approx(0.5 * 3 / 4)
    assert [c.preset for c in plan.order(candidates)] == ["save_dots", "full", "none", "huge", "bad"]
    assert not candidates[0].fits and candidates[1].fits
    assert [c.compiler for c in candidates] == ["-", "-", "-", "-", "refused"]   # CPU reports: no HBM check
    for c in candidates:
        c.mesh = {"data": 1, "fsdp": 4, "tensor": 1, "context": 1}
    rows = plan.table(plan.order(candidates), 24)
    assert "refused" in rows[4] and "194.00 GiB" in rows[4] and "error: XlaRuntimeError" in rows[5]


def test_planner_cli_compiles_each_candidate(tmp_path):
    out_json = tmp_path / "plan.json"
    code, out, err = _run(["-m", "seaweed_jax.plan", f"--config={CONFIG}", "--latent_shape=3,4,4",
                           "--cpu_devices=4", "--meshes=fsdp*tensor=2", "--presets=none,full+fence",
                           f"--json={out_json}", *_flags(SMALL)])
    assert code == 0, err[-3000:]
    result = json.loads(out_json.read_text())
    assert len(result["candidates"]) == 2 and all(c["report"] for c in result["candidates"])
    by = {c["preset"].split("+")[0]: c for c in result["candidates"]}
    assert by["none"]["report"]["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2, "context": 1}
    # the analytic MFU estimate pays for recompute: full's is model / hardware of none's
    ratio = by["full"]["report"]["model_flops"] / by["full"]["report"]["hardware_flops"]
    assert by["full"]["mfu_estimate"] == pytest.approx(by["none"]["mfu_estimate"] * ratio)
    assert by["full"]["report"]["temp_bytes"] < by["none"]["report"]["temp_bytes"]
    assert "best: --config.mesh.shape.fsdp=" in out


def test_memory_estimate_by_hand():
    """estimate_dit_memory on the 7B stage-1 shapes, each term recomputed here from its definition."""
    config = _config({"model.attention_backend": "xla"})
    mesh = {"data": 1, "fsdp": 64, "tensor": 1, "context": 1}
    params = 7_211_367_488
    est = aot.estimate_dit_memory(config, (31, 32, 32), mesh, params, text_tokens=16)
    d, f, batch, tokens = 3584, 7168, 256 / 64, 31 * 16 * 16 + 16
    assert est["state"] == pytest.approx(16 * params / 64)                  # fp32 params + 2 Adam moments + EMA
    assert est["grads"] == pytest.approx(4 * params / 64)
    assert est["saved_activations"] == pytest.approx(32 * 4 * d * batch * tokens)   # remat=minimal: fp32 block inputs
    per_layer = (5 * 4 * d + 8 * 2 * d + 6 * f) * batch * tokens
    assert est["layer_working_set"] == pytest.approx(2 * per_layer)
    assert est["layer_weights"] == pytest.approx(2 * 4 * params / 32)
    assert est["attention_scores"] == pytest.approx(2 * 4 * batch * 28 * tokens ** 2)
    assert est["total"] == pytest.approx(sum(v for k, v in est.items() if k != "total"))
    splash = aot.estimate_dit_memory(_config({}), (31, 32, 32), mesh, params, text_tokens=16)
    assert "attention_scores" not in splash                                  # blockwise in on-chip memory
    offload = aot.estimate_dit_memory(_config({"model.remat": "offload_block_in"}), (31, 32, 32), mesh, params, 16)
    assert offload["host_saved_activations"] == pytest.approx(est["saved_activations"])
    assert offload["total"] == pytest.approx(splash["total"] - splash["saved_activations"])
    context = aot.estimate_dit_memory(config, (31, 32, 32), {**mesh, "fsdp": 16, "context": 4}, params, 16)
    assert context["saved_activations"] == pytest.approx(est["saved_activations"] * 4 / 4)  # 4x batch, 1/4 tokens
    assert context["state"] == pytest.approx(est["state"] * 4)             # params replicated over context
