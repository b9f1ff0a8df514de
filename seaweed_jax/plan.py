r"""Plan a training run: compile a config under candidate meshes and remat presets, ahead of time,
and print what fits and what it should cost, best first.

    python -m seaweed_jax.plan --config=configs/dit/seaweed_7b.py:stage1 --latent_shape=31,32,32 \
        --topology=v5p-128                   # TPU (needs libtpu: `make tpu-env`, .venv-tpu/bin/python)
    python -m seaweed_jax.plan --config=... --latent_shape=... --cpu_devices=64   # fake CPU devices

Each candidate is compiled by `trainer/aot.py` (abstract params and batch: nothing is allocated),
so the "GiB/device" column is the compiled program's `memory_analysis()` per device:
arguments + outputs not donated + temporaries; with `--xla_buffers` the "buffer GiB" column has
the same sum with the temp buffer of XLA's dumped buffer assignment instead. A candidate fits
when the "GiB/device" figure is below the chip's HBM (`--hbm_gib`, else the table below) minus
`--headroom` (runtime buffers, fragmentation).

On a TPU topology the compiler makes a check of its own: libtpu refuses a program whose
temporaries exceed the chip's HBM (RESOURCE_EXHAUSTED, "Ran out of memory on HBM"); such a
candidate is a "refused" row with the bytes the compiler asked for. The converse does not hold
for `memory_analysis()`: libtpu has compiled 7B programs whose reported peak is 1.17-1.47x XLA's
own buffer assignment and above the chip's HBM (README, planner section), so "fits: no" with
"compiler: accepted" means the reported figure exceeds HBM minus the headroom, not that the
program cannot run; "buffer GiB" (`--xla_buffers`) is the figure to compare then.

The MFU column is an estimate, not a measurement: the step time is modelled as the larger of
  compute  = hardware FLOPs (model FLOPs + what the preset recomputes, analytic) /
             (devices x peak x --efficiency)   (the fraction of peak matmul code reaches)
  comms    = the bytes the mesh moves per step / (devices x ICI bandwidth), FSDP all-gathers
             params twice (forward, backward) and reduce-scatters gradients; tensor parallelism
             adds 4 all-reduces of the activations per layer; context parallelism (Ulysses) 8
             all-to-alls, all in bfloat16,
assuming communication overlaps compute. MFU = model FLOPs / (step time x devices x peak), so
remat presets pay for recompute and meshes pay for traffic beyond what compute hides.

Chip memory and interconnect (per chip; public spec sheets):
    TPU v4   32 GiB HBM, ICI 6 x 50 GB/s          TPU v5e  16 GiB, 4 x 50 GB/s
    TPU v5p  95 GiB, 6 x 100 GB/s (4,800 Gbps)    TPU v6e  32 GiB, 4 x 100 GB/s
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys

import jax
from absl import flags
from ml_collections import config_flags

from seaweed_jax import cli, paths
from seaweed_jax.models.dit.dit import layer_attention_types
from seaweed_jax.parallel.mesh import use_cpu_devices
from seaweed_jax.parallel.remat import POLICY_NAMES
from seaweed_jax.trainer import accounting, aot

HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5e": 16, "TPU v5": 95, "TPU v5p": 95, "TPU v6 lite": 32,
           "TPU v6e": 32}
ICI_BYTES_PER_S = {"TPU v4": 300e9, "TPU v5 lite": 200e9, "TPU v5e": 200e9, "TPU v5": 600e9, "TPU v5p": 600e9,
                   "TPU v6 lite": 400e9, "TPU v6e": 400e9}

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config, e.g. configs/dit/seaweed_7b.py:stage1",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology or slice name (v5p:4x4x4, v5p-128); needs libtpu")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 0, "Without --topology: fake CPU devices to plan for")
_LATENT = flags.DEFINE_list("latent_shape", None, "Latent (T, H, W) of one example, e.g. 31,32,32")
_MESHES = flags.DEFINE_list(
    "meshes", ["fsdp", "fsdp*tensor=4", "fsdp*context=4"],
    "Candidate meshes: 'fsdp' (all devices) or 'fsdp*tensor=N', 'fsdp*context=N', 'data=N*fsdp' ...")
_PRESETS = flags.DEFINE_list("presets", ["minimal", "full", "offload_block_in"],
                             "Candidate remat presets; '+fence' also sets model.fence_unrolled_grads "
                             "(e.g. offload_block_in+fence)")
_HBM = flags.DEFINE_float("hbm_gib", None, "Device memory in GiB (default: the chip table; CPU: 24)")
_HEADROOM = flags.DEFINE_float("headroom", 0.1, "Fraction of memory kept free")
_EFFICIENCY = flags.DEFINE_float("efficiency", 0.6, "Fraction of the peak matmul rate compute reaches")
_XLA_BUFFERS = flags.DEFINE_bool("xla_buffers", False, "Also read each candidate's XLA buffer assignment "
                                 "(the 'buffer GiB' column: arguments + outputs not donated + XLA's temp buffer)")
_JSON = flags.DEFINE_string("json", None, "Also write every candidate's numbers to this JSON file")


PRESET_SUFFIXES = {"fence": ("model.fence_unrolled_grads", True)}


def parse_preset(text: str) -> dict:
    """'offload_block_in+fence' -> the config overrides of that candidate."""
    name, *suffixes = text.split("+")
    if name not in POLICY_NAMES:
        raise ValueError(f"--presets: {name!r} is not a remat preset; choose from {', '.join(POLICY_NAMES)}")
    overrides = {"model.remat": name}
    for suffix in suffixes:
        if suffix not in PRESET_SUFFIXES:
            raise ValueError(f"--presets={text}: unknown suffix '+{suffix}'; known: "
                             f"{', '.join('+' + k for k in PRESET_SUFFIXES)}")
        path, value = PRESET_SUFFIXES[suffix]
        overrides[path] = value
    return overrides


def parse_mesh(text: str, devices: int) -> dict:
    """'fsdp*tensor=4' -> {'data': 1, 'fsdp': devices / 4, 'tensor': 4, 'context': 1}."""
    shape = {"data": 1, "fsdp": 1, "tensor": 1, "context": 1}
    free = None
    for part in text.split("*"):
        name, _, size = part.partition("=")
        if name not in shape:
            raise ValueError(f"--meshes: {text!r} names {name!r}; use data, fsdp, tensor, context")
        if size:
            shape[name] = int(size)
        else:
            free = name
    rest = devices // math.prod(shape.values())
    if free is None or rest < 1 or devices % math.prod(shape.values()):
        raise ValueError(f"--meshes: {text!r} does not fill {devices} devices (leave one axis without =N)")
    shape[free] = rest
    return shape


@dataclasses.dataclass
class Candidate:
    mesh: dict
    preset: str
    report: aot.Report | None
    error: str | None = None
    fits: bool = False
    mfu: float | None = None
    bound: str = ""
    refused_bytes: float | None = None   # what the compiler said the temporaries need, when it refused

    @property
    def compiler(self) -> str:
        """'accepted' / 'refused' on a TPU (libtpu checks temporaries against HBM), else '-'."""
        if self.refused_bytes is not None:
            return "refused"
        if self.report is not None and self.report.device_kind.startswith("TPU"):
            return "accepted"
        return "-"


# Two spellings of libtpu's refusal: "...the total memory required for HLO temporaries (194.00G)
# exceeds available HBM (95.74G)" (libtpu with jax 0.10) and "Ran out of memory in memory space
# hbm. Used 21.95G of 15.48G hbm." (older libtpu).
_HBM_REFUSAL = (re.compile(r"memory required for HLO temporaries \(([\d.]+)([KMGT]?)B?\)", re.IGNORECASE),
                re.compile(r"memory space hbm\. Used ([\d.]+)([KMGT]?)B? of", re.IGNORECASE))


def refused_bytes(error: str) -> float | None:
    """The temporaries' bytes from libtpu's out-of-HBM compile error ("Ran out of memory on
    HBM, the total memory required for HLO temporaries (194.00G) exceeds available HBM
    (95.74G)"); None for any other error."""
    m = next((m for m in (p.search(error) for p in _HBM_REFUSAL) if m), None)
    if not m:
        return None
    return float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " ")


def comm_bytes_per_device(config, report: aot.Report) -> float:
    """Bytes one device sends per step (bf16), by the rules in the module docstring."""
    mesh, m = report.mesh, config.model
    params = report.params
    fsdp = mesh["fsdp"] * mesh["data"]
    total = 3 * 2 * params * (fsdp - 1) / fsdp / (mesh["tensor"] * mesh["context"])  # gathers + reduce-scatter
    tokens = math.prod(s // p for s, p in zip(report.latent_shape, m.patch_size))
    per_device_tokens = report.global_batch * tokens / max(fsdp, 1) / mesh["context"]
    layers = len(layer_attention_types(m.attention, m.num_layers))
    act = per_device_tokens * m.hidden_size * 2
    if mesh["tensor"] > 1:
        total += 4 * 2 * layers * act * (mesh["tensor"] - 1) / mesh["tensor"]
    if mesh["context"] > 1:
        total += 8 * layers * act * (mesh["context"] - 1) / mesh["context"]
    return total


def score(candidate: Candidate, config, hbm_bytes: float, headroom: float, peak: float | None,
          ici: float | None, efficiency: float) -> None:
    r = candidate.report
    candidate.fits = r.device_bytes <= hbm_bytes * (1 - headroom)
    if not (peak and r.model_flops):
        return
    compute = (r.hardware_flops or r.model_flops) / (r.devices * peak * efficiency)
    comms = comm_bytes_per_device(config, r) / ici if ici else 0.0
    step = max(compute, comms)
    candidate.bound = "compute" if compute >= comms else "comms"
    candidate.mfu = r.model_flops / (step * r.devices * peak)


def table(candidates: list[Candidate], hbm_gib: float) -> list[str]:
    rows = [f"{'mesh (data,fsdp,tensor,context)':<32} {'remat':<24} {'GiB/device':>10} {'buffer GiB':>10} "
            f"{'host GiB':>8} {'fits ' + format(hbm_gib, 'g') + ' GiB':>12} {'compiler':>8} {'MFU est.':>8}  bound"]
    for c in candidates:
        mesh = ",".join(str(c.mesh[k]) for k in ("data", "fsdp", "tensor", "context"))
        if c.refused_bytes is not None:
            rows.append(f"{mesh:<32} {c.preset:<24} {'-':>10} {'-':>10} {'-':>8} {'no':>12} {'refused':>8}  "
                        f"temporaries need {c.refused_bytes / 2**30:.2f} GiB")
            continue
        if c.report is None:
            rows.append(f"{mesh:<32} {c.preset:<24} {'error: ' + (c.error or '')[:80]}")
            continue
        mfu = f"{c.mfu:.1%}" if c.mfu is not None else "-"
        xla = c.report.xla_bytes("temp")
        xla = f"{xla / 2**30:.2f}" if xla is not None else "-"
        rows.append(f"{mesh:<32} {c.preset:<24} {c.report.device_bytes / 2**30:>10.2f} {xla:>10} "
                    f"{c.report.host_bytes / 2**30:>8.2f} {'yes' if c.fits else 'no':>12} {c.compiler:>8} "
                    f"{mfu:>8}  {c.bound}")
    return rows


def order(candidates: list[Candidate]) -> list[Candidate]:
    """Best first: fitting ones by estimated MFU (then less memory), then the other compiled
    ones by memory, then those the compiler refused (by what they need), then errors."""
    def key(c):
        if c.refused_bytes is not None:
            return (2, 0.0, c.refused_bytes)
        if c.report is None:
            return (3, 0.0, 0.0)
        return (0 if c.fits else 1, -(c.mfu or 0.0), c.report.device_bytes)
    return sorted(candidates, key=key)


def main(argv) -> None:
    cli.no_arguments(argv)
    cli.require(_CONFIG.value, "config", "a config file, e.g. --config=configs/dit/seaweed_7b.py:stage1")
    if not _LATENT.value or len(_LATENT.value) != 3:
        raise cli.UserError("--latent_shape=T,H,W is required (the latent of one example)")
    latent = tuple(int(v) for v in _LATENT.value)
    config = _CONFIG.value
    try:
        if _TOPOLOGY.value:
            devices = aot.tpu_devices(_TOPOLOGY.value)
        else:
            use_cpu_devices(_CPU_DEVICES.value)
            devices = jax.devices()
        kind = devices[0].device_kind
        hbm_gib = _HBM.value or HBM_GIB.get(kind, 24.0)
        peak = accounting.table_peak(kind)
        peak = peak[0] if peak else accounting.peak_flops(devices[0])[0]
        meshes = [parse_mesh(m, len(devices)) for m in _MESHES.value]
        presets = {p: parse_preset(p) for p in _PRESETS.value}
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    print(f"planning {config.get('stage', '') or ''} on {len(devices)} x {kind} ({hbm_gib:g} GiB, peak "
          f"{peak / 1e9:.4g} GFLOP/s per device, efficiency {_EFFICIENCY.value:g}); latent {latent}, "
          f"global batch {config.data.global_batch_size}", flush=True)
    candidates = []
    for mesh in meshes:
        for preset, overrides in presets.items():
            try:
                report = aot.compile_train_step(config, devices=devices, latent_shape=latent, mesh_shape=mesh,
                                                overrides=overrides, read_xla_buffers=_XLA_BUFFERS.value)
                c = Candidate(mesh, preset, report)
                score(c, config, hbm_gib * 2**30, _HEADROOM.value, peak, ICI_BYTES_PER_S.get(kind), _EFFICIENCY.value)
            except Exception as e:  # noqa: BLE001 - a candidate the compiler refuses is a row, not the end
                c = Candidate(mesh, preset, None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                              refused_bytes=refused_bytes(str(e)))
            candidates.append(c)
            done = (f"{c.report.device_bytes / 2**30:.2f} GiB/device, {c.report.compile_s:.0f} s" if c.report
                    else f"refused by the compiler, needs {c.refused_bytes / 2**30:.2f} GiB" if c.refused_bytes
                    else c.error)
            print(f"  {mesh} {preset}: {done}", file=sys.stderr, flush=True)
    ranked = order(candidates)
    print("\n".join(table(ranked, hbm_gib)))
    if ranked and ranked[0].report is not None and ranked[0].fits:
        best = ranked[0]
        print(f"best: --config.mesh.shape.fsdp={best.mesh['fsdp']} (data {best.mesh['data']}, tensor "
              f"{best.mesh['tensor']}, context {best.mesh['context']}) "
              + " ".join(f"--config.{k}={v}" for k, v in presets[best.preset].items()))
    else:
        print("nothing fits: add devices, lower data.global_batch_size, or try --presets=full,offload_block_in")
    if _JSON.value:
        paths.write_json(_JSON.value, {"devices": len(devices), "device_kind": kind, "hbm_gib": hbm_gib,
                                       "latent_shape": latent, "candidates": [
                                           {"mesh": c.mesh, "preset": c.preset, "fits": c.fits, "mfu_estimate": c.mfu,
                                            "bound": c.bound, "error": c.error, "compiler": c.compiler,
                                            "refused_bytes": c.refused_bytes,
                                            "report": c.report.to_json() if c.report else None} for c in ranked]})


if __name__ == "__main__":
    cli.run(main)
