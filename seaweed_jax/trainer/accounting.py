"""FLOP accounting for the training log: peak FLOP/s per device, remat recompute, MFU and HFU.

MFU (model FLOPs utilization) counts the FLOPs the model needs: a training step is 3 forward
passes (forward + backward, the backward being two matmuls per forward matmul: activation and
weight gradients). HFU (hardware FLOPs utilization) also counts the forward work that
rematerialization re-runs in the backward. Both divide the achieved rate by the summed
peak of the devices:

    mfu = steps_per_sec * model_flops_per_step / (num_devices * peak_per_device)
    hfu = steps_per_sec * (model_flops_per_step + recompute_flops_per_step) / (num_devices * peak)

Peak dense bf16 matmul FLOP/s per chip (each of these chips is ONE JAX device: v4 and v5p run
their two TensorCores as one "megacore" device; v5e and v6e have one TensorCore per chip):

    ============  =========================================  ========  ===================================
    chip          jax device_kind                            peak      source
    ============  =========================================  ========  ===================================
    TPU v4        "TPU v4"                                   275e12    cloud.google.com/tpu/docs/v4
    TPU v5e       "TPU v5 lite", "TPU v5e"                   197e12    cloud.google.com/tpu/docs/v5e
    TPU v5p       "TPU v5", "TPU v5p"                        459e12    cloud.google.com/tpu/docs/v5p
    TPU v6e       "TPU v6 lite", "TPU v6e"                   918e12    cloud.google.com/tpu/docs/v6e
    H100 SXM      "NVIDIA H100 80GB HBM3", "... H100 SXM..." 989e12    NVIDIA H100 datasheet (989.4 TFLOPS
                                                                       bf16 dense; 1979 is with sparsity)
    H100 PCIe     "NVIDIA H100 PCIe"                         756e12    NVIDIA H100 datasheet (1513 sparse / 2)
    ============  =========================================  ========  ===================================

Other kinds ("TPU v4 lite" = v4i, "TPU7x", other GPUs) are unknown: `peak_flops` says so and
MFU is not logged. CPU: the float32 matmul rate measured once per process (a jitted square
matmul, best of a few timings). Fake CPU devices (`jax_num_cpu_devices`) share the host's
cores (XLA:CPU runs every device's ops on one thread pool), so each device's peak is the
host's measured rate divided by the number of local CPU devices; their sum is the host.

Remat recompute (`remat_recompute_fraction`): which forward FLOPs of a DiT block each policy
of parallel/remat.py re-runs in the backward, derived from what the backward of each block op
needs and what the policy keeps (tags in models/dit/blocks.py and attention.py), and checked
against XLA's count of the value_and_grad step in tests/test_accounting.py:

  none                 nothing.
  full                 the whole block (nothing saved; the block's inputs are the remat
                       boundary and are always kept).
  minimal              = full: it saves only "block_in", i.e. the block inputs, which the
                       boundary keeps anyway.
  offload_block_in     = full (block_in goes to host memory instead of staying on device).
  save_dots            the attention matmuls (q.k^T and p.v). dots_with_no_batch_dims_saveable
                       keeps every dot_general without batch dimensions: all projections and
                       FFN matmuls. The attention einsums have batch dims (batch, heads), so
                       they are recomputed (as is a Pallas attention kernel, not a dot_general);
                       elementwise work (norms, RoPE, softmax) is recomputed too and is not in
                       the matmul model.
  save_qkv_attn        everything but p.v: saved are q, k, v after QK-norm + RoPE ("qkv") and
  (offload_qkv_attn)   the attention output ("attn_out"). The backward still needs the softmax
                       probabilities (recompute q.k^T), the QK RMS-norm inputs (recompute the
                       qkv projection; with model.qk_norm=False RoPE is linear and the
                       projection is not needed), the mid-block residual for the FFN's
                       LayerNorm and the gate gradients (recompute the output projection) and
                       the FFN's hidden activations and output (recompute the whole FFN).
"""
from __future__ import annotations

import dataclasses
import functools
import re
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

# forward + backward (activation and weight gradients: 2 matmuls per forward matmul)
TRAIN_PASSES = 3

# (chip, device_kind pattern over the lower-cased kind without spaces/dashes/underscores,
#  dense bf16 FLOP/s per chip, source)
PEAK_TABLE: tuple[tuple[str, str, float, str], ...] = (
    ("TPU v4", r"tpuv4", 275e12, "cloud.google.com/tpu/docs/v4"),
    ("TPU v5e", r"tpuv5(lite|e)", 197e12, "cloud.google.com/tpu/docs/v5e"),
    ("TPU v5p", r"tpuv5p?", 459e12, "cloud.google.com/tpu/docs/v5p"),
    ("TPU v6e", r"tpuv6(lite|e)", 918e12, "cloud.google.com/tpu/docs/v6e"),
    ("H100 SXM", r"(nvidia)?h100(sxm.*|80gbhbm3)", 989e12, "NVIDIA H100 datasheet, bf16 dense"),
    ("H100 PCIe", r"(nvidia)?h100pcie", 756e12, "NVIDIA H100 datasheet, bf16 dense"),
)

# DiT block forward parts (models.dit.forward_flops_by_part) and what each remat policy re-runs.
BLOCK_PARTS = ("qkv_proj", "attn_scores", "attn_values", "attn_out", "ffn")
RECOMPUTED_PARTS = {
    "none": (),
    "full": BLOCK_PARTS,
    "minimal": BLOCK_PARTS,
    "offload_block_in": BLOCK_PARTS,
    "save_dots": ("attn_scores", "attn_values"),
    "save_qkv_attn": ("qkv_proj", "attn_scores", "attn_out", "ffn"),
    "offload_qkv_attn": ("qkv_proj", "attn_scores", "attn_out", "ffn"),
}


# ----------------------------------------------------------------------------- peak

def _normalize(kind: str) -> str:
    return re.sub(r"[\s_\-]+", "", kind.lower())


def table_peak(device_kind: str) -> tuple[float, str] | None:
    """(peak FLOP/s per chip, source) from PEAK_TABLE for a jax `device_kind`, or None."""
    kind = _normalize(device_kind)
    for chip, pattern, flops, source in PEAK_TABLE:
        if re.fullmatch(pattern, kind):
            return flops, f"{chip} bf16 peak, {source}"
    return None


class MatmulPeak:
    """The host's float32 matmul FLOP/s: the best rate over windows of back-to-back jitted
    (size x size) @ (size x size) products on one CPU device (XLA:CPU runs a matmul this size
    on every core of its shared thread pool). A benchmark sizes the window to one of its steps
    (`fit_window`) and samples between timed steps, so a busy machine slows step and peak alike
    (a lone matmul would find the short idle gaps a whole step cannot). The training log takes
    one sample of single products (`measure_host_matmul_peak`)."""

    def __init__(self, size: int = 1024):
        self.size = size
        device = jax.local_devices(backend="cpu")[0]
        # A one-device mesh: a training loop's mesh context would otherwise claim the jit.
        self._mesh = jax.sharding.Mesh(np.array([device]), ("host",))
        self.a = jax.device_put(np.random.default_rng(0).standard_normal((size, size), np.float32), device)
        self.matmul = jax.jit(jnp.matmul)
        self._time(1)   # compile + warm up
        self.best = float("inf")   # seconds per matmul
        self.per_window = 1

    def fit_window(self, seconds: float) -> None:
        """Size the window to `seconds` (e.g. a step's time)."""
        single = min(self._time(1) for _ in range(3))
        self.per_window = max(1, round(seconds / single))

    def _time(self, count: int) -> float:
        with jax.set_mesh(self._mesh):
            start = time.perf_counter()
            for _ in range(count):
                self.matmul(self.a, self.a).block_until_ready()
            return (time.perf_counter() - start) / count

    def sample(self, windows: int = 1) -> None:
        for _ in range(windows):
            self.best = min(self.best, self._time(self.per_window))

    @property
    def flops_per_s(self) -> float:
        return 2.0 * self.size ** 3 / self.best


@functools.lru_cache(maxsize=None)
def measure_host_matmul_peak(size: int = 1024, repeats: int = 10) -> float:
    """The host CPU's float32 matmul rate (FLOP/s): the best of `repeats` timed products
    (`MatmulPeak` with one-product windows). Measured once per process."""
    peak = MatmulPeak(size)
    peak.sample(repeats)
    return peak.flops_per_s


def peak_flops(device=None) -> tuple[float | None, str]:
    """(peak FLOP/s of ONE device, where the number comes from); (None, why) when unknown.
    `device` defaults to the first local device."""
    device = jax.local_devices()[0] if device is None else device
    if device.platform == "cpu":
        count = len(jax.local_devices(backend="cpu"))
        host = measure_host_matmul_peak()
        return host / count, (f"measured host float32 matmul {host / 1e9:.3g} GFLOP/s shared by "
                              f"{count} local CPU device{'s' if count > 1 else ''}")
    found = table_peak(device.device_kind)
    if found is None:
        return None, (f"unknown device_kind {device.device_kind!r}: add its peak to "
                      "seaweed_jax.trainer.accounting.PEAK_TABLE")
    return found


# ----------------------------------------------------------------------------- remat

def remat_recomputed_parts(preset: str, *, qk_norm: bool = True) -> tuple[str, ...]:
    """The DiT block forward parts (BLOCK_PARTS) the remat policy `preset` re-runs in the
    backward (see the module docstring for the derivation)."""
    if preset not in RECOMPUTED_PARTS:
        raise ValueError(f"model.remat={preset!r} has no FLOP accounting; use one of "
                         f"{sorted(RECOMPUTED_PARTS)} (the policies of seaweed_jax.parallel.remat)")
    parts = RECOMPUTED_PARTS[preset]
    if not qk_norm:   # RoPE alone is linear: its backward needs no projection output
        parts = tuple(p for p in parts if not (p == "qkv_proj" and preset.endswith("qkv_attn")))
    return parts


def remat_recompute_fraction(preset: str, flops_by_part: Mapping[str, float], *,
                             qk_norm: bool = True) -> float:
    """Extra forward FLOPs the remat policy `preset` re-runs in the backward, as a fraction
    of the whole forward. `flops_by_part`: the forward split into parts (every part, blocks
    or not; e.g. models.dit.forward_flops_by_part), so the fraction is exact for the model
    and sizes at hand: 0 for none, the blocks' share (~1) for full / minimal, the attention
    matmuls' share for save_dots, all but p.v for save_qkv_attn."""
    total = float(sum(flops_by_part.values()))
    if total <= 0:
        return 0.0
    parts = remat_recomputed_parts(preset, qk_norm=qk_norm)
    return float(sum(flops_by_part.get(p, 0.0) for p in parts)) / total


# ----------------------------------------------------------------------------- record

@dataclasses.dataclass(frozen=True)
class Accounting:
    """FLOPs of one training step (global batch) and the devices' peak.

    model_flops: TRAIN_PASSES x forward (what MFU counts); hardware_flops: model_flops + the
    forward work remat re-runs (what HFU counts); peak_flops: per device (None = unknown).
    """
    model_flops: float
    hardware_flops: float
    num_devices: int
    peak_flops: float | None = None
    peak_source: str = ""

    @classmethod
    def for_training(cls, forward_flops: float, *, recompute_fraction: float = 0.0, num_devices: int,
                     peak_flops: float | None = None, peak_source: str = "") -> "Accounting":
        """From the forward FLOPs of a global batch and the remat recompute fraction."""
        return cls(model_flops=TRAIN_PASSES * forward_flops,
                   hardware_flops=(TRAIN_PASSES + recompute_fraction) * forward_flops,
                   num_devices=num_devices, peak_flops=peak_flops, peak_source=peak_source)

    def rates(self, steps_per_sec: float) -> dict[str, float]:
        """Per-device model TFLOP/s, and MFU / HFU when the peak is known."""
        per_device = steps_per_sec * self.model_flops / self.num_devices
        out = {"tflops_per_sec_per_device": per_device / 1e12}
        if self.peak_flops:
            out["mfu"] = per_device / self.peak_flops
            out["hfu"] = steps_per_sec * self.hardware_flops / self.num_devices / self.peak_flops
        return out

    def peak_line(self) -> str:
        if not self.peak_flops:
            return f"peak FLOP/s unknown ({self.peak_source}); no MFU"
        return f"peak {self.peak_flops / 1e12:.4g} TFLOP/s per device x {self.num_devices} ({self.peak_source})"
