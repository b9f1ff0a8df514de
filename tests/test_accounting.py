"""FLOP accounting: the DiT's analytic FLOP model against XLA's count, remat recompute, the
peak table, MFU / HFU arithmetic and the training log's fields.

XLA reference: `jax.jit(f).lower(...).cost_analysis()["flops"]` on CPU counts a
multiply-add as 2 FLOPs (checked below on a plain matmul) and every elementwise op, which
the analytic model ignores; the DiT below (hidden 256, 8 unrolled layers, xla attention) is
wide enough that elementwise work is ~1% of the total.
"""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seaweed_jax.data import packing as packing_lib
from seaweed_jax.models.dit import DiT, example_inputs, forward_flops, tiny_config
from seaweed_jax.models.dit.dit import forward_flops_by_part
from seaweed_jax.trainer import accounting, dit_task
from seaweed_jax.trainer.metrics import MetricsLogger

BATCH, LATENT, TEXT = 4, (5, 8, 8), 32
# 80 video tokens (patch (1, 2, 2)) + 32 text tokens; window layers split the (5, 4, 4) grid
# by (1, 2, 2) (even) and (4, 1, 1) (uneven over 5 frames: padded window slots).
WIDE = dict(hidden_size=256, num_layers=8, num_heads=4, mlp_hidden=512, num_shared_ffn_layers=4,
            text_dim=64, max_text_len=TEXT, rope_axes_dim=(20, 22, 22))


def wide_config(**overrides):
    return tiny_config(**{**WIDE, **overrides})


def xla_flops(fn, *args) -> float:
    return float(jax.jit(fn).lower(*args).cost_analysis()["flops"])


def xla_counts(cfg) -> tuple[float, float]:
    """XLA's FLOPs of the forward and of value_and_grad (params and text embeddings, which the
    DiT task trains through its text encoder) for BATCH x LATENT + TEXT tokens."""
    model = DiT(cfg)
    x, t, text, mask = example_inputs(cfg, batch=BATCH, latent_shape=LATENT, text_len=TEXT)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, t, text, mask)["params"]
    params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)

    def forward(p, x, text):
        return model.apply({"params": p}, x, t, text, mask)

    def loss(p, x, text):
        return jnp.sum(forward(p, x, text) ** 2)

    return (xla_flops(forward, params, x, text),
            xla_flops(jax.value_and_grad(loss, argnums=(0, 2)), params, x, text))


_COUNTS = {}


def cached_counts(**overrides) -> tuple[float, float]:
    key = tuple(sorted(overrides.items()))
    if key not in _COUNTS:
        _COUNTS[key] = xla_counts(wide_config(**overrides))
    return _COUNTS[key]


def test_xla_counts_a_multiply_add_as_two_flops():
    a, b = jnp.zeros((64, 128)), jnp.zeros((128, 32))
    assert xla_flops(jnp.matmul, a, b) == 2 * 64 * 128 * 32


@pytest.mark.parametrize("attention", ["full", "window", "space_full"])
def test_analytic_forward_and_training_flops_match_xla(attention):
    cfg = wide_config(attention=attention)
    analytic = BATCH * forward_flops(cfg, LATENT, TEXT)
    xla_forward, xla_train = cached_counts(attention=attention)
    ratio = analytic / xla_forward
    print(f"{attention}: analytic / xla forward = {ratio:.4f}, xla train / forward = "
          f"{xla_train / xla_forward:.4f}, 3 x analytic / xla train = {3 * analytic / xla_train:.4f}")
    assert 0.95 < ratio <= 1.0   # XLA also counts the elementwise work the model ignores
    assert 0.95 < accounting.TRAIN_PASSES * analytic / xla_train <= 1.0
    # The parts used for remat accounting add up to the model.
    parts = forward_flops_by_part(cfg, LATENT, TEXT)
    assert set(parts) == {"embed", *accounting.BLOCK_PARTS}
    assert sum(parts.values()) == pytest.approx(forward_flops(cfg, LATENT, TEXT), rel=1e-12)


@pytest.mark.parametrize("remat,qk_norm", [("full", True), ("minimal", True), ("save_dots", True),
                                           ("save_qkv_attn", True), ("save_qkv_attn", False)])
def test_remat_recompute_matches_xla(remat, qk_norm):
    """XLA's extra FLOPs of value_and_grad under a remat policy vs the derived fraction."""
    cfg = wide_config(remat=remat, qk_norm=qk_norm)
    xla_forward, xla_plain = cached_counts(qk_norm=qk_norm)
    _, xla_remat = cached_counts(remat=remat, qk_norm=qk_norm)
    parts = forward_flops_by_part(cfg, LATENT, TEXT)
    fraction = accounting.remat_recompute_fraction(remat, parts, qk_norm=qk_norm)
    forward = BATCH * forward_flops(cfg, LATENT, TEXT)
    measured = (xla_remat - xla_plain) / xla_forward
    print(f"{remat} qk_norm={qk_norm}: recompute analytic {fraction:.4f} xla {measured:.4f} of a forward")
    # The recomputed elementwise work (norms, softmax, RoPE) is outside the matmul model.
    assert abs(fraction * forward - (xla_remat - xla_plain)) < 0.03 * xla_forward
    hardware = (accounting.TRAIN_PASSES + fraction) * forward
    assert 0.95 < hardware / xla_remat <= 1.0


def test_remat_fraction_by_hand():
    parts = {"embed": 10.0, "qkv_proj": 30.0, "attn_scores": 20.0, "attn_values": 20.0,
             "attn_out": 10.0, "ffn": 10.0}
    frac = lambda preset, **kw: accounting.remat_recompute_fraction(preset, parts, **kw)  # noqa: E731
    assert frac("none") == 0.0
    assert frac("full") == frac("minimal") == frac("offload_block_in") == 0.9
    assert frac("save_dots") == 0.4
    assert frac("save_qkv_attn") == frac("offload_qkv_attn") == 0.7
    assert frac("save_qkv_attn", qk_norm=False) == 0.4
    assert frac("full", qk_norm=False) == 0.9
    with pytest.raises(ValueError, match=r"model\.remat='sometimes'"):
        frac("sometimes")


# ----------------------------------------------------------------------------- peak

@pytest.mark.parametrize("kind,peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5", 459e12),
    ("TPU v5p", 459e12), ("TPU v6 lite", 918e12), ("TPU v6e", 918e12), ("tpu_v6e", 918e12),
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 SXM5 80GB", 989e12), ("NVIDIA H100 PCIe", 756e12),
])
def test_peak_table_matches_device_kinds(kind, peak):
    flops, source = accounting.table_peak(kind)
    assert flops == peak and "bf16" in source


@pytest.mark.parametrize("kind", ["TPU v4 lite", "TPU v3", "TPU7x", "NVIDIA A100-SXM4-80GB", "cpu"])
def test_unknown_device_kinds_have_no_peak(kind):
    assert accounting.table_peak(kind) is None


class FakeDevice:
    def __init__(self, platform, device_kind):
        self.platform, self.device_kind = platform, device_kind


def test_peak_flops_of_devices(monkeypatch):
    assert accounting.peak_flops(FakeDevice("tpu", "TPU v5 lite"))[0] == 197e12
    peak, why = accounting.peak_flops(FakeDevice("gpu", "NVIDIA A100-SXM4-80GB"))
    assert peak is None and "PEAK_TABLE" in why
    # CPU: the host's measured rate shared by the fake devices (conftest: 8).
    monkeypatch.setattr(accounting, "measure_host_matmul_peak", lambda: 80e9)
    peak, source = accounting.peak_flops(jax.devices()[0])
    assert jax.local_device_count() == 8
    assert peak == 10e9 and "measured" in source and "8 local CPU devices" in source


def test_matmul_peak_is_two_n_cubed_per_matmul_time():
    peak = accounting.MatmulPeak(64)
    peak.best = 0.5e-3   # seconds per matmul
    assert peak.flops_per_s == pytest.approx(2 * 64 ** 3 / 0.5e-3)
    peak.sample(2)       # real timings only ever lower the best time
    assert peak.best <= 0.5e-3
    peak.fit_window(1.0)   # a one-second "step": a window of many 64x64 products, not one
    assert peak.per_window > 1


def test_host_matmul_peak_is_a_rate():
    rate = accounting.measure_host_matmul_peak(size=256, repeats=2)
    assert math.isfinite(rate) and rate > 0


# ----------------------------------------------------------------------------- MFU / HFU

def test_accounting_record_by_hand():
    acct = accounting.Accounting.for_training(2e12, recompute_fraction=1.0, num_devices=4,
                                              peak_flops=100e12, peak_source="test")
    assert acct.model_flops == 6e12 and acct.hardware_flops == 8e12
    rates = acct.rates(steps_per_sec=5.0)   # 30e12 model FLOP/s over 4 devices
    assert rates["tflops_per_sec_per_device"] == pytest.approx(7.5)
    assert rates["mfu"] == pytest.approx(0.075)   # 7.5e12 / 100e12
    assert rates["hfu"] == pytest.approx(0.1)     # 5 * 8e12 / 4 / 100e12
    unknown = accounting.Accounting(model_flops=6e12, hardware_flops=6e12, num_devices=4)
    assert set(unknown.rates(5.0)) == {"tflops_per_sec_per_device"}


def test_metrics_logger_writes_mfu_and_hfu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(accounting, "measure_host_matmul_peak", lambda: 80e9)
    logger = MetricsLogger(str(tmp_path), num_steps=10, global_batch_size=2, flops_per_step=3e9,
                           hardware_flops_per_step=4e9, enabled=True)
    logger.start(0)   # resolves the CPU peak: 80e9 / 8 devices
    assert "peak 0.01 TFLOP/s per device x 8" in capsys.readouterr().out
    logger.add({"loss": jnp.float32(1.0)})
    record = logger.log_train(2)
    logger.close()
    sps = record["steps_per_sec"]
    assert record["tflops_per_sec_per_device"] == pytest.approx(sps * 3e9 / 8 / 1e12)
    assert record["mfu"] == pytest.approx(sps * 3e9 / 80e9)
    assert record["hfu"] == pytest.approx(sps * 4e9 / 80e9)
    assert f"MFU {100 * record['mfu']:.3g}%" in capsys.readouterr().out
    written = json.loads(open(tmp_path / "metrics.jsonl").read().splitlines()[-1])
    assert written["mfu"] == pytest.approx(record["mfu"])


def test_metrics_logger_without_flops_has_no_mfu(tmp_path):
    logger = MetricsLogger(str(tmp_path), num_steps=10, global_batch_size=2, enabled=False)
    logger.start(0)
    logger.add({"loss": jnp.float32(1.0)})
    record = logger.log_train(1)
    assert "mfu" not in record and "tflops_per_sec_per_device" not in record


def test_metrics_logger_counts_each_steps_batch_and_flops(tmp_path, monkeypatch):
    """data.stages changes the batch size and shape mid-run: throughput uses each step's own
    examples and FLOPs (the window's mean), not the first batch's."""
    monkeypatch.setattr(accounting, "measure_host_matmul_peak", lambda: 80e9)
    logger = MetricsLogger(str(tmp_path), num_steps=10, global_batch_size=8, flops_per_step=1e9,
                           enabled=False)
    logger.start(0)
    logger.add({"loss": jnp.float32(1.0)}, examples=12, flops=(2e9, 3e9))
    logger.add({"loss": jnp.float32(1.0)}, examples=6, flops=(4e9, 4e9))
    record = logger.log_train(2)
    sps = record["steps_per_sec"]
    assert record["examples_per_sec"] == pytest.approx(sps * 9)          # (12 + 6) / 2
    assert record["gflops_per_sec"] == pytest.approx(sps * 3e9 / 1e9)    # (2e9 + 4e9) / 2
    assert record["mfu"] == pytest.approx(sps * 3e9 / 80e9)
    assert record["hfu"] == pytest.approx(sps * 3.5e9 / 80e9)            # (3e9 + 4e9) / 2
    logger.add({"loss": jnp.float32(1.0)})          # no per-step numbers: the defaults
    record = logger.log_train(3)
    assert record["examples_per_sec"] == pytest.approx(record["steps_per_sec"] * 8)


# ----------------------------------------------------------------------------- DiT task

def _unpacked(cfg, latent_shape, text_len, batch=1):
    c = cfg.latent_channels
    return {"latents": np.zeros((batch, *latent_shape, c), np.float32),
            "text_ids": np.zeros((batch, text_len), np.int32),
            "text_mask": np.ones((batch, text_len), bool)}


def test_dit_train_flops_unpacked_is_three_forwards_per_example():
    cfg = wide_config(remat="save_dots")
    batch = _unpacked(cfg, LATENT, TEXT, batch=BATCH)
    forward = forward_flops(cfg, LATENT, TEXT)
    assert dit_task.train_flops(cfg, batch) == 3 * BATCH * forward
    parts = forward_flops_by_part(cfg, LATENT, TEXT)
    extra = parts["attn_scores"] + parts["attn_values"]      # save_dots re-runs attention
    assert dit_task.train_flops(cfg, batch, with_remat=True) == pytest.approx(BATCH * (3 * forward + extra))


def test_dit_train_flops_packed_sums_its_samples():
    """A packed batch costs what its samples cost unpacked, one by one (the model attends
    inside each sample); padding slots and empty sample slots add nothing."""
    cfg = wide_config()
    latent_c = cfg.latent_channels
    rng = np.random.default_rng(0)

    def example(frames, real_text):
        mask = np.zeros(TEXT, bool)
        mask[:real_text] = True
        return {"latents": rng.normal(size=(frames, 4, 4, latent_c)).astype(np.float32),
                "text_ids": np.zeros(TEXT, np.int32), "text_mask": mask, "source": 0, "index": 0}

    bins = [[example(5, 7), example(1, 3)], [example(3, 12)]]
    cap = packing_lib.Capacity(video_tokens=40, text_tokens=48, samples=3)
    batch = packing_lib.layout(bins, cap, patch=(1, 2, 2), min_text_tokens=2)
    # Each sample alone: its latent (T, 4, 4) and exactly its text slots.
    expected = sum(dit_task.train_flops(cfg, _unpacked(cfg, (t, 4, 4), n))
                   for t, n in ((5, 7), (1, 3), (3, 12)))
    assert dit_task.train_flops(cfg, jax.tree.map(jnp.asarray, batch)) == pytest.approx(expected, rel=1e-12)


def test_dit_task_methods_apply_to_its_own_step_only():
    """DiTTask reports the analytic count; a subclass with another step (distill runs teacher
    passes too) gets None, i.e. the loop's XLA estimate, until it overrides flops_per_step."""
    from seaweed_jax.trainer.distill_task import DistillTask
    cfg = wide_config(remat="full")
    batch = _unpacked(cfg, LATENT, TEXT, batch=2)
    task, distill = object.__new__(dit_task.DiTTask), object.__new__(DistillTask)
    task.model_cfg = distill.model_cfg = cfg   # all the FLOP methods read (no data / VAE needed)
    assert task.flops_per_step(batch) == dit_task.train_flops(cfg, batch)
    assert task.hardware_flops_per_step(batch) == dit_task.train_flops(cfg, batch, with_remat=True)
    assert task.hardware_flops_per_step(batch) > task.flops_per_step(batch)
    assert distill.flops_per_step(batch) is None and distill.hardware_flops_per_step(batch) is None


def test_host_peak_is_measured_inside_a_training_mesh():
    """The loop's mesh context (all 8 fake devices) must not claim the one-device matmul."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    accounting.measure_host_matmul_peak.cache_clear()
    with jax.set_mesh(mesh):
        peak, source = accounting.peak_flops()
    assert peak > 0 and "measured" in source


def test_every_remat_policy_has_flop_accounting():
    from seaweed_jax.parallel import remat
    assert set(accounting.RECOMPUTED_PARTS) == set(remat.POLICY_NAMES)
